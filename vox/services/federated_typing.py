"""Typing in federated DMs (docs/federation.md, "Typing").

Typing is worth something only now, so it never goes through the durable outbox (it would queue
behind an outage and arrive meaningless): a local user's typing start in a DM with a user of
another server is sent as one signed ``POST /api/v1/federation/typing`` at most every
``RELAY_EVERY_S`` per user and DM, from a background task, and dropped when it fails. The
receiver publishes ``typing_start`` on the DM's channel for the remote user and, like local
typing, ``typing_stop`` when no refresh came within ``TYPING_TTL_S``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Annotated, Any

import msgspec
import trio

from vox.errors import APIError, NotFound, ValidationError
from vox.pubsub import Broker
from vox.services.federated_dms import FederatedDms
from vox.services.guild_events import channel_topic
from vox.services.publish import publish_event
from vox.storage.federated_updates import FederatedUpdates

__all__ = ["TYPING_PATH", "FederatedTyping"]

log = logging.getLogger("vox.federation.typing")

TYPING_PATH = "/api/v1/federation/typing"
# A client refreshes typing every few seconds; one relay per DM in this window is enough.
RELAY_EVERY_S = 5.0
# As for local typing (vox.nurseries.session): a start not refreshed within this stops.
TYPING_TTL_S = 10.0
# Typing notices waiting for the sender task; more are dropped (best effort).
QUEUE = 256
TICK_S = 1.0

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class TypingRelay(msgspec.Struct):
    sender: Name
    recipient: Name


class FederatedTyping:
    def __init__(self, dms: FederatedDms, updates: FederatedUpdates, broker: Broker) -> None:
        self.dms = dms
        self.updates = updates
        self.broker = broker
        self._outgoing, self._pending = trio.open_memory_channel[tuple[str, str]](QUEUE)
        # (user id, channel id) -> when its last typing start was passed on.
        self._sent_at: dict[tuple[str, str], float] = {}
        # (channel id, remote user id) -> when their typing stops unless refreshed.
        self._until: dict[tuple[str, str], float] = {}

    # -- outbound ---------------------------------------------------------------------------
    def started(self, user_id: str, channel_id: str) -> None:
        """A local user started typing in a DM: pass it on soon, never waiting for a peer."""
        now = trio.current_time()
        key = (user_id, channel_id)
        if now - self._sent_at.get(key, -math.inf) < RELAY_EVERY_S:
            return
        self._sent_at[key] = now
        # Best effort: a burst beyond the queue is not worth remembering.
        with contextlib.suppress(trio.WouldBlock):
            self._outgoing.send_nowait(key)

    async def run(
        self, draining: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sends typing notices and stops remote typing that was not refreshed; returns when draining."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on, draining, nursery.cancel_scope)
            nursery.start_soon(self._expire)
            task_status.started()
            async for user_id, channel_id in self._pending:
                nursery.start_soon(self._send, user_id, channel_id)

    @staticmethod
    async def _stop_on(draining: trio.Event, scope: trio.CancelScope) -> None:
        await draining.wait()
        scope.cancel()

    async def _send(self, user_id: str, channel_id: str) -> None:
        try:
            recipients = await self.dms.users.channel_recipients(channel_id)
            if len(recipients) != 2:
                return
            me = next((r for r in recipients if r["id"] == user_id), None)
            other = next((r for r in recipients if r["id"] != user_id), None)
            if me is None or other is None or me["home_domain"] is not None or other["home_domain"] is None:
                return
            body = {"sender": me["username"], "recipient": str(other["username"]).rpartition("@")[0]}
            federation = self.dms.federation
            with trio.move_on_after(federation.timeout_s + 2.0):
                await federation.request(str(other["home_domain"]), "POST", TYPING_PATH, body)
        except APIError as exc:
            log.info("typing not relayed", extra={"fields": {"code": exc.code}})
        except Exception:
            log.exception("typing not relayed")

    async def _expire(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            now = trio.current_time()
            for key in [k for k, at in self._sent_at.items() if now - at >= RELAY_EVERY_S]:
                del self._sent_at[key]
            for (channel_id, user_id), until in list(self._until.items()):
                if until <= now:
                    del self._until[(channel_id, user_id)]
                    await self._publish("typing_stop", channel_id, user_id)

    # -- inbound ----------------------------------------------------------------------------
    async def receive(self, origin: str, body: Any) -> dict[str, Any]:
        """A peer says one of its users is typing in their DM with one of ours."""
        try:
            relay = msgspec.convert(body, type=TypingRelay)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"bad typing notice: {exc}") from None
        sender = await self.dms.users.by_address(f"{relay.sender}@{origin}")
        recipient = await self.dms.users.local_user(relay.recipient)
        channel_id = None
        if (
            sender is not None
            and recipient is not None
            and not sender["disabled"]
            and not recipient["disabled"]
        ):
            channel_id = await self.updates.one_to_one(str(sender["id"]), str(recipient["id"]))
        if sender is None or channel_id is None:
            raise NotFound("no DM between these users")
        self._until[(channel_id, str(sender["id"]))] = trio.current_time() + TYPING_TTL_S
        await self._publish("typing_start", channel_id, str(sender["id"]))
        return {"ok": True}

    async def _publish(self, type_: str, channel_id: str, user_id: str) -> None:
        await publish_event(
            self.broker, [channel_topic(channel_id)], type_, {"channel_id": channel_id, "user_id": user_id}
        )
