"""Guild emoji: listing, uploading and deleting custom emoji, and finding one to serve its image.

Any member may list emoji and fetch their images; uploading and deleting need MANAGE_EMOJI.
Names are 2-32 characters of ``[A-Za-z0-9_]``, unique per guild and case-sensitive (a reaction
``:name:`` must match exactly). Images are PNG, GIF or WebP of at most 256 KiB, typed by their
content (``vox.services.uploads.check_emoji_image``), never by what the client declares.

Storage is all or nothing: the image goes to the blob store first (under ``emoji_key``), then
the row is inserted; if the insert is refused or fails, or the request is cancelled, the blob is
deleted again, so no blob outlives a failed upload and no row ever points at a missing blob.
Deleting removes the row first and the blob after, for the same reason.

Every change publishes ``guild_emoji_updated {guild_id, emoji: [every emoji of the guild]}`` to
``guild:{id}`` so clients replace their list without a refetch.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from vox.blobs import BlobStore
from vox.errors import BlobError, Conflict, Forbidden, NotFound, ValidationError
from vox.protocol.permissions import Permission
from vox.pubsub import Broker
from vox.services.guild_events import guild_topic
from vox.services.ids import is_uuid
from vox.services.permissions import PermissionService, require
from vox.services.publish import publish_event
from vox.services.timefmt import iso
from vox.services.uploads import (
    EMOJI_MAX_BYTES,
    FileType,
    MultipartLimits,
    MultipartReader,
    emoji_key,
    read_emoji_image,
)
from vox.storage.base import Row
from vox.storage.emoji import Emoji, EmojiRefused, NewEmoji

__all__ = [
    "GUILD_EMOJI_UPDATED",
    "MAX_EMOJI_PER_GUILD",
    "EmojiForm",
    "EmojiService",
    "emoji_object",
    "read_emoji_form",
    "validate_emoji_name",
]

log = logging.getLogger("vox.emoji")

GUILD_EMOJI_UPDATED = "guild_emoji_updated"
MAX_EMOJI_PER_GUILD = 100

_NAME = re.compile(r"[A-Za-z0-9_]{2,32}")
_DISCARD_TIMEOUT_S = 30.0

# One image and one name; a few spare parts so a form with an extra field still works. The body
# cap leaves room for the multipart framing around the largest allowed image.
_FORM_LIMITS = MultipartLimits(
    max_files=2, max_parts=6, max_field_bytes=256, max_headers=8, max_body_bytes=EMOJI_MAX_BYTES + 16_384
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def validate_emoji_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationError(
            "emoji names are 2-32 letters, digits or underscores",
            {"name": "2-32 characters of A-Z a-z 0-9 _"},
        )
    return name


def emoji_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "guild_id": row["guild_id"],
        "name": row["name"],
        "mime_type": row["mime_type"],
        "url": f"/api/v1/guilds/{row['guild_id']}/emoji/{row['id']}/image",
        "uploader_id": row["uploader_id"],
        "created_at": iso(row["created_at"]),
    }


@dataclass(frozen=True)
class EmojiForm:
    name: str
    image: bytes
    file_type: FileType


async def read_emoji_form(body: AsyncIterable[bytes], content_type: str) -> EmojiForm:
    """The ``name`` and ``image`` of a multipart/form-data upload, the image vetted (415, 413, 400).

    Held in memory (at most 256 KiB), so nothing is stored before the whole form is known good.
    Other fields are ignored.
    """
    name: str | None = None
    image: tuple[bytes, FileType] | None = None
    async for part in MultipartReader(body, content_type, limits=_FORM_LIMITS):
        if part.name == "image":
            if image is not None:
                raise ValidationError("one image per emoji", {"image": "sent twice"})
            image = await read_emoji_image(part)
        elif part.name == "name":
            if name is not None:
                raise ValidationError("one name per emoji", {"name": "sent twice"})
            name = await part.read_text()
    missing = {f: "required" for f, v in (("name", name), ("image", image)) if v is None}
    if missing:
        raise ValidationError("an emoji needs a name and an image", missing)
    assert name is not None and image is not None
    return EmojiForm(validate_emoji_name(name), image[0], image[1])


class EmojiService:
    def __init__(
        self,
        emoji: Emoji,
        permissions: PermissionService,
        blobs: BlobStore,
        broker: Broker,
        *,
        max_per_guild: int = MAX_EMOJI_PER_GUILD,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.emoji = emoji
        self.permissions = permissions
        self.blobs = blobs
        self.broker = broker
        self.max_per_guild = max_per_guild
        self.clock = clock

    async def of_guild(self, user_id: str, guild_id: str) -> list[dict[str, Any]]:
        await self.permissions.member_access(user_id, guild_id)
        return [emoji_object(r) for r in await self.emoji.of_guild(guild_id)]

    async def check_can_manage(self, user_id: str, guild_id: str) -> None:
        """Membership (404) and MANAGE_EMOJI (403): run before an upload's body is read."""
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_EMOJI)

    async def create(self, user_id: str, guild_id: str, form: EmojiForm) -> dict[str, Any]:
        await self.check_can_manage(user_id, guild_id)
        name = validate_emoji_name(form.name)
        # Cheap early answers; the insert below re-checks both under the guild's lock.
        if await self.emoji.name_taken(guild_id, name):
            raise Conflict(f"this guild already has an emoji called {name!r}", field="name")
        if await self.emoji.count(guild_id) >= self.max_per_guild:
            raise self._full()
        emoji_id = str(uuid.uuid4())
        key = emoji_key(guild_id, emoji_id, form.file_type.extension)
        await self.blobs.put(key, form.image, form.file_type.mime_type)
        new = NewEmoji(emoji_id, guild_id, name, key, form.file_type.mime_type, user_id, self.clock())
        try:
            result = await self.emoji.create(new, self.max_per_guild)
        except BaseException:
            await self._discard(key)
            raise
        if isinstance(result, EmojiRefused):
            await self._discard(key)
            if result is EmojiRefused.NAME_TAKEN:
                raise Conflict(f"this guild already has an emoji called {name!r}", field="name")
            if result is EmojiRefused.LIMIT:
                raise self._full()
            raise NotFound("guild not found")
        row, every = result
        log.info("emoji created", extra={"fields": {"guild_id": guild_id, "emoji_id": emoji_id}})
        await self._announce(guild_id, every)
        return emoji_object(row)

    async def delete(self, user_id: str, guild_id: str, emoji_id: str) -> None:
        await self.check_can_manage(user_id, guild_id)
        deleted = await self.emoji.delete(guild_id, emoji_id, user_id) if is_uuid(emoji_id) else None
        if deleted is None:
            raise NotFound("emoji not found")
        row, remaining = deleted
        try:
            await self.blobs.delete(row["storage_key"])
        except BlobError:
            # The row is gone, so nothing can reach the blob: an orphan for an operator, not an error.
            log.exception(
                "could not delete the image of a deleted emoji", extra={"fields": {"key": row["storage_key"]}}
            )
        await self._announce(guild_id, remaining)

    async def image(self, user_id: str, guild_id: str, emoji_id: str) -> Row:
        """The emoji row (with ``storage_key``) for a member of its guild; 404 otherwise."""
        await self.permissions.member_access(user_id, guild_id)
        row = await self.emoji.get(guild_id, emoji_id) if is_uuid(emoji_id) else None
        if row is None:
            raise NotFound("emoji not found")
        return row

    def _full(self) -> Forbidden:
        return Forbidden(f"a guild can have at most {self.max_per_guild} emoji")

    async def _announce(self, guild_id: str, every: list[Row]) -> None:
        await publish_event(
            self.broker,
            [guild_topic(guild_id)],
            GUILD_EMOJI_UPDATED,
            {"guild_id": guild_id, "emoji": [emoji_object(r) for r in every]},
        )

    async def _discard(self, key: str) -> None:
        # Shielded: a cancelled upload must still clean up; bounded: a dead store must not hang it.
        with trio.CancelScope(shield=True), trio.move_on_after(_DISCARD_TIMEOUT_S):
            try:
                await self.blobs.delete(key)
            except BlobError:
                log.exception(
                    "could not delete the image of a failed emoji upload", extra={"fields": {"key": key}}
                )
