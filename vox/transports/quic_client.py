"""A minimal QUIC media client (protocol.md section 9): aioquic's sans-IO ``QuicConnection`` on a
trio UDP socket. The end-to-end tests and ``bench/media_quic.py`` use it; it is also the shortest
description of what a client does:

    async with open_media_client("quic://127.0.0.1:4443") as client:
        await client.authenticate(media_token)     # one bidirectional stream: token + "\\n" -> "ok\\n"
        client.send(header + payload)              # one DATAGRAM frame per media datagram
        ... client.on_datagram(data, now) is called for every datagram received

Certificate verification is off unless ``verify`` is given a CA file: a self-hosted server's
generated certificate is self-signed (docs/media.md says how to pin it).
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    StreamDataReceived,
)

from vox.errors import VoxError
from vox.protocol.media import ALPN, MAX_DATAGRAM_BYTES

__all__ = ["MediaClient", "MediaClientError", "open_media_client"]


class MediaClientError(VoxError):
    """The media connection failed or was closed; ``reason`` is the server's close reason."""

    def __init__(self, message: str, error_code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.error_code = error_code
        self.reason = reason


class MediaClient:
    def __init__(self, host: str, port: int, *, verify: str | None = None) -> None:
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            max_datagram_frame_size=MAX_DATAGRAM_BYTES + 64,
            server_name=host,
        )
        if verify is None:
            config.verify_mode = ssl.CERT_NONE
        else:
            config.load_verify_locations(verify)
        self.addr = (host, port)
        self.quic = QuicConnection(configuration=config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        self.on_datagram: Callable[[bytes, float], None] = lambda data, now: None
        self.connected = trio.Event()
        self.closed = trio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._auth_reply = bytearray()
        self._auth_done = trio.Event()
        self._wake = trio.Event()
        self._timer_at = math.inf

    # -- I/O loop -------------------------------------------------------------------------------
    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.sock.connect(self.addr)
        self.quic.connect(self.addr, now=trio.current_time())
        await self._transmit()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer)
            task_status.started()
            while not self.closed.is_set():
                data = await self.sock.recv(65536)
                now = trio.current_time()
                self.quic.receive_datagram(data, self.addr, now)
                self._events(now)
                await self._transmit()
            nursery.cancel_scope.cancel()

    async def _timer(self) -> None:
        while not self.closed.is_set():
            deadline = self.quic.get_timer()
            self._timer_at = math.inf if deadline is None else deadline
            with trio.move_on_at(self._timer_at):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.quic.handle_timer(now)
                self._events(now)
            await self._transmit()

    def _events(self, now: float) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, DatagramFrameReceived):
                self.on_datagram(event.data, now)
            elif isinstance(event, HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, StreamDataReceived):
                self._auth_reply += event.data
                if b"\n" in self._auth_reply:
                    self._auth_done.set()
            elif isinstance(event, ConnectionTerminated):
                self.close_code, self.close_reason = event.error_code, event.reason_phrase
                self.closed.set()
                self.connected.set()
                self._auth_done.set()

    async def _transmit(self) -> None:
        for data, _addr in self.quic.datagrams_to_send(now=trio.current_time()):
            # UDP: the server is gone or the buffer is full; QUIC copes.
            with contextlib.suppress(OSError):
                await self.sock.send(data)
        deadline = self.quic.get_timer()
        if deadline is not None and deadline < self._timer_at:
            self._wake.set()

    # -- API ------------------------------------------------------------------------------------
    async def authenticate(self, token: str) -> None:
        """Present the media token; MediaClientError when the server refuses it."""
        await self.connected.wait()
        if self.closed.is_set():
            raise MediaClientError(
                "connection closed during the handshake", self.close_code, self.close_reason
            )
        stream = self.quic.get_next_available_stream_id()
        self.quic.send_stream_data(stream, token.encode("ascii") + b"\n")
        await self._transmit()
        await self._auth_done.wait()
        if self.closed.is_set() or bytes(self._auth_reply).split(b"\n")[0] != b"ok":
            raise MediaClientError("media token refused", self.close_code, self.close_reason)

    def send(self, datagram: bytes) -> None:
        """Queue one datagram; it leaves at the next ``flush`` (or with the next packet)."""
        self.quic.send_datagram_frame(datagram)

    async def flush(self) -> None:
        await self._transmit()

    async def close(self, reason: str = "bye") -> None:
        if not self.closed.is_set():
            self.quic.close(error_code=0, reason_phrase=reason)
            await self._transmit()


@asynccontextmanager
async def open_media_client(url: str, *, verify: str | None = None) -> AsyncIterator[MediaClient]:
    """Connect to a ``quic://host:port`` media URL; closed (and its tasks ended) on exit."""
    parts = urlsplit(url)
    if parts.scheme != "quic" or parts.hostname is None or parts.port is None:
        raise ValueError(f"not a quic://host:port URL: {url!r}")
    client = MediaClient(parts.hostname, parts.port, verify=verify)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._run)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await client.close()
                nursery.cancel_scope.cancel()
    finally:
        client.sock.close()
