"""The user object of the wire contract, built from a Store row."""

from __future__ import annotations

from typing import Any

from vox.services.timefmt import iso
from vox.storage import Row


def public_user(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "display_name": row["display_name"],
        "avatar": row["avatar"],
        "is_admin": bool(row["is_admin"]),
        "created_at": iso(row["created_at"]),
    }


def own_user(row: Row) -> dict[str, Any]:
    user = public_user(row)
    user["email"] = row["email"]
    user["mfa_enabled"] = bool(row["mfa_enabled"])
    return user
