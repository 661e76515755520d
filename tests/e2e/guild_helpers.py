"""Helpers for the guild, role, moderation and guild-event end-to-end suites.

Every suite here runs on SQLite and on PostgreSQL: the ``gd`` fixture starts the real daemon
on the parametrized ``database_url`` (PostgreSQL cases skip, saying why, when it is absent).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection

from tests import backends
from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.helpers import bearer, user_with_token
from vox.protocol.permissions import Permission


@pytest.fixture
async def gd(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> AsyncIterator[Daemon]:
    """The daemon on SQLite + the in-process broker, or on PostgreSQL + Redis (the scale-out
    pairing; Redis is left out, saying so in the log, only where it is absent)."""
    extra: dict[str, Any] = {}
    if database_url.startswith("postgresql") and backends.redis_skip_reason() is None:
        extra = {"redis_url": backends.REDIS_URL, "redis_prefix": f"vox:test:{uuid.uuid4().hex}:"}
    d = await start_daemon(nursery, tmp_path, database_url=database_url, **extra)
    yield d
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


@dataclass
class User:
    id: str
    token: str
    name: str

    @property
    def h(self) -> dict[str, str]:
        return bearer(self.token)


class Api:
    """A REST client bound to one daemon; every call names the acting user."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def user(self, name: str) -> User:
        user_id, token = await user_with_token(self.client, name)
        return User(user_id, token, name)

    async def call(self, who: User, method: str, path: str, body: Any = None) -> httpx.Response:
        kwargs: dict[str, Any] = {"headers": who.h}
        if body is not None:
            kwargs["json"] = body
        return await self.client.request(method, "/api/v1" + path, **kwargs)

    async def ok(self, who: User, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.call(who, method, path, body)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        return None if status == 204 else response.json()

    async def guild(self, owner: User, name: str = "Guild") -> dict[str, Any]:
        guild: dict[str, Any] = await self.ok(owner, "POST", "/guilds", {"name": name}, 201)
        return guild

    async def join(self, inviter: User, joiner: User, guild_id: str) -> dict[str, Any]:
        invite = await self.ok(inviter, "POST", f"/guilds/{guild_id}/invites", {}, 201)
        member: dict[str, Any] = await self.ok(joiner, "POST", f"/invites/{invite['code']}")
        return member

    async def role(
        self, actor: User, guild_id: str, name: str, permissions: int, position: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "permissions": permissions}
        if position is not None:
            body["position"] = position
        role: dict[str, Any] = await self.ok(actor, "POST", f"/guilds/{guild_id}/roles", body, 201)
        return role

    async def assign(self, actor: User, guild_id: str, user: User, role_id: str) -> None:
        await self.ok(actor, "PUT", f"/guilds/{guild_id}/members/{user.id}/roles/{role_id}", status=204)

    async def everyone(self, actor: User, guild_id: str, permissions: int) -> None:
        """Set the @everyone role's permissions."""
        roles = await self.ok(actor, "GET", f"/guilds/{guild_id}/roles")
        everyone = next(r for r in roles if r["is_default"])
        await self.ok(
            actor, "PATCH", f"/guilds/{guild_id}/roles/{everyone['id']}", {"permissions": permissions}
        )

    async def channel(
        self, actor: User, guild_id: str, name: str, channel_type: str = "text"
    ) -> dict[str, Any]:
        channel: dict[str, Any] = await self.ok(
            actor, "POST", f"/guilds/{guild_id}/channels", {"name": name, "channel_type": channel_type}, 201
        )
        return channel


async def voice_room(api: Api, n: int) -> tuple[list[User], dict[str, Any], dict[str, Any]]:
    """``n`` users ("owner", "user1", ...) in the owner's new guild, and its voice channel."""
    owner = await api.user("owner")
    users = [owner] + [await api.user(f"user{i}") for i in range(1, n)]
    guild = await api.guild(owner)
    for user in users[1:]:
        await api.join(owner, user, guild["id"])
    channel = await api.channel(owner, guild["id"], "Lounge", "voice")
    return users, guild, channel


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def assert_missing(response: httpx.Response, permission: Permission) -> None:
    assert response.status_code == 403, response.text
    error = error_of(response)
    assert error["code"] == "missing_permission", error
    assert error["missing_permission"] == permission.name, error


def assert_status(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code, error
    return error


PRESENCE_EVENTS = frozenset({"presence_update", "rich_presence_update"})


async def frame(ws: WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    """The next frame, skipping presence updates (members coming online interleave with
    whatever a test is looking at; presence has its own tests)."""
    with trio.fail_after(timeout):
        while True:
            raw = await ws.get_message()
            assert isinstance(raw, str), "gateway frames must be text frames"
            data: dict[str, Any] = json.loads(raw)
            if data["type"] not in PRESENCE_EVENTS:
                return data


async def expect(
    ws: WebSocketConnection,
    type_: str,
    where: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 5,
) -> dict[str, Any]:
    """The next frame, which must be a ``type_`` event (matching ``where``)."""
    got = await frame(ws, timeout)
    assert got["type"] == type_, got
    assert isinstance(got["seq"], int)
    if where is not None:
        assert where(got["d"]), got
    d: dict[str, Any] = got["d"]
    return d


async def expect_frames(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    return [await frame(ws) for _ in range(count)]
