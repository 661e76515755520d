"""Federated identities: ``name@domain`` addresses, profiles served to peers, and remote users
known locally (docs/federation.md, "Federated DMs, guests and presence").

A user of another server is known here by a local row (vox.storage.remote_users) whose id
local features (DMs, keys, presence) use like any other user id. The row is created from what
the user's home server says (a signed profile lookup), or from what a verified peer relays or
vouches for: the domain half of the address is always the authenticated origin, never a field
a peer sends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

from vox.errors import NotFound, PeerError, ValidationError
from vox.protocol.federation import is_valid_domain
from vox.services.federation import Federation
from vox.services.timefmt import iso
from vox.storage.base import Row
from vox.storage.remote_users import RemoteProfile, RemoteUsers

__all__ = [
    "MAX_ADDRESS",
    "PROFILE_PATH",
    "ProfileBody",
    "RemoteDirectory",
    "is_address",
    "parse_address",
    "valid_username",
]

# A username (32) + "@" + a domain with a port: generous, but bounded before any parsing.
MAX_ADDRESS = 300
# Served by each home server to its peers; {name} is a local username.
PROFILE_PATH = "/api/v1/federation/users/{name}"

_USERNAME = re.compile(r"[A-Za-z0-9_.\-]{2,32}")


def _now_ms() -> int:
    return int(time.time() * 1000)


def valid_username(name: str) -> bool:
    return bool(_USERNAME.fullmatch(name))


def is_address(text: str) -> bool:
    """Whether ``text`` is written as a federated address (it may still be malformed)."""
    return "@" in text


def parse_address(text: str) -> tuple[str, str]:
    """(name, domain) of ``name@domain``; ValidationError for anything else."""
    name, _, domain = text.rpartition("@")
    domain = domain.lower()
    if len(text) > MAX_ADDRESS or not valid_username(name) or not is_valid_domain(domain):
        raise ValidationError("not a user address", {"address": "name@domain, e.g. bob@chat.example.org"})
    return name, domain


class ProfileBody(msgspec.Struct):
    """A home server's answer to a profile lookup (and the sender block of relays)."""

    id: str
    username: str
    display_name: str | None = None
    avatar: str | None = None


def profile_object(row: Row) -> dict[str, Any]:
    """What a home server tells peers about one of its users."""
    return {
        "id": row["id"],
        "username": row["username"],
        "display_name": row["display_name"],
        "avatar": row["avatar"],
        "created_at": iso(row["created_at"]),
    }


def remote_user_object(row: Row) -> dict[str, Any]:
    """The public user object of a remote user as local clients see it."""
    return {
        "id": row["id"],
        "username": row["username"],
        "display_name": row["display_name"],
        "avatar": row["avatar"],
        "is_admin": False,
        "created_at": iso(row["created_at"]),
        "home_domain": row["home_domain"],
    }


def _bounded(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


class RemoteDirectory:
    def __init__(
        self, users: RemoteUsers, federation: Federation, *, clock: Callable[[], int] = _now_ms
    ) -> None:
        self.users = users
        self.federation = federation
        self.clock = clock

    @property
    def server_name(self) -> str:
        return self.federation.server_name

    async def is_local(self, user_id: str) -> bool:
        row = await self.users.identity(user_id)
        return row is not None and row["home_domain"] is None

    async def remember(self, origin: str, sender: ProfileBody, *, complete: bool = True) -> Row | None:
        """The local row of ``sender``, a user of the authenticated peer ``origin``; None when
        the peer named them with something that is not a username. ``complete=False``: only the
        identity is known, and the stored display name and avatar stay."""
        if not valid_username(sender.username) or len(sender.id) > 64:
            return None
        profile = RemoteProfile(
            name=sender.username,
            domain=origin,
            remote_user_id=sender.id,
            display_name=_bounded(sender.display_name, 64),
            avatar=_bounded(sender.avatar, 512),
            complete=complete,
        )
        return await self.users.upsert(profile, self.clock())

    async def lookup(self, address: str) -> Row:
        """A remote user's local row, refreshed from their home server (which must know them).

        A user of this server named by their full address is answered from here."""
        name, domain = parse_address(address)
        if domain == self.server_name:
            local = await self.users.local_user(name)
            if local is None:
                raise NotFound("user not found")
            return local
        try:
            raw = await self.federation.request(domain, "GET", PROFILE_PATH.format(name=name), None)
        except PeerError as exc:
            if exc.peer_status == 404:
                raise NotFound("user not found on their home server") from None
            raise
        try:
            body = msgspec.convert(raw, type=ProfileBody)
        except msgspec.ValidationError:
            raise PeerError(200, "garbage", "home server answered with an unreadable profile") from None
        if body.username.lower() != name.lower():
            raise PeerError(200, "garbage", "home server answered for another user")
        row = await self.remember(domain, body)
        if row is None:
            raise PeerError(200, "garbage", "home server answered with an unreadable profile")
        return row

    async def serve_profile(self, name: str) -> dict[str, Any]:
        """A local user's profile, for a verified peer."""
        row = await self.users.local_user(name) if valid_username(name) else None
        if row is None or bool(row["disabled"]):
            raise NotFound("user not found")
        return profile_object(row)
