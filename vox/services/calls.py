"""DM calls (protocol.md section 8): start, join, decline, leave and read a DM's call.

The call is an event log (vox.protocol.calls: Started, Joined, Left, Declined, Ended) kept as an
Ephemeral stream at ``call:{channel_id}``: in process on a single daemon, a Redis Stream when
daemons share Redis. Every operation reads the log, folds it into the state, decides which event
the request means, and appends it with ``Ephemeral.append(after=<the last id it read>)``. That
append is a compare-and-append: when another request (on any daemon) appended in between, it
writes nothing and the operation reads and decides again. So decisions are serialised per call
without a lock that a crashed daemon could leave behind, and exactly one of two racing requests
wins each transition (two starts: one 201, one 409; a timeout seen by two daemons: one
``call_ended``). Only the winner of an append publishes what it announces.

One stream per channel holds its calls one after another: a new call is a ``Started`` appended
after the previous call's end, and the fold begins afresh at it. (Deleting the stream or moving a
pointer to a new stream would need a second atomic step; appending to the same stream needs none.)
The stream is trimmed to about ``STREAM_MAX_LEN`` entries (never fewer), more than one call can
hold (see ``MAX_CALL_EVENTS``), so the current call's ``Started`` is never trimmed away.

Ring timeout: the ``Started`` event carries its deadline. Every operation, on any daemon, first
ends a call still ringing past it (reason "timeout"), so the state is right whoever asks; and the
daemon that started a call keeps a timer (``run_timers``, a task of the root nursery) that does
the same at the deadline, so ``call_ended`` is pushed on time without any request.

Events go to the recipients' ``user:{id}`` topics (vox.protocol.calls.notices).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import trio

from vox.ephemeral import Ephemeral
from vox.errors import Conflict, NotFound, VoxError
from vox.protocol import calls as proto
from vox.protocol.calls import CallEvent, CallState, Ended
from vox.pubsub import Broker
from vox.services.guild_events import user_topic
from vox.services.permissions import valid_id
from vox.services.publish import publish_event
from vox.storage.dms import Dms

__all__ = ["MAX_CALL_EVENTS", "CallService"]

log = logging.getLogger("vox.calls")

STREAM_MAX_LEN = 1024
# A join once a call holds this many events is refused (409). Leaves never are; a call's events are
# then at most about 2 x this (each leave follows a join) + 12, so its Started is never trimmed.
MAX_CALL_EVENTS = 400
# A live call's log outlives any real call; each append renews it. An ended one is kept a day
# so that GET .../call still answers "ended".
LIVE_TTL_S = 7 * 86_400.0
ENDED_TTL_S = 86_400.0
# Rounds of read-decide-append before giving up under contention (each loser re-reads at once).
MAX_ATTEMPTS = 16

Decide = Callable[[CallState | None, int], CallEvent | None]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _key(channel_id: str) -> str:
    return f"call:{channel_id}"


class CallService:
    def __init__(
        self,
        dms: Dms,
        ephemeral: Ephemeral,
        broker: Broker,
        *,
        ring_timeout_s: float = 90.0,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.dms = dms
        self.ephemeral = ephemeral
        self.broker = broker
        self.ring_timeout_ms = max(1, round(ring_timeout_s * 1000))
        self.clock = clock
        # Ringing deadlines (Unix ms) of calls started on this daemon, by channel: run_timers ends
        # each call still ringing at its deadline.
        self._deadlines: dict[str, int] = {}
        self._wake = trio.Event()

    # -- requests ----------------------------------------------------------------------------

    async def start(self, user_id: str, channel_id: str) -> dict[str, Any]:
        recipients = await self._recipients(user_id, channel_id)

        def decide(state: CallState | None, now: int) -> CallEvent:
            return proto.decide_start(state, user_id, recipients, now, self.ring_timeout_ms)

        return _object(channel_id, await self._run(channel_id, recipients, decide))

    async def join(self, user_id: str, channel_id: str) -> dict[str, Any]:
        recipients = await self._recipients(user_id, channel_id)
        state = await self._run(channel_id, recipients, lambda s, now: proto.decide_join(s, user_id, now))
        return _object(channel_id, state)

    async def decline(self, user_id: str, channel_id: str) -> dict[str, Any]:
        recipients = await self._recipients(user_id, channel_id)
        state = await self._run(channel_id, recipients, lambda s, now: proto.decide_decline(s, user_id, now))
        return _object(channel_id, state)

    async def leave(self, user_id: str, channel_id: str) -> dict[str, Any]:
        recipients = await self._recipients(user_id, channel_id)
        state = await self._run(channel_id, recipients, lambda s, now: proto.decide_leave(s, user_id, now))
        return _object(channel_id, state)

    async def get(self, user_id: str, channel_id: str) -> dict[str, Any]:
        """The channel's latest call; 404 when none was ever started (or it expired)."""
        recipients = await self._recipients(user_id, channel_id)
        state = await self._run(channel_id, recipients, _read_only)
        return _object(channel_id, state)

    async def is_participant(self, channel_id: str, user_id: str) -> bool:
        """True while ``user_id`` is in the channel's call: it is ringing or active and they
        joined it (the caller is in it from the start, so they can connect media while it rings).
        For the voice SFU, which lets call participants ``voice_join`` the DM channel."""
        if not valid_id(channel_id):
            return False
        state = await self._state(channel_id)
        return state is not None and not proto.due(state, self.clock()) and user_id in state.participants

    async def expire(self, channel_id: str) -> None:
        """End the channel's call if it is ringing past its deadline (announcing call_ended)."""
        recipients = await self.dms.recipient_ids(channel_id)
        if recipients:
            await self._run(channel_id, recipients, _read_only)

    # -- the ring timer ------------------------------------------------------------------------

    async def run_timers(
        self, draining: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """End calls started on this daemon when their ringing deadline passes; returns once
        ``draining`` is set (a task of the root nursery)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer_loop)
            task_status.started()
            await draining.wait()
            nursery.cancel_scope.cancel()

    async def _timer_loop(self) -> None:
        while True:
            self._wake = trio.Event()
            now = self.clock()
            for channel_id in [c for c, deadline in self._deadlines.items() if deadline <= now]:
                # Requests run while expire() awaits: one may have answered the call (and dropped
                # its deadline) or started the next one (a later deadline) in the meantime.
                if self._deadlines.get(channel_id, math.inf) > now:
                    continue
                del self._deadlines[channel_id]
                try:
                    await self.expire(channel_id)
                except VoxError as exc:  # storage, Redis, or a call too busy to end now
                    # Whoever touches the call next ends it (every operation checks the deadline).
                    log.warning(
                        "ring timeout not applied",
                        extra={"fields": {"channel_id": channel_id, "error": str(exc)}},
                    )
            if self._deadlines:
                wait_s = max(0.0, (min(self._deadlines.values()) - self.clock()) / 1000)
            else:
                wait_s = math.inf
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    def _arm(self, channel_id: str, deadline_ms: int) -> None:
        self._deadlines[channel_id] = deadline_ms
        self._wake.set()

    # -- the log -------------------------------------------------------------------------------

    async def _recipients(self, user_id: str, channel_id: str) -> list[str]:
        """The DM's recipients; 404 unless the channel is a DM and ``user_id`` one of them."""
        recipients = await self.dms.recipient_ids(channel_id) if valid_id(channel_id) else []
        if user_id not in recipients:
            raise NotFound("channel not found")
        return recipients

    async def _state(self, channel_id: str) -> CallState | None:
        entries = await self.ephemeral.read(_key(channel_id))
        return proto.fold(proto.decode_event(e.data) for e in entries)

    async def _run(self, channel_id: str, recipients: list[str], decide: Decide) -> CallState | None:
        """Read, fold, apply a due timeout, decide, compare-and-append; again when outrun."""
        key = _key(channel_id)
        for _ in range(MAX_ATTEMPTS):
            entries = await self.ephemeral.read(key)
            last = entries[-1].id if entries else ""
            state = proto.fold(proto.decode_event(e.data) for e in entries)
            now = self.clock()
            event = Ended(proto.TIMEOUT, now) if proto.due(state, now) else decide(state, now)
            if event is None:
                return state
            if isinstance(event, proto.Joined) and state is not None and state.events >= MAX_CALL_EVENTS:
                raise Conflict("this call has changed too often; end it and start another")
            after = proto.apply(state, event)
            assert after is not None  # every event applied to a state, and Started to none
            ttl = LIVE_TTL_S if after.live else ENDED_TTL_S
            if (
                await self.ephemeral.append(
                    key, proto.encode_event(event), ttl, after=last, max_len=STREAM_MAX_LEN
                )
                is None
            ):
                continue  # another request got there first: judge again on what it wrote
            await self._announce(channel_id, recipients, state, event, after)
            if isinstance(event, proto.Started):
                self._arm(channel_id, event.ring_until)
            elif after.phase != "ringing":
                self._deadlines.pop(channel_id, None)
            if isinstance(event, Ended) and event.reason == proto.TIMEOUT and decide is not _read_only:
                continue  # the timeout is applied; now judge the request itself
            return after
        raise Conflict("the call is changing too fast; try again")

    async def _announce(
        self,
        channel_id: str,
        recipients: list[str],
        before: CallState | None,
        event: CallEvent,
        after: CallState,
    ) -> None:
        for notice in proto.notices(channel_id, before, event, after):
            audience = after.targets if notice.audience == "targets" else recipients
            await publish_event(self.broker, [user_topic(u) for u in audience], notice.type, notice.d)


def _read_only(state: CallState | None, now: int) -> None:
    return None


def _object(channel_id: str, state: CallState | None) -> dict[str, Any]:
    if state is None:
        raise NotFound("no call in this channel")
    return proto.call_object(channel_id, state)
