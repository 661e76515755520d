"""Messages: send, list, edit, delete, reactions, search, each checked against the caller's
permissions in the channel, and each published once to ``channel:{id}`` for the gateway."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vox.errors import Forbidden, NotFound, ValidationError
from vox.protocol.gateway import encode_event, envelope
from vox.protocol.permissions import Permission
from vox.pubsub import Broker
from vox.services.ids import is_uuid, uuid7
from vox.services.mentions import parse as parse_mentions
from vox.services.permissions import PermissionService, require
from vox.services.timefmt import iso
from vox.storage.base import Row
from vox.storage.messages import Messages, NewAttachment, NewMessage, ReplyNotFound

MAX_CONTENT = 4000
MAX_ENCRYPTED_CONTENT = 16 * 1024
MAX_NONCE = 256
MAX_EMOJI_CODEPOINTS = 16
MAX_EMOJI_NAME = 32


def now_ms() -> int:
    return int(time.time() * 1000)


def validate_emoji(emoji: str) -> str:
    """A Unicode emoji (a short run of symbol code points) or a ``:name:`` custom emoji."""
    if emoji.startswith(":") and emoji.endswith(":") and 3 <= len(emoji) <= MAX_EMOJI_NAME + 2:
        name = emoji[1:-1]
        if name.replace("_", "").replace("-", "").isalnum() and name.isascii():
            return emoji
        raise ValidationError(
            "invalid custom emoji name", {"emoji": "use :name: with letters, digits, _ or -"}
        )
    if not 1 <= len(emoji) <= MAX_EMOJI_CODEPOINTS:
        raise ValidationError("invalid emoji", {"emoji": "not an emoji"})
    for ch in emoji:
        category = unicodedata.category(ch)
        # Emoji are symbols (So/Sk), joined and varied by ZWJ/selectors (Cf/Mn) and keycaps (Me).
        if category not in {"So", "Sk", "Cf", "Mn", "Me"} and not (ch.isdigit() or ch in "#*"):
            raise ValidationError("invalid emoji", {"emoji": "not an emoji"})
    # At least one pictograph, or a keycap sequence (1️⃣): bare digits and joiners are not emoji.
    if not any(unicodedata.category(ch) in {"So", "Sk"} for ch in emoji) and "\u20e3" not in emoji:
        raise ValidationError("invalid emoji", {"emoji": "not an emoji"})
    return emoji


def render(row: Row, files: list[Row] | None = None, reactions: list[Row] | None = None) -> dict[str, Any]:
    deleted = row["deleted_at"] is not None
    return {
        "id": row["id"],
        "channel_id": row["channel_id"],
        "guild_id": row["guild_id"],
        "author": {
            "id": row["user_id"],
            "username": row["author_username"],
            "display_name": row["author_display_name"],
        },
        "content": "" if deleted else row["content"],
        "encrypted": bool(row["encrypted"]),
        "nonce": None if deleted else row["nonce"],
        "reply_to": row["reply_to"],
        "mention_type": row["mention_type"],
        "mentions": json.loads(row["mentions"] or "[]"),
        "attachments": [
            {
                "id": f["id"],
                "filename": f["filename"],
                "mime_type": f["mime_type"],
                "size_bytes": f["size_bytes"],
                "url": f"/api/v1/attachments/{f['id']}",
            }
            for f in files or []
        ],
        "reactions": [
            {"emoji": r["emoji"], "count": int(r["count"]), "me": bool(r["me"])} for r in reactions or []
        ],
        "created_at": iso(row["created_at"]),
        "edited_at": iso(row["edited_at"]),
        # The server a relayed DM came from (docs/federation.md); null for messages sent here.
        "origin": row["remote_origin"],
    }


@dataclass(frozen=True, slots=True)
class DmChange:
    """An edit, deletion or reaction in a DM, for federation to pass on (docs/federation.md)."""

    kind: str  # "edit", "delete" or "reaction"
    actor_id: str
    message: Row  # as stored after an edit, before a deletion
    emoji: str | None = None
    add: bool = False


class DmRelayHooks(Protocol):
    """What federation adds to DMs that cross servers (vox.services.federated_dm_updates)."""

    async def relay_change(self, change: DmChange) -> None: ...

    async def check_attachments(self, channel_id: str, author_id: str) -> None: ...


class MessageService:
    def __init__(self, messages: Messages, permissions: PermissionService, broker: Broker) -> None:
        self.messages = messages
        self.permissions = permissions
        self.broker = broker
        # Set when federation is on: passes each new DM message on to other servers' recipients.
        self.relay_dm: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        # Set when federation is on: edits, deletions, reactions and attachment rules of DMs
        # with users of other servers.
        self.dm_relay: DmRelayHooks | None = None

    async def _publish(self, channel_id: str, type_: str, d: dict[str, Any]) -> None:
        payload = envelope(encode_event(type_, d))
        if d["guild_id"] is not None:
            await self.broker.publish(f"channel:{channel_id}", payload)
            return
        # DM events go to each recipient's user topic, which all their sessions always hold. A
        # session joins a new DM's channel topic only once it has handled dm_create, and the
        # first message can be posted before that (with Redis, subscribing is a round trip).
        for user_id in await self.permissions.channel_viewers(channel_id):
            await self.broker.publish(f"user:{user_id}", payload)

    @staticmethod
    def check_content(content: str, *, encrypted: bool, allow_empty: bool = False) -> str:
        if encrypted:
            if len(content.encode()) > MAX_ENCRYPTED_CONTENT:
                raise ValidationError(
                    "ciphertext too long", {"content": f"at most {MAX_ENCRYPTED_CONTENT} bytes"}
                )
            if not content and not allow_empty:
                raise ValidationError("content is empty", {"content": "required"})
            return content
        trimmed = content.strip()
        if not trimmed and not allow_empty:
            raise ValidationError("content is empty", {"content": "1-4000 characters after trimming"})
        if len(trimmed) > MAX_CONTENT:
            raise ValidationError("content too long", {"content": f"at most {MAX_CONTENT} characters"})
        return trimmed

    async def history(
        self, user_id: str, channel_id: str, *, before: str | None, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        await self.permissions.channel_permissions(user_id, channel_id)
        for name, value in (("before", before), ("after", after)):
            if value is not None and not is_uuid(value):
                raise ValidationError(f"{name} must be a message id", {name: "not a message id"})
        rows = await self.messages.page(channel_id, before=before, after=after, limit=limit)
        return await self._render_many(rows, user_id)

    async def _render_many(self, rows: list[Row], viewer: str) -> list[dict[str, Any]]:
        files, reactions = await self.messages.extras([r["id"] for r in rows], viewer)
        return [render(r, files.get(r["id"]), reactions.get(r["id"])) for r in rows]

    async def send(
        self,
        user_id: str,
        channel_id: str,
        content: str,
        *,
        reply_to: str | None = None,
        encrypted: bool = False,
        nonce: str | None = None,
        attachments: list[NewAttachment] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        perms, channel = await self.permissions.channel_permissions(user_id, channel_id)
        require(perms, Permission.SEND_MESSAGES)
        if attachments:
            require(perms, Permission.ATTACH_FILES)
            if self.dm_relay is not None and channel["guild_id"] is None:
                await self.dm_relay.check_attachments(channel_id, user_id)
        if channel["channel_type"] == "voice":
            raise ValidationError("voice channels have no messages", {"channel_id": "not a text channel"})
        text = self.check_content(content, encrypted=encrypted, allow_empty=bool(attachments))
        if encrypted:
            await self.permissions.check_encrypted_allowed(channel)
        if nonce is not None and len(nonce) > MAX_NONCE:
            raise ValidationError("nonce too long", {"nonce": f"at most {MAX_NONCE} characters"})
        if reply_to is not None and not is_uuid(reply_to):
            raise ValidationError("reply_to must be a message id", {"reply_to": "not a message id"})
        # Encrypted content is opaque: never parsed for mentions.
        mentions = parse_mentions(
            "" if encrypted else text, may_mention_everyone=bool(perms & Permission.MENTION_EVERYONE)
        )
        now = now_ms()
        try:
            row = await self.messages.create(
                NewMessage(
                    id=message_id or uuid7(now),
                    channel_id=channel_id,
                    guild_id=channel["guild_id"],
                    user_id=user_id,
                    content=text,
                    encrypted=encrypted,
                    nonce=nonce,
                    reply_to=reply_to,
                    mention_type=mentions.mention_type,
                    mentions=mentions.user_ids,
                    created_at=now,
                ),
                attachments or [],
            )
        except ReplyNotFound:
            raise ValidationError(
                "reply_to is not a message of this channel", {"reply_to": "not found"}
            ) from None
        # A new message has exactly the attachments just written and no reactions yet: no read.
        files = [
            {"id": a.id, "filename": a.filename, "mime_type": a.mime_type, "size_bytes": a.size_bytes}
            for a in attachments or []
        ]
        message = render(row, files)
        await self._publish(channel_id, "message_new", message)
        if self.relay_dm is not None and channel["guild_id"] is None:
            await self.relay_dm(message)
        return message

    async def check_can_upload(self, user_id: str, channel_id: str) -> None:
        perms, channel = await self.permissions.channel_permissions(user_id, channel_id)
        require(perms, Permission.SEND_MESSAGES | Permission.ATTACH_FILES)
        if channel["channel_type"] == "voice":
            raise ValidationError("voice channels have no messages", {"channel_id": "not a text channel"})
        if self.dm_relay is not None and channel["guild_id"] is None:
            await self.dm_relay.check_attachments(channel_id, user_id)

    async def attachment(self, user_id: str, attachment_id: str) -> Row:
        """An attachment the user may read: same visibility as its message's channel."""
        row = await self.messages.attachment(attachment_id) if is_uuid(attachment_id) else None
        if row is None:
            raise NotFound("attachment not found")
        await self.permissions.channel_permissions(user_id, row["channel_id"])
        return row

    async def _visible_message(self, user_id: str, message_id: str) -> tuple[Row, int]:
        row = await self.messages.get(message_id) if is_uuid(message_id) else None
        if row is None or row["deleted_at"] is not None:
            raise NotFound("message not found")
        perms, _ = await self.permissions.channel_permissions(user_id, row["channel_id"])
        return row, perms

    async def edit(self, user_id: str, message_id: str, content: str) -> dict[str, Any]:
        row, perms = await self._visible_message(user_id, message_id)
        if row["user_id"] != user_id:
            raise Forbidden("only the author can edit a message")
        encrypted = bool(row["encrypted"])
        text = self.check_content(content, encrypted=encrypted)
        if encrypted and row["guild_id"] is not None:
            # New ciphertext is refused once the guild stops allowing it, as for a new message.
            _, channel = await self.permissions.channel_permissions(user_id, row["channel_id"])
            await self.permissions.check_encrypted_allowed(channel)
        mentions = parse_mentions(
            "" if encrypted else text, may_mention_everyone=bool(perms & Permission.MENTION_EVERYONE)
        )
        updated = await self.messages.edit(
            message_id, user_id, text, mentions.mention_type, mentions.user_ids, now_ms()
        )
        if updated is None:
            raise NotFound("message not found")
        message = (await self._render_many([updated], user_id))[0]
        await self._publish(row["channel_id"], "message_edit", message)
        if self.dm_relay is not None and row["guild_id"] is None:
            await self.dm_relay.relay_change(DmChange("edit", user_id, updated))
        return message

    async def delete(self, user_id: str, message_id: str) -> list[str]:
        """Soft-delete; returns the blob keys of its attachments for the caller to remove."""
        row, perms = await self._visible_message(user_id, message_id)
        if row["user_id"] != user_id:
            require(perms, Permission.MANAGE_MESSAGES)
        keys = await self.messages.soft_delete(message_id, now_ms())
        await self._publish(
            row["channel_id"],
            "message_delete",
            {"id": message_id, "channel_id": row["channel_id"], "guild_id": row["guild_id"]},
        )
        if self.dm_relay is not None and row["guild_id"] is None:
            await self.dm_relay.relay_change(DmChange("delete", user_id, row))
        return keys

    async def react(self, user_id: str, message_id: str, emoji: str, *, add: bool) -> None:
        row, perms = await self._visible_message(user_id, message_id)
        emoji = validate_emoji(emoji)
        if add:
            require(perms, Permission.ADD_REACTIONS)
            if emoji.startswith(":") and not await self._custom_emoji_exists(row["guild_id"], emoji[1:-1]):
                raise ValidationError("unknown custom emoji", {"emoji": "no such emoji in this guild"})
            changed = await self.messages.add_reaction(message_id, user_id, emoji, now_ms())
        else:
            changed = await self.messages.remove_reaction(message_id, user_id, emoji)
        if changed:
            await self._publish(
                row["channel_id"],
                "reaction_add" if add else "reaction_remove",
                {
                    "message_id": message_id,
                    "channel_id": row["channel_id"],
                    "guild_id": row["guild_id"],
                    "user_id": user_id,
                    "emoji": emoji,
                },
            )
            if self.dm_relay is not None and row["guild_id"] is None:
                await self.dm_relay.relay_change(DmChange("reaction", user_id, row, emoji, add))

    async def _custom_emoji_exists(self, guild_id: str | None, name: str) -> bool:
        return guild_id is not None and await self.messages.guild_emoji_exists(guild_id, name)

    async def search(
        self,
        user_id: str,
        guild_id: str,
        query: str,
        *,
        channel_id: str | None,
        author_id: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        channels = await self.permissions.visible_channels(user_id, guild_id) if is_uuid(guild_id) else None
        if channels is None:
            raise NotFound("guild not found")
        ids = [c["id"] for c in channels if c["channel_type"] == "text"]
        if channel_id is not None:
            ids = [c for c in ids if c == channel_id]
        rows = await self.messages.search(guild_id, ids, query, author_id=author_id, limit=limit)
        return await self._render_many(rows, user_id)
