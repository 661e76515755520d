"""Queries for guild emoji (protocol.md section 4, "Direct messages, friends, emoji").

The image lives in the blob store under ``storage_key``; a row exists only once its blob does
(the service stores the blob first and deletes it again when the insert does not happen).
Creating and deleting write their audit_log row (``emoji_create``, ``emoji_delete``) in the same
transaction, like every other guild moderation action.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vox.errors import IntegrityError
from vox.storage.base import Conn, Engine, Row
from vox.storage.guilds import _audit
from vox.storage.locks import LockScope, serialize

__all__ = ["Emoji", "EmojiRefused", "NewEmoji"]

_COLS = "e.id, e.guild_id, e.name, e.storage_key, e.mime_type, e.uploader_id, e.created_at"


class EmojiRefused(enum.Enum):
    NO_GUILD = "no_guild"
    LIMIT = "limit"
    NAME_TAKEN = "name_taken"


@dataclass(frozen=True, slots=True)
class NewEmoji:
    id: str
    guild_id: str
    name: str
    storage_key: str
    mime_type: str
    uploader_id: str
    created_at: int


def _list(c: Conn, guild_id: str) -> list[Row]:
    rows = c.fetchall(f"SELECT {_COLS} FROM guild_emoji e WHERE e.guild_id = :g", {"g": guild_id})
    # Sorted here, not by ORDER BY: PostgreSQL would sort by the database's collation, and the
    # order must be the same (code point order) on every backend.
    return sorted(rows, key=lambda r: (r["name"], r["id"]))


class Emoji:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def of_guild(self, guild_id: str) -> list[Row]:
        return await self.engine.read(lambda c: _list(c, guild_id))

    async def get(self, guild_id: str, emoji_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {_COLS} FROM guild_emoji e WHERE e.id = :id AND e.guild_id = :g",
                {"id": emoji_id, "g": guild_id},
            )
        )

    async def name_taken(self, guild_id: str, name: str) -> bool:
        found = await self.engine.read(
            lambda c: c.fetchval(
                "SELECT 1 FROM guild_emoji WHERE guild_id = :g AND name = :n", {"g": guild_id, "n": name}
            )
        )
        return found is not None

    async def count(self, guild_id: str) -> int:
        return int(
            await self.engine.read(
                lambda c: c.fetchval("SELECT COUNT(*) FROM guild_emoji WHERE guild_id = :g", {"g": guild_id})
            )
        )

    async def create(self, new: NewEmoji, max_per_guild: int) -> tuple[Row, list[Row]] | EmojiRefused:
        """Insert unless the guild is gone, full, or has the name; return (emoji, all its emoji)."""

        def fn(c: Conn) -> tuple[Row, list[Row]] | EmojiRefused:
            # The count is a rule over many rows: serialise the guild's emoji inserts.
            serialize(c, LockScope.GUILD_EMOJI, new.guild_id)
            if c.fetchval("SELECT 1 FROM guilds WHERE id = :g", {"g": new.guild_id}) is None:
                return EmojiRefused.NO_GUILD
            count = int(
                c.fetchval("SELECT COUNT(*) FROM guild_emoji WHERE guild_id = :g", {"g": new.guild_id})
            )
            if count >= max_per_guild:
                return EmojiRefused.LIMIT
            inserted = c.execute(
                "INSERT INTO guild_emoji (id, guild_id, name, storage_key, mime_type, uploader_id,"
                " created_at) VALUES (:id, :g, :name, :key, :mime, :uploader, :now) ON CONFLICT DO NOTHING",
                {
                    "id": new.id,
                    "g": new.guild_id,
                    "name": new.name,
                    "key": new.storage_key,
                    "mime": new.mime_type,
                    "uploader": new.uploader_id,
                    "now": new.created_at,
                },
            )
            if inserted != 1:
                return EmojiRefused.NAME_TAKEN
            _audit(c, new.uploader_id, "emoji_create", new.guild_id, "emoji", new.id, {"name": new.name})
            rows = _list(c, new.guild_id)
            return next(r for r in rows if r["id"] == new.id), rows

        try:
            return await self.engine.write(fn)
        except IntegrityError:
            # Only a foreign key can fail here: the guild (or the uploader) went away meanwhile.
            return EmojiRefused.NO_GUILD

    async def delete(self, guild_id: str, emoji_id: str, actor_id: str) -> tuple[Row, list[Row]] | None:
        """Delete one emoji; return it as it was and the guild's remaining emoji."""

        def fn(c: Conn) -> tuple[Row, list[Row]] | None:
            row = c.fetchone(
                f"SELECT {_COLS} FROM guild_emoji e WHERE e.id = :id AND e.guild_id = :g",
                {"id": emoji_id, "g": guild_id},
            )
            if row is None:
                return None
            c.execute("DELETE FROM guild_emoji WHERE id = :id", {"id": emoji_id})
            _audit(c, actor_id, "emoji_delete", guild_id, "emoji", emoji_id, {"name": row["name"]})
            return row, _list(c, guild_id)

        return await self.engine.write(fn)
