"""Gateway helpers for the DM, friends and emoji suites.

Presence updates also travel to friends and co-members, at times a test does not control (a
connection opening or closing); these suites are about other events, so they skip them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import trio
from trio_websocket import WebSocketConnection

UNRELATED = frozenset({"presence_update", "rich_presence_update"})


async def frames(ws: WebSocketConnection, seconds: float) -> list[dict[str, Any]]:
    """Every frame but presence that arrives within ``seconds`` (usually: there should be none)."""
    got: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] not in UNRELATED:
                got.append(frame)
    return got


async def event(
    ws: WebSocketConnection, type_: str, timeout: float = 5, *, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """The next frame but presence (and ``skip``), which must be a ``type_`` event; its ``d``."""
    ignored = UNRELATED | set(skip)
    with trio.fail_after(timeout):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] not in ignored:
                break
    assert frame["type"] == type_, frame
    assert isinstance(frame["seq"], int)
    d: dict[str, Any] = frame["d"]
    return d
