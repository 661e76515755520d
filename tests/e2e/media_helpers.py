"""Clients for the QUIC media end-to-end tests: a gateway session that joins voice channels with
``transport: "quic"`` and collects its events, and the media connection itself
(vox.transports.quic_client: aioquic sans-IO on a trio UDP socket)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.e2e.conftest import Daemon
from vox.protocol.media import Codec, MediaHeader, MediaType


class Gateway:
    def __init__(self, ws: WebSocketConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.event_added = trio.Event()

    async def send(self, type_: str, d: Any = None) -> None:
        await self.ws.send_message(json.dumps({"type": type_, "d": d}))

    async def run(self) -> None:
        try:
            while True:
                frame = json.loads(await self.ws.get_message())
                self.events.append(frame)
                self.event_added.set()
                self.event_added = trio.Event()
        except ConnectionClosed:
            pass

    async def wait_event(self, type_: str, where: Any = None, timeout: float = 10) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                for frame in self.events:
                    if frame["type"] == type_ and (where is None or where(frame["d"])):
                        self.events.remove(frame)
                        d: dict[str, Any] = frame["d"]
                        return d
                await self.event_added.wait()

    async def join_quic(self, channel_id: str) -> dict[str, Any]:
        await self.send("voice_join", {"channel_id": channel_id, "transport": "quic"})
        return await self.wait_event("voice_media_session", lambda d: d["channel_id"] == channel_id)


@asynccontextmanager
async def gateway(daemon: Daemon, token: str, name: str) -> AsyncIterator[Gateway]:
    async with open_websocket_url(daemon.gateway, subprotocols=["vox.v1"]) as ws:
        await ws.get_message()  # hello
        await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
        ready = json.loads(await ws.get_message())
        assert ready["type"] == "ready", ready
        client = Gateway(ws, name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


def datagram(
    session: dict[str, Any], seq: int, payload_size: int = 160, type_: int = MediaType.AUDIO, **fields: Any
) -> bytes:
    """A media datagram of this session: header + a payload derived from (ssrc, seq), so a
    receiver can check it byte for byte."""
    header = MediaHeader(
        type=type_,
        codec=fields.pop("codec", Codec.OPUS),
        room_id=fields.pop("room_id", session["room_id"]),
        ssrc=fields.pop("ssrc", session["ssrc"]),
        sequence=seq,
        timestamp=seq * 960,
        **fields,
    ).encode()
    return header + payload(session["ssrc"], seq, payload_size)


def payload(ssrc: int, seq: int, size: int = 160) -> bytes:
    seed = (ssrc * 2654435761 + seq) & 0xFFFFFFFF
    return bytes((seed >> (8 * (i % 4)) ^ i) & 0xFF for i in range(size))


@dataclass
class Inbox:
    """Datagrams one media client received."""

    datagrams: list[bytes] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def __call__(self, data: bytes, now: float) -> None:
        self.datagrams.append(data)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_count(self, n: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(self.datagrams) < n:
                await self.changed.wait()


async def metrics_text(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of a metric (0 when the labelled sample is absent, as for an unseen reason)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    return 0.0
