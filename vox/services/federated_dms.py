"""Federated DMs and presence (docs/federation.md, "Federated DMs, guests and presence").

Outbound, through the durable outbox (kinds ``dm_message`` and ``presence``): a message a local
user posts in a DM with a user of another server, and the presence of local users who share a
DM with users of other servers. Inbound, each kind is rebuilt as local state: the sender becomes
(or stays) a remote identity named ``name@origin``, where ``origin`` is the authenticated peer;
a relayed message gets our own id and timestamp, keeps the sender's id only as ``remote_id``
(a redelivery is dropped on it), is tagged with its ``origin`` and reaches the recipient's
gateway like any DM message. Ciphertext (``encrypted: true``) passes through untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from vox.ephemeral import Ephemeral
from vox.errors import APIError, Forbidden, ValidationError
from vox.pubsub import Broker
from vox.services.dms import DmService
from vox.services.federation import Federation
from vox.services.guild_events import user_topic
from vox.services.ids import uuid7
from vox.services.messages import MAX_NONCE, MessageService, render
from vox.services.presence import STATUSES, validate_activity
from vox.services.publish import publish_event
from vox.services.remote_users import ProfileBody, RemoteDirectory
from vox.storage.messages import Messages, NewMessage
from vox.storage.remote_users import RemoteUsers

__all__ = ["DM_KIND", "PRESENCE_KIND", "FederatedDms"]

log = logging.getLogger("vox.federation.dms")

DM_KIND = "dm_message"
PRESENCE_KIND = "presence"
PRESENCE_EVENTS = ("presence_update", "rich_presence_update")
# A remote contact's last known presence; refreshed by every update their server sends.
REMOTE_PRESENCE_TTL_S = 24 * 3600.0

Short = Annotated[str, msgspec.Meta(max_length=64)]


def _now_ms() -> int:
    return int(time.time() * 1000)


class RelayedMessage(msgspec.Struct):
    id: Short
    content: Annotated[str, msgspec.Meta(max_length=20_000)]
    encrypted: bool = False
    nonce: str | None = None


class DmRelay(msgspec.Struct):
    sender: ProfileBody
    recipient: Short
    message: RelayedMessage


class PresenceRelay(msgspec.Struct):
    user: ProfileBody
    event: str
    status: str | None = None
    activity: Any = None


def _name(address: str) -> str:
    return address.rpartition("@")[0]


def _sender_block(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "display_name": row["display_name"],
        "avatar": row["avatar"],
    }


class FederatedDms:
    def __init__(
        self,
        federation: Federation,
        directory: RemoteDirectory,
        users: RemoteUsers,
        messages: Messages,
        dms: DmService,
        ephemeral: Ephemeral,
        broker: Broker,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.federation = federation
        self.directory = directory
        self.users = users
        self.messages = messages
        self.dms = dms
        self.ephemeral = ephemeral
        self.broker = broker
        self.clock = clock

    def register(self) -> None:
        self.federation.on(DM_KIND, self.receive_dm)
        self.federation.on(PRESENCE_KIND, self.receive_presence)

    # -- opening DMs ------------------------------------------------------------------------
    async def resolve(self, caller_id: str, recipients: list[str]) -> tuple[list[str], set[str]]:
        """Recipient ids for a DM some of whose recipients are written ``name@domain``.

        Only 1:1 DMs cross servers, and only this server's own users open them: a guest's
        home server is where they talk to users of other servers."""
        if not await self.directory.is_local(caller_id):
            raise Forbidden("guests cannot open DMs with users of other servers")
        if len(recipients) != 1:
            raise ValidationError(
                "a DM with a user of another server has exactly one other recipient",
                {"recipients": "one name@domain address"},
            )
        row = await self.directory.lookup(recipients[0])
        remote = {row["id"]} if row["home_domain"] is not None else set()
        return [row["id"]], remote

    # -- messages ---------------------------------------------------------------------------
    async def relay_message(self, message: dict[str, Any]) -> None:
        """Queue a new DM message for the home server of each remote recipient (none: no-op)."""
        recipients = await self.users.channel_recipients(message["channel_id"])
        # Only 1:1 DMs cross servers; a guest in a group DM here reads it here.
        if len(recipients) != 2 or not any(r["home_domain"] is not None for r in recipients):
            return
        author = next((r for r in recipients if r["id"] == message["author"]["id"]), None)
        # Only messages written here travel: a guest's words belong to their home server.
        if author is None or author["home_domain"] is not None:
            return
        for r in recipients:
            if r["home_domain"] is None:
                continue
            relay = {
                "sender": _sender_block(author),
                "recipient": _name(r["username"]),
                "message": {
                    "id": message["id"],
                    "content": message["content"],
                    "encrypted": message["encrypted"],
                    "nonce": message["nonce"],
                },
            }
            await self._enqueue(str(r["home_domain"]), DM_KIND, relay)

    async def _enqueue(self, domain: str, kind: str, payload: dict[str, Any]) -> None:
        """Queue one relay. The local action it follows has happened already (the message is
        stored, the presence announced here), so a refusal by our own policy (changed since the
        DM was opened) is logged instead of failing that action."""
        try:
            await self.federation.enqueue(domain, kind, payload)
        except APIError as exc:
            log.warning(
                "relay not queued", extra={"fields": {"peer": domain, "kind": kind, "code": exc.code}}
            )

    async def receive_dm(self, origin: str, payload: dict[str, Any]) -> None:
        """Rebuild a relayed DM message here. Bad relays are logged and dropped: a peer that
        retried them would only block its own queue."""
        try:
            relay = msgspec.convert(payload, type=DmRelay)
        except msgspec.ValidationError as exc:
            log.warning(
                "unreadable dm relay dropped", extra={"fields": {"origin": origin, "error": str(exc)}}
            )
            return
        recipient = await self.users.local_user(relay.recipient)
        if recipient is None or bool(recipient["disabled"]):
            log.warning("dm relay for an unknown user dropped", extra={"fields": {"origin": origin}})
            return
        sender = await self.directory.remember(origin, relay.sender)
        if sender is None or bool(sender["disabled"]):
            log.warning("dm relay from a refused sender dropped", extra={"fields": {"origin": origin}})
            return
        body = relay.message
        try:
            content = MessageService.check_content(body.content, encrypted=body.encrypted)
            if body.nonce is not None and len(body.nonce) > MAX_NONCE:
                raise ValidationError("nonce too long")
        except ValidationError as exc:
            log.warning(
                "invalid dm relay dropped", extra={"fields": {"origin": origin, "error": exc.message}}
            )
            return
        dm, _ = await self.dms.open(sender["id"], [recipient["id"]], no_contact_needed={recipient["id"]})
        now = self.clock()
        new = NewMessage(
            id=uuid7(now),
            channel_id=dm["id"],
            guild_id=None,
            user_id=sender["id"],
            content=content,
            encrypted=body.encrypted,
            nonce=body.nonce,
            reply_to=None,
            mention_type=None,
            mentions=(),
            created_at=now,
        )
        if not await self.users.insert_relayed(new, origin, body.id):
            return  # delivered before: the first copy stands
        row = await self.messages.get(new.id)
        assert row is not None
        topics = [user_topic(recipient["id"]), user_topic(sender["id"])]
        await publish_event(self.broker, topics, "message_new", render(row))

    # -- presence ---------------------------------------------------------------------------
    async def relay_presence(self, user_id: str, type_: str, d: dict[str, Any]) -> None:
        """Queue a local user's presence change for each server where they have DM contacts."""
        if type_ not in PRESENCE_EVENTS:
            return
        contacts = await self.users.remote_contacts(user_id)
        if not contacts:
            return
        me = await self.users.identity(user_id)
        if me is None or me["home_domain"] is not None:
            return
        relay = {
            "user": _sender_block(me),
            "event": type_,
            "status": d.get("status"),
            "activity": d.get("activity"),
        }
        for domain in sorted({str(c["home_domain"]) for c in contacts}):
            await self._enqueue(domain, PRESENCE_KIND, relay)

    async def receive_presence(self, origin: str, payload: dict[str, Any]) -> None:
        try:
            relay = msgspec.convert(payload, type=PresenceRelay)
            if relay.event not in PRESENCE_EVENTS:
                raise ValueError("unknown presence event")
            if relay.event == "presence_update" and relay.status not in STATUSES:
                raise ValueError("unknown status")
            activity = validate_activity(relay.activity)
        except (msgspec.ValidationError, ValueError) as exc:
            log.warning(
                "unreadable presence relay dropped", extra={"fields": {"origin": origin, "error": str(exc)}}
            )
            return
        # The peer sends it only to servers where the user has DM contacts; the relay may still
        # arrive before the DM's first message does, so the identity is remembered here too.
        row = await self.directory.remember(origin, relay.user)
        if row is None:
            log.warning("presence relay for a bad user name dropped", extra={"fields": {"origin": origin}})
            return
        known = await self.remote_presence(row["id"])
        status = relay.status if relay.event == "presence_update" else known["status"]
        state = {"status": status, "activity": None if status == "offline" else activity}
        await self.ephemeral.set(_presence_key(row["id"]), msgspec.json.encode(state), REMOTE_PRESENCE_TTL_S)
        d: dict[str, Any] = {"user_id": row["id"], **state}
        if relay.event == "rich_presence_update":
            d = {"user_id": row["id"], "activity": state["activity"]}
        contacts = await self.users.local_contacts(row["id"])
        await publish_event(self.broker, [user_topic(u) for u in contacts], relay.event, d)

    async def remote_presence(self, user_id: str) -> dict[str, Any]:
        """The last presence a remote contact's server reported (offline when none)."""
        raw = await self.ephemeral.get(_presence_key(user_id))
        state = {"status": "offline", "activity": None}
        if raw is not None:
            state.update(msgspec.json.decode(raw))
        return {"user_id": user_id, **state}


def _presence_key(user_id: str) -> str:
    return f"presence:remote:{user_id}"
