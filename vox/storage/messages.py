"""Queries for messages, reactions, attachments and search (protocol.md section 4)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vox.storage.base import Conn, Engine, Row

_MESSAGE_COLUMNS = (
    "m.id, m.channel_id, m.guild_id, m.user_id, m.content, m.encrypted, m.nonce, m.reply_to,"
    " m.mention_type, m.mentions, m.created_at, m.edited_at, m.deleted_at, m.remote_origin,"
    " u.username AS author_username, u.display_name AS author_display_name"
)
_MESSAGE_FROM = " FROM messages m JOIN users u ON u.id = m.user_id"


@dataclass(frozen=True, slots=True)
class NewMessage:
    id: str
    channel_id: str
    guild_id: str | None
    user_id: str
    content: str
    encrypted: bool
    nonce: str | None
    reply_to: str | None
    mention_type: str | None
    mentions: Sequence[str]
    created_at: int


@dataclass(frozen=True, slots=True)
class NewAttachment:
    id: str
    filename: str
    mime_type: str
    size_bytes: int
    storage_key: str


class ReplyNotFound(Exception):
    """reply_to names no message of this channel."""


class Messages:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def create(self, new: NewMessage, attachments: Sequence[NewAttachment] = ()) -> Row:
        """Insert the message and its attachments in one transaction; return it as read back."""

        def fn(c: Conn) -> Row:
            if new.reply_to is not None:
                found = c.fetchval(
                    "SELECT 1 FROM messages WHERE id = :id AND channel_id = :ch",
                    {"id": new.reply_to, "ch": new.channel_id},
                )
                if found is None:
                    raise ReplyNotFound(new.reply_to)
            c.execute(
                "INSERT INTO messages (id, channel_id, guild_id, user_id, content, encrypted, nonce,"
                " reply_to, mention_type, mentions, created_at) VALUES (:id, :channel_id, :guild_id,"
                " :user_id, :content, :encrypted, :nonce, :reply_to, :mention_type, :mentions, :created_at)",
                {
                    "id": new.id,
                    "channel_id": new.channel_id,
                    "guild_id": new.guild_id,
                    "user_id": new.user_id,
                    "content": new.content,
                    "encrypted": new.encrypted,
                    "nonce": new.nonce,
                    "reply_to": new.reply_to,
                    "mention_type": new.mention_type,
                    "mentions": json.dumps(list(new.mentions)),
                    "created_at": new.created_at,
                },
            )
            if attachments:
                c.executemany(
                    "INSERT INTO file_attachments (id, message_id, filename, mime_type, size_bytes,"
                    " storage_key, created_at) VALUES (:id, :message_id, :filename, :mime_type,"
                    " :size_bytes, :storage_key, :created_at)",
                    [
                        {
                            "id": a.id,
                            "message_id": new.id,
                            "filename": a.filename,
                            "mime_type": a.mime_type,
                            "size_bytes": a.size_bytes,
                            "storage_key": a.storage_key,
                            # One millisecond apart: attachments list in upload order.
                            "created_at": new.created_at + index,
                        }
                        for index, a in enumerate(attachments)
                    ],
                )
            row = c.fetchone(
                "SELECT " + _MESSAGE_COLUMNS + _MESSAGE_FROM + " WHERE m.id = :id", {"id": new.id}
            )
            assert row is not None
            return row

        return await self.engine.write(fn)

    async def get(self, message_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(
                "SELECT " + _MESSAGE_COLUMNS + _MESSAGE_FROM + " WHERE m.id = :id", {"id": message_id}
            )
        )

    async def page(self, channel_id: str, *, before: str | None, after: str | None, limit: int) -> list[Row]:
        """Live messages of a channel: newest first, or oldest first after ``after``."""
        where = ["m.channel_id = :ch", "m.deleted_at IS NULL"]
        params: dict[str, Any] = {"ch": channel_id, "limit": limit}
        if before is not None:
            where.append("m.id < :before")
            params["before"] = before
        if after is not None:
            where.append("m.id > :after")
            params["after"] = after
        order = "ASC" if after is not None else "DESC"
        sql = "SELECT " + _MESSAGE_COLUMNS + _MESSAGE_FROM + " WHERE " + " AND ".join(where)
        sql += f" ORDER BY m.id {order} LIMIT :limit"
        return await self.engine.read(lambda c: c.fetchall(sql, params))

    async def edit(
        self,
        message_id: str,
        author_id: str,
        content: str,
        mention_type: str | None,
        mentions: Sequence[str],
        edited_at: int,
    ) -> Row | None:
        def fn(c: Conn) -> Row | None:
            changed = c.execute(
                "UPDATE messages SET content = :content, mention_type = :mt, mentions = :mentions,"
                " edited_at = :at WHERE id = :id AND user_id = :author AND deleted_at IS NULL",
                {
                    "content": content,
                    "mt": mention_type,
                    "mentions": json.dumps(list(mentions)),
                    "at": edited_at,
                    "id": message_id,
                    "author": author_id,
                },
            )
            if changed != 1:
                return None
            return c.fetchone(
                "SELECT " + _MESSAGE_COLUMNS + _MESSAGE_FROM + " WHERE m.id = :id", {"id": message_id}
            )

        return await self.engine.write(fn)

    async def soft_delete(self, message_id: str, deleted_at: int) -> list[str]:
        """Mark deleted and blank the content; return the storage keys of its attachments."""

        def fn(c: Conn) -> list[str]:
            changed = c.execute(
                "UPDATE messages SET deleted_at = :at, content = '', nonce = NULL, mentions = '[]',"
                " mention_type = NULL WHERE id = :id AND deleted_at IS NULL",
                {"at": deleted_at, "id": message_id},
            )
            if changed != 1:
                return []
            keys = [
                r["storage_key"]
                for r in c.fetchall(
                    "SELECT storage_key FROM file_attachments WHERE message_id = :id", {"id": message_id}
                )
            ]
            c.execute("DELETE FROM file_attachments WHERE message_id = :id", {"id": message_id})
            c.execute("DELETE FROM reactions WHERE message_id = :id", {"id": message_id})
            return keys

        return await self.engine.write(fn)

    async def add_reaction(self, message_id: str, user_id: str, emoji: str, now: int) -> bool:
        """True when this user had not yet reacted with this emoji."""
        return bool(
            await self.engine.write(
                lambda c: c.execute(
                    "INSERT INTO reactions (message_id, user_id, emoji, created_at) VALUES (:m, :u, :e, :now)"
                    " ON CONFLICT (message_id, user_id, emoji) DO NOTHING",
                    {"m": message_id, "u": user_id, "e": emoji, "now": now},
                )
            )
        )

    async def remove_reaction(self, message_id: str, user_id: str, emoji: str) -> bool:
        return bool(
            await self.engine.write(
                lambda c: c.execute(
                    "DELETE FROM reactions WHERE message_id = :m AND user_id = :u AND emoji = :e",
                    {"m": message_id, "u": user_id, "e": emoji},
                )
            )
        )

    async def extras(
        self, message_ids: Sequence[str], viewer_id: str
    ) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
        """Attachments and reaction counts (with the viewer's own) for a page of messages."""
        if not message_ids:
            return {}, {}
        names = {f"m{i}": mid for i, mid in enumerate(message_ids)}
        placeholders = ", ".join(f":{k}" for k in names)

        def fn(c: Conn) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
            files: dict[str, list[Row]] = {}
            for row in c.fetchall(
                "SELECT id, message_id, filename, mime_type, size_bytes FROM file_attachments"
                f" WHERE message_id IN ({placeholders}) ORDER BY created_at, id",
                names,
            ):
                files.setdefault(row["message_id"], []).append(row)
            reactions: dict[str, list[Row]] = {}
            for row in c.fetchall(
                "SELECT message_id, emoji, COUNT(*) AS count,"
                " SUM(CASE WHEN user_id = :viewer THEN 1 ELSE 0 END) AS me, MIN(created_at) AS first_at"
                f" FROM reactions WHERE message_id IN ({placeholders})"
                " GROUP BY message_id, emoji ORDER BY first_at, emoji",
                {**names, "viewer": viewer_id},
            ):
                reactions.setdefault(row["message_id"], []).append(row)
            return files, reactions

        return await self.engine.read(fn)

    async def guild_emoji_exists(self, guild_id: str, name: str) -> bool:
        return (
            await self.engine.read(
                lambda c: c.fetchval(
                    "SELECT 1 FROM guild_emoji WHERE guild_id = :g AND name = :n", {"g": guild_id, "n": name}
                )
            )
            is not None
        )

    async def attachment(self, attachment_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(
                "SELECT a.id, a.message_id, a.filename, a.mime_type, a.size_bytes, a.storage_key,"
                " m.channel_id"
                " FROM file_attachments a JOIN messages m ON m.id = a.message_id"
                " WHERE a.id = :id AND m.deleted_at IS NULL",
                {"id": attachment_id},
            )
        )

    async def search(
        self, guild_id: str, channel_ids: Sequence[str], query: str, *, author_id: str | None, limit: int
    ) -> list[Row]:
        """Full-text search over live plaintext messages of the given channels (never encrypted)."""
        if not channel_ids or not query.strip():
            return []
        names = {f"c{i}": cid for i, cid in enumerate(channel_ids)}
        in_channels = ", ".join(f":{k}" for k in names)
        params: dict[str, Any] = {**names, "guild_id": guild_id, "limit": limit}
        author = ""
        if author_id is not None:
            author = " AND m.user_id = :author"
            params["author"] = author_id

        def fn(c: Conn) -> list[Row]:
            if c.dialect == "sqlite":
                terms = [t for t in query.split() if t]
                params["q"] = " ".join('"' + t.replace('"', '""') + '"' for t in terms)
                return c.fetchall(
                    "SELECT " + _MESSAGE_COLUMNS + " FROM messages_fts f"
                    " JOIN messages_fts_ids i ON i.seq = f.rowid JOIN messages m ON m.id = i.message_id"
                    " JOIN users u ON u.id = m.user_id"
                    " WHERE messages_fts MATCH :q AND m.guild_id = :guild_id"
                    f" AND m.channel_id IN ({in_channels})"
                    " AND m.encrypted = FALSE AND m.deleted_at IS NULL"
                    + author
                    + " ORDER BY f.rank, m.id DESC LIMIT :limit",
                    params,
                )
            params["q"] = query
            return c.fetchall(
                "SELECT "
                + _MESSAGE_COLUMNS
                + _MESSAGE_FROM
                + " WHERE m.search_vector @@ websearch_to_tsquery('simple', :q) AND m.guild_id = :guild_id"
                f" AND m.channel_id IN ({in_channels}) AND m.encrypted = FALSE AND m.deleted_at IS NULL"
                + author
                + " ORDER BY ts_rank(m.search_vector, websearch_to_tsquery('simple', :q)) DESC, m.id DESC"
                " LIMIT :limit",
                params,
            )

        return await self.engine.read(fn)
