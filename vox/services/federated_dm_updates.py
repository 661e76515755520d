"""Edits, deletions and reactions in federated DMs, and the attachment rule (docs/federation.md,
"Edits, deletions and reactions").

Outbound, through the durable outbox, behind the ``dm_message`` relays of the same DM (the
outbox keeps one destination's order, so an edit never overtakes its message nor follows its
deletion): ``dm_edit`` and ``dm_delete`` when the author edits or deletes a message written
here, ``dm_reaction`` when a local user adds or removes a reaction on any message of the DM.

Messages are named across servers by ``{"origin": <server it was written on>, "id": <that
server's id>}``: each side can map it (its own id, or ``remote_origin``/``remote_id``). A peer
may only edit or delete messages it relayed, written by its own users, and only react as its
own users on messages of a DM they are in; anything else is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from vox.errors import APIError, ValidationError
from vox.pubsub import Broker
from vox.services.federated_dms import FederatedDms
from vox.services.guild_events import user_topic
from vox.services.messages import DmChange, MessageService, render, validate_emoji
from vox.services.publish import publish_event
from vox.services.remote_users import ProfileBody
from vox.storage.base import Row
from vox.storage.federated_updates import FederatedUpdates
from vox.storage.messages import Messages

__all__ = ["DELETE_KIND", "EDIT_KIND", "REACTION_KIND", "FederatedDmUpdates"]

log = logging.getLogger("vox.federation.dms")

EDIT_KIND = "dm_edit"
DELETE_KIND = "dm_delete"
REACTION_KIND = "dm_reaction"

Short = Annotated[str, msgspec.Meta(max_length=64)]


def _now_ms() -> int:
    return int(time.time() * 1000)


class EditRelay(msgspec.Struct):
    message_id: Short
    content: Annotated[str, msgspec.Meta(max_length=20_000)]
    edited_at: int | None = None


class DeleteRelay(msgspec.Struct):
    message_id: Short


class MessageRef(msgspec.Struct):
    origin: Annotated[str, msgspec.Meta(max_length=260)]
    id: Short


class ReactionRelay(msgspec.Struct):
    user: ProfileBody
    message: MessageRef
    emoji: Annotated[str, msgspec.Meta(max_length=64)]
    add: bool


class FederatedDmUpdates:
    def __init__(
        self,
        dms: FederatedDms,
        updates: FederatedUpdates,
        messages: Messages,
        broker: Broker,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.dms = dms
        self.updates = updates
        self.messages = messages
        self.broker = broker
        self.clock = clock

    @property
    def server_name(self) -> str:
        return self.dms.federation.server_name

    def register(self) -> None:
        federation = self.dms.federation
        federation.on(EDIT_KIND, self.receive_edit)
        federation.on(DELETE_KIND, self.receive_delete)
        federation.on(REACTION_KIND, self.receive_reaction)

    async def _remote_peers(self, channel_id: str, actor_id: str) -> list[str]:
        """Home servers of the other side of a 1:1 DM that crosses servers, when ``actor_id``
        is one of this server's users in it; empty otherwise (nothing to relay)."""
        recipients = await self.dms.users.channel_recipients(channel_id)
        if len(recipients) != 2:
            return []
        actor = next((r for r in recipients if r["id"] == actor_id), None)
        if actor is None or actor["home_domain"] is not None:
            return []
        return sorted({str(r["home_domain"]) for r in recipients if r["home_domain"] is not None})

    # -- outbound ---------------------------------------------------------------------------
    async def check_attachments(self, channel_id: str, author_id: str) -> None:
        """Files do not cross servers yet: refused where the message would be relayed, rather
        than stored here and silently missing on the other side."""
        if await self._remote_peers(channel_id, author_id):
            raise ValidationError(
                "attachments do not cross servers yet", {"file": "not in a DM with a user of another server"}
            )

    async def relay_change(self, change: DmChange) -> None:
        row = change.message
        peers = await self._remote_peers(str(row["channel_id"]), change.actor_id)
        if not peers:
            return
        if change.kind == "reaction":
            await self._relay_reaction(change, peers)
            return
        # Only the author's own changes to what was written here travel; a relayed message is
        # changed by its home server.
        if row["user_id"] != change.actor_id or row["remote_origin"] is not None:
            return
        if change.kind == "edit":
            kind = EDIT_KIND
            payload: dict[str, Any] = {
                "message_id": row["id"],
                "content": row["content"],
                "edited_at": row["edited_at"],
            }
        else:
            kind, payload = DELETE_KIND, {"message_id": row["id"]}
        for peer in peers:
            await self._enqueue(peer, kind, payload)

    async def _relay_reaction(self, change: DmChange, peers: list[str]) -> None:
        row = change.message
        ref = await self.updates.origin_of(str(row["id"]))
        if ref is None:
            return
        if ref["remote_origin"] is None:
            message = {"origin": self.server_name, "id": row["id"]}
        else:
            message = {"origin": ref["remote_origin"], "id": ref["remote_id"]}
        actor = await self.dms.users.identity(change.actor_id)
        if actor is None:
            return
        payload = {
            "user": {
                "id": actor["id"],
                "username": actor["username"],
                "display_name": actor["display_name"],
                "avatar": actor["avatar"],
            },
            "message": message,
            "emoji": change.emoji,
            "add": change.add,
        }
        for peer in peers:
            # A message written on a third server has no name the peer knows.
            if message["origin"] in (self.server_name, peer):
                await self._enqueue(peer, REACTION_KIND, payload)

    async def _enqueue(self, domain: str, kind: str, payload: dict[str, Any]) -> None:
        """The local change has happened already: a refusal by our own policy is logged."""
        try:
            await self.dms.federation.enqueue(domain, kind, payload)
        except APIError as exc:
            log.warning(
                "relay not queued", extra={"fields": {"peer": domain, "kind": kind, "code": exc.code}}
            )

    # -- inbound ----------------------------------------------------------------------------
    async def _relayed_by(self, origin: str, remote_id: str, what: str) -> Row | None:
        """The live message ``origin`` relayed as ``remote_id``, when one of its users wrote it."""
        local_id = await self.updates.relayed(origin, remote_id)
        row = None if local_id is None else await self.messages.get(local_id)
        if row is None or row["deleted_at"] is not None:
            log.warning(f"{what} for an unknown message dropped", extra={"fields": {"origin": origin}})
            return None
        author = await self.dms.users.identity(str(row["user_id"]))
        if author is None or author["home_domain"] != origin or bool(author["disabled"]):
            log.warning(
                f"{what} of a message not written on the peer dropped", extra={"fields": {"origin": origin}}
            )
            return None
        return row

    async def _publish(self, channel_id: str, type_: str, d: dict[str, Any]) -> None:
        recipients = await self.dms.users.channel_recipients(channel_id)
        topics = [user_topic(str(r["id"])) for r in recipients if r["home_domain"] is None]
        await publish_event(self.broker, topics, type_, d)

    async def receive_edit(self, origin: str, payload: dict[str, Any]) -> None:
        try:
            relay = msgspec.convert(payload, type=EditRelay)
        except msgspec.ValidationError as exc:
            log.warning("unreadable dm edit dropped", extra={"fields": {"origin": origin, "error": str(exc)}})
            return
        row = await self._relayed_by(origin, relay.message_id, "dm edit")
        if row is None:
            return
        encrypted = bool(row["encrypted"])
        try:
            content = MessageService.check_content(relay.content, encrypted=encrypted)
        except ValidationError as exc:
            log.warning("invalid dm edit dropped", extra={"fields": {"origin": origin, "error": exc.message}})
            return
        # Our own timestamp, as for the message itself; the sender's edited_at is informative.
        updated = await self.messages.edit(
            str(row["id"]), str(row["user_id"]), content, None, (), self.clock()
        )
        if updated is None:
            return
        files, reactions = await self.messages.extras([str(updated["id"])], str(updated["user_id"]))
        message = render(updated, files.get(updated["id"]), reactions.get(updated["id"]))
        await self._publish(str(row["channel_id"]), "message_edit", message)

    async def receive_delete(self, origin: str, payload: dict[str, Any]) -> None:
        try:
            relay = msgspec.convert(payload, type=DeleteRelay)
        except msgspec.ValidationError as exc:
            log.warning(
                "unreadable dm delete dropped", extra={"fields": {"origin": origin, "error": str(exc)}}
            )
            return
        row = await self._relayed_by(origin, relay.message_id, "dm delete")
        if row is None:
            return
        # Relayed messages have no attachments, so there are no blobs to remove.
        await self.messages.soft_delete(str(row["id"]), self.clock())
        await self._publish(
            str(row["channel_id"]),
            "message_delete",
            {"id": row["id"], "channel_id": row["channel_id"], "guild_id": None},
        )

    async def receive_reaction(self, origin: str, payload: dict[str, Any]) -> None:
        try:
            relay = msgspec.convert(payload, type=ReactionRelay)
            emoji = validate_emoji(relay.emoji)
            if emoji.startswith(":"):
                raise ValidationError("custom emoji do not exist in DMs")
        except (msgspec.ValidationError, ValidationError) as exc:
            log.warning(
                "unreadable dm reaction dropped", extra={"fields": {"origin": origin, "error": str(exc)}}
            )
            return
        user = await self.dms.directory.remember(origin, relay.user)
        if user is None or bool(user["disabled"]):
            log.warning("dm reaction from a refused user dropped", extra={"fields": {"origin": origin}})
            return
        ref = relay.message
        local_id: str | None = None
        if ref.origin.lower() == self.server_name:
            row = await self.messages.get(ref.id)
            if row is not None and row["remote_origin"] is None:
                local_id = ref.id
        elif ref.origin.lower() == origin:
            local_id = await self.updates.relayed(origin, ref.id)
        row = None if local_id is None else await self.messages.get(local_id)
        if row is None or row["deleted_at"] is not None or row["guild_id"] is not None:
            log.warning("dm reaction on an unknown message dropped", extra={"fields": {"origin": origin}})
            return
        recipients = await self.dms.users.channel_recipients(str(row["channel_id"]))
        if user["id"] not in {r["id"] for r in recipients}:
            log.warning("dm reaction outside the user's DMs dropped", extra={"fields": {"origin": origin}})
            return
        if relay.add:
            changed = await self.messages.add_reaction(str(row["id"]), str(user["id"]), emoji, self.clock())
        else:
            changed = await self.messages.remove_reaction(str(row["id"]), str(user["id"]), emoji)
        if changed:
            await self._publish(
                str(row["channel_id"]),
                "reaction_add" if relay.add else "reaction_remove",
                {
                    "message_id": row["id"],
                    "channel_id": row["channel_id"],
                    "guild_id": None,
                    "user_id": user["id"],
                    "emoji": emoji,
                },
            )
