"""Rows the storage tests need, inserted with plain SQL (no Store queries exist yet)."""

from __future__ import annotations

import uuid
from typing import Any

from vox.storage import Conn

NOW = 1_700_000_000_000


def new_id() -> str:
    return str(uuid.uuid4())


def add_user(conn: Conn, username: str, **extra: Any) -> str:
    user_id = new_id()
    row = {
        "id": user_id,
        "username": username,
        "username_lower": username.lower(),
        "created_at": NOW,
        **extra,
    }
    columns = ", ".join(row)
    values = ", ".join(f":{c}" for c in row)
    conn.execute(f"INSERT INTO users ({columns}) VALUES ({values})", row)
    return user_id


def add_guild_with_channel(conn: Conn, owner_id: str) -> tuple[str, str]:
    guild_id, channel_id = new_id(), new_id()
    conn.execute(
        "INSERT INTO guilds (id, name, owner_id, created_at) VALUES (:id, 'g', :owner, :now)",
        {"id": guild_id, "owner": owner_id, "now": NOW},
    )
    conn.execute(
        "INSERT INTO channels (id, guild_id, name, channel_type, created_at)"
        " VALUES (:id, :guild_id, 'general', 'text', :now)",
        {"id": channel_id, "guild_id": guild_id, "now": NOW},
    )
    return guild_id, channel_id


def add_message(
    conn: Conn, channel_id: str, guild_id: str | None, user_id: str, content: str, *, encrypted: bool = False
) -> str:
    message_id = new_id()
    conn.execute(
        "INSERT INTO messages (id, channel_id, guild_id, user_id, content, encrypted, nonce, created_at)"
        " VALUES (:id, :channel_id, :guild_id, :user_id, :content, :encrypted, :nonce, :now)",
        {
            "id": message_id,
            "channel_id": channel_id,
            "guild_id": guild_id,
            "user_id": user_id,
            "content": content,
            "encrypted": encrypted,
            "nonce": "bm9uY2U=" if encrypted else None,
            "now": NOW,
        },
    )
    return message_id
