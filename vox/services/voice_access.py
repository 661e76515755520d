"""Keeps voice participants' rights current while they are in a room.

Permissions are checked at ``voice_join``, but they can change during a call: a role loses
VOICE_SPEAK, an override hides the channel, a member is kicked, a DM call ends or its
participant leaves it from another device. The watch subscribes to the topics on which those
changes are announced (``guild:{id}`` of every guild with an active room, ``user:{id}`` of every
participant) and, when one of the events below arrives, asks the service to check the
affected participants again. It reads the broker, so a change made through any daemon reaches
the daemon holding the room.

The watch only says *who* to check; what a check does (drop the peer, stop forwarding,
stop a screen share) is the service's rule (``VoiceService.recheck``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import trio

from vox.errors import BrokerError, SubscriberLagged
from vox.protocol.gateway import open_envelope
from vox.protocol.guild_events import GUILD_ACCESS, GUILD_DELETED, GUILD_LEFT
from vox.pubsub import Broker, Subscription
from vox.services.guild_events import guild_topic, user_topic

__all__ = ["TRIGGERS", "VoiceAccessWatch"]

log = logging.getLogger("vox.voice")

# Events after which a participant's right to be in, speak in or share in a room may differ.
TRIGGERS = frozenset(
    {
        GUILD_ACCESS,  # overrides, channel moves and deletions, a member's roles
        GUILD_LEFT,  # kick, ban, leave
        GUILD_DELETED,
        "role_update",
        "role_delete",
        "member_update",  # timeouts
        "call_user_left",
        "call_ended",
    }
)
# Changes tend to come in bursts (a role edit is a role_update and a _guild_access): one check
# per participant per burst.
SETTLE_S = 0.05
RETRY_AFTER_FAILURE_S = 1.0


class VoiceAccessWatch:
    def __init__(
        self,
        broker: Broker,
        members_of: Callable[[str], Iterable[str]],
        everyone: Callable[[], Iterable[str]],
        check: Callable[[str], Awaitable[None]],
    ) -> None:
        """``members_of(guild_id)``: users in that guild's rooms; ``everyone()``: all
        participants; ``check(user_id)``: the service's re-check of one participant."""
        self.broker = broker
        self._members_of = members_of
        self._everyone = everyone
        self._check = check
        self._refs: Counter[str] = Counter()
        self._sub: Subscription | None = None
        self._dirty: set[str] = set()
        self._wake = trio.Event()

    async def track(self, user_id: str, guild_id: str | None) -> None:
        """Watch a participant who just joined; they are checked once more after the
        subscription is in place, so a change made while they were joining is not missed."""
        await self._add([user_topic(user_id), *([guild_topic(guild_id)] if guild_id else [])])
        self.mark([user_id])

    async def untrack(self, user_id: str, guild_id: str | None) -> None:
        await self._remove([user_topic(user_id), *([guild_topic(guild_id)] if guild_id else [])])

    def mark(self, users: Iterable[str]) -> None:
        self._dirty.update(users)
        if self._dirty:
            self._wake.set()

    async def _add(self, topics: list[str]) -> None:
        new = [t for t in topics if self._refs[t] == 0]
        self._refs.update(topics)
        if new and self._sub is not None:
            await self._sub.add(*new)

    async def _remove(self, topics: list[str]) -> None:
        self._refs.subtract(topics)
        gone = [t for t in topics if self._refs[t] <= 0]
        for t in gone:
            del self._refs[t]
        if gone and self._sub is not None:
            await self._sub.remove(*gone)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._check_loop)
            started = False
            while True:
                try:
                    async with self.broker.subscribe(list(self._refs)) as sub:
                        self._sub = sub
                        if not started:
                            task_status.started()
                            started = True
                        async for message in sub:
                            self._on_message(message.topic, message.payload)
                except (SubscriberLagged, BrokerError) as exc:
                    # Whatever was missed may have changed anyone's rights: check everyone.
                    log.warning("voice access watch restarted", extra={"fields": {"error": repr(exc)}})
                    self._sub = None
                    self.mark(self._everyone())
                    await trio.sleep(RETRY_AFTER_FAILURE_S)

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            event_type = open_envelope(payload).type
        except ValueError:
            return
        if event_type not in TRIGGERS:
            return
        kind, _, ident = topic.partition(":")
        if kind == "user":
            self.mark([ident])
        elif kind == "guild":
            self.mark(self._members_of(ident))

    async def _check_loop(self) -> None:
        while True:
            await self._wake.wait()
            await trio.sleep(SETTLE_S)
            self._wake = trio.Event()
            users, self._dirty = self._dirty, set()
            for user_id in users:
                await self._check(user_id)
