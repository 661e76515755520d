"""One gateway connection = one nursery: reader, writer, heartbeat watchdog and drain watcher.

Cancelling this nursery tears down the connection and everything it started, and nothing else.
Outbound frames go through a bounded queue drained by the writer task, so a slow client never
blocks whoever produced the event; a client whose queue fills is closed (it can resume).
"""

from __future__ import annotations

import logging

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from vox.context import Context
from vox.protocol.gateway import (
    ClientFrame,
    CloseCode,
    GatewayProtocolError,
    control_frame,
    decode_client_frame,
)

log = logging.getLogger("vox.gateway")

OUTBOUND_QUEUE = 512
# Frames a client may send before it identified (identify itself, heartbeats).
PRE_AUTH_TYPES = frozenset({"identify", "resume", "heartbeat"})


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class GatewayConnection:
    def __init__(self, ctx: Context, ws: WebSocketConnection, conn_id: int) -> None:
        self.ctx = ctx
        self.ws = ws
        self.conn_id = conn_id
        self.heartbeat_interval_s = ctx.config.heartbeat_interval_ms / 1000
        self.user_id: str | None = None
        self._send, self._recv = trio.open_memory_channel[str | bytes](OUTBOUND_QUEUE)
        self._last_heartbeat = trio.current_time()
        self._close: _Close | None = None
        self._closing = trio.Event()

    # -- outbound ---------------------------------------------------------------------------
    def enqueue(self, frame: str | bytes) -> None:
        """Queue a frame without waiting; a full queue means the client is too slow to keep."""
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            self.close_soon(CloseCode.RATE_LIMITED, "client too slow; reconnect and resume")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def close_soon(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = _Close(code, reason)
            self._closing.set()

    # -- tasks ------------------------------------------------------------------------------
    async def run(self) -> None:
        code, reason = 1000, ""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._drain_watch)
                nursery.start_soon(self._reader)
                await self._closing.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self._close is not None:
                code, reason = self._close.code, self._close.reason
            with trio.move_on_after(2) as cleanup:
                cleanup.shield = True
                await self.ws.aclose(code, reason)
            self.ctx.metrics.gateway_closes.labels(str(code)).inc()
            log.info(
                "gateway connection closed",
                extra={
                    "fields": {"conn": self.conn_id, "user_id": self.user_id, "code": code, "reason": reason}
                },
            )

    async def _reader(self) -> None:
        self.enqueue(control_frame("hello", {"heartbeat_interval_ms": self.ctx.config.heartbeat_interval_ms}))
        try:
            while True:
                data = await self.ws.get_message()
                try:
                    frame = decode_client_frame(data)
                    await self._dispatch(frame)
                except GatewayProtocolError as exc:
                    self.close_soon(exc.code, exc.reason)
                    return
                except _Close as exc:
                    self.close_soon(exc.code, exc.reason)
                    return
        except ConnectionClosed:
            self.close_soon(1000, "")

    async def _writer(self) -> None:
        async with self._recv:
            async for frame in self._recv:
                try:
                    await self.ws.send_message(frame)
                except ConnectionClosed:
                    self.close_soon(1000, "")
                    return
                self.ctx.metrics.gateway_events_sent.inc()

    async def _watchdog(self) -> None:
        """Close with 4009 when no heartbeat arrived for 1.5 x the interval."""
        limit = 1.5 * self.heartbeat_interval_s
        while True:
            deadline = self._last_heartbeat + limit
            if trio.current_time() >= deadline:
                self.close_soon(CloseCode.SESSION_TIMEOUT, "heartbeat timeout")
                return
            await trio.sleep_until(deadline)

    async def _drain_watch(self) -> None:
        await self.ctx.draining.wait()
        self.close_soon(CloseCode.GOING_AWAY, "server shutting down")

    # -- frames -----------------------------------------------------------------------------
    async def _dispatch(self, frame: ClientFrame) -> None:
        if frame.type == "heartbeat":
            self._last_heartbeat = trio.current_time()
            self.enqueue(control_frame("heartbeat_ack"))
            return
        if self.user_id is None and frame.type not in PRE_AUTH_TYPES:
            raise _Close(CloseCode.NOT_AUTHENTICATED, "identify first")
        raise _Close(CloseCode.NOT_AUTHENTICATED, "authentication is not enabled on this server yet")
