"""The wire objects of protocol.md section 3 (guild, channel, category, role, member, invite),
built from Store rows. Pure functions: services and the gateway share them."""

from __future__ import annotations

from typing import Any

from vox.services.security import security_settings
from vox.services.timefmt import iso
from vox.services.users import public_user
from vox.storage.base import Row


def guild_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "owner_id": row["owner_id"],
        "icon": row["icon"],
        "security_settings": security_settings(row.get("security_settings")),
        "created_at": iso(row["created_at"]),
    }


def channel_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "guild_id": row["guild_id"],
        "name": row["name"],
        "channel_type": row["channel_type"],
        "category_id": row["category_id"],
        "position": int(row["position"]),
    }


def category_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "guild_id": row["guild_id"],
        "name": row["name"],
        "position": int(row["position"]),
    }


def role_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "guild_id": row["guild_id"],
        "name": row["name"],
        "permissions": int(row["permissions"]),
        "position": int(row["position"]),
        "is_default": bool(row["is_default"]),
    }


def member_object(row: Row, now_ms: int) -> dict[str, Any]:
    """A member; ``timeout_until`` is null once the timeout has passed, as if it were cleared."""
    until = row["timeout_until"]
    return {
        "user": public_user(row),
        "roles": list(row["role_ids"]),
        "joined_at": iso(row["joined_at"]),
        "timeout_until": iso(until) if until is not None and until > now_ms else None,
    }


def invite_object(row: Row) -> dict[str, Any]:
    return {
        "code": row["code"],
        "guild_id": row["guild_id"],
        "max_uses": row["max_uses"],
        "uses": int(row["uses"]),
        "expires_at": iso(row["expires_at"]),
        "inviter_id": row["inviter_id"],
        "created_at": iso(row["created_at"]),
    }


def with_guild_id(obj: dict[str, Any], guild_id: str) -> dict[str, Any]:
    return {**obj, "guild_id": guild_id}
