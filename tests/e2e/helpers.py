"""Small clients for end-to-end tests: REST calls and gateway sessions against a real daemon."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.e2e.conftest import Daemon

PASSWORD = "correct horse battery"


async def register(client: httpx.AsyncClient, username: str, password: str = PASSWORD, **extra: Any) -> str:
    response = await client.post(
        "/api/v1/auth/register", json={"username": username, "password": password, **extra}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"])


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def user_with_token(client: httpx.AsyncClient, username: str) -> tuple[str, str]:
    user_id = await register(client, username)
    tokens = await login(client, username)
    return user_id, str(tokens["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def channel_history(client: httpx.AsyncClient, channel_id: str, token: str) -> list[dict[str, Any]]:
    """Every message of the channel, newest first, paging with ``before``."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = await client.get(
            f"/api/v1/channels/{channel_id}/messages", params=params, headers=bearer(token)
        )
        assert page.status_code == 200, page.text
        batch: list[dict[str, Any]] = page.json()
        if not batch:
            return found
        found.extend(batch)
        params["before"] = batch[-1]["id"]


def db_rows(daemon: Daemon, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the embedded daemon's SQLite database directly (WAL allows a concurrent reader)."""
    conn = sqlite3.connect(daemon.config.data_dir / "vox.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_execute(daemon: Daemon, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(daemon.config.data_dir / "vox.db")
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


async def next_frame(ws: WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        raw = await ws.get_message()
        assert isinstance(raw, str), "gateway frames must be text frames"
        frame: dict[str, Any] = json.loads(raw)
        return frame


async def close_code(ws: WebSocketConnection, timeout: float = 5) -> int | None:
    """Read until the server closes; return its close code."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


@asynccontextmanager
async def gateway(
    daemon: Daemon, token: str | None = None, *, via_header: bool = False
) -> AsyncIterator[tuple[WebSocketConnection, dict[str, Any] | None]]:
    """Connect, read hello, identify (by frame or header); yield (ws, ready-or-None)."""
    protocols = ["vox.v1"] + ([f"access_token.{token}"] if via_header and token else [])
    async with open_websocket_url(daemon.gateway, subprotocols=protocols) as ws:
        hello = await next_frame(ws)
        assert hello["type"] == "hello"
        ready = None
        if token is not None:
            if not via_header:
                await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
            ready = await next_frame(ws)
        yield ws, ready
