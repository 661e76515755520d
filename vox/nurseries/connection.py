"""One gateway connection = one nursery: reader, writer, heartbeat watchdog and drain watcher.

Cancelling this nursery tears down the connection and everything it started, and nothing else.
Outbound frames go through a bounded queue drained by the writer task, so a slow client never
blocks whoever produced the event; a client whose queue fills is closed (it can resume).
"""

from __future__ import annotations

import logging
import uuid

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from vox.context import Context
from vox.errors import APIError, RateLimited, SubscriberLagged
from vox.protocol.gateway import (
    INTERNAL_PREFIX,
    ClientFrame,
    CloseCode,
    Event,
    GatewayProtocolError,
    control_frame,
    decode_client_frame,
    open_envelope,
)
from vox.services.auth import Identity
from vox.services.timefmt import iso

log = logging.getLogger("vox.gateway")

OUTBOUND_QUEUE = 512


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class GatewayConnection:
    def __init__(
        self,
        ctx: Context,
        ws: WebSocketConnection,
        conn_id: int,
        *,
        client_ip: str,
        header_token: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.ws = ws
        self.conn_id = conn_id
        self.client_ip = client_ip
        self.header_token = header_token
        self.heartbeat_interval_s = ctx.config.heartbeat_interval_ms / 1000
        self.identity: Identity | None = None
        self.session_id = str(uuid.uuid4())  # the gateway session named in ready (for resume)
        self.seq = 0
        self._identified = trio.Event()
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
            async with trio.open_nursery() as outer:
                outer.start_soon(self._writer)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watchdog)
                    nursery.start_soon(self._drain_watch)
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._events)
                    await self._closing.wait()
                    nursery.cancel_scope.cancel()
                # Nothing produces frames any more. Frames queued before the close (hello,
                # ready, the last events) still go out, briefly; a client closed for not
                # reading gets none of them.
                self._send.close()
                slow = self._close is not None and self._close.code == CloseCode.RATE_LIMITED
                outer.cancel_scope.deadline = trio.current_time() + (0 if slow else 0.5)
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

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity else None

    async def _reader(self) -> None:
        self.enqueue(control_frame("hello", {"heartbeat_interval_ms": self.ctx.config.heartbeat_interval_ms}))
        if self.header_token is not None:
            try:
                await self._identify(self.header_token)
            except _Close as exc:
                self.close_soon(exc.code, exc.reason)
                return
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
            async for frame in self._recv:  # ends once run() closed the send side and it drained
                try:
                    await self.ws.send_message(frame)
                except ConnectionClosed:
                    self.close_soon(1000, "")
                    return
                self.ctx.metrics.gateway_events_sent.inc()

    async def _watchdog(self) -> None:
        """Close with 4009 when no heartbeat arrived for 1.5 x the interval, and with 4003 when
        the client has not identified within that time (heartbeats alone do not keep it open)."""
        limit = 1.5 * self.heartbeat_interval_s
        with trio.move_on_after(limit):
            await self._identified.wait()
        if not self._identified.is_set():
            self.close_soon(CloseCode.NOT_AUTHENTICATED, "identify timeout")
            return
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
    async def _events(self) -> None:
        """Forward broker events for this user (and their guilds) once identified."""
        await self._identified.wait()
        assert self.identity is not None
        topics = [f"user:{self.identity.user_id}"] + [f"guild:{gid}" for gid in self._guild_ids]
        try:
            async with self.ctx.broker.subscribe(topics) as sub:
                # A revocation published between authenticate() and this subscription would
                # have been missed: look once more now that events are flowing.
                state = await self.ctx.store.accounts.session_state(self.identity.session_id)
                if state is None or state["revoked_at"] is not None:
                    self.close_soon(CloseCode.AUTHENTICATION_FAILED, "session revoked")
                    return
                async for message in sub:
                    self._on_event(open_envelope(message.payload))
        except SubscriberLagged:
            self.close_soon(CloseCode.RATE_LIMITED, "fell behind the event stream; reconnect and resume")

    def _on_event(self, event: Event) -> None:
        if event.type.startswith(INTERNAL_PREFIX):
            if event.type == "_session_revoked" and self.identity is not None:
                revoked = msgspec.json.decode(event.d_json).get("session_id")
                if revoked == self.identity.session_id:
                    self.close_soon(CloseCode.AUTHENTICATION_FAILED, "session revoked")
            return
        self.seq += 1
        self.enqueue(event.frame(self.seq))

    # -- frames -----------------------------------------------------------------------------
    async def _dispatch(self, frame: ClientFrame) -> None:
        if frame.type == "heartbeat":
            self._last_heartbeat = trio.current_time()
            self.enqueue(control_frame("heartbeat_ack"))
            return
        if frame.type == "identify":
            token = (frame.d or {}).get("token")
            if not isinstance(token, str) or not token:
                raise _Close(CloseCode.DECODE_ERROR, "identify needs d.token")
            await self._identify(token)
            return
        if frame.type == "resume":
            # No resumable session survives in this version: the client starts afresh.
            raise _Close(CloseCode.SESSION_TIMEOUT, "session cannot be resumed; identify again")
        if self.identity is None:
            raise _Close(CloseCode.NOT_AUTHENTICATED, "identify first")
        raise _Close(CloseCode.UNKNOWN_TYPE, f"{frame.type} is not supported by this server yet")

    async def _identify(self, token: str) -> None:
        if self.identity is not None:
            raise _Close(CloseCode.ALREADY_AUTHENTICATED, "already identified")
        try:
            await self.ctx.limiter.take("gateway_identify", self.client_ip)
        except RateLimited:
            raise _Close(CloseCode.RATE_LIMITED, "too many identify attempts") from None
        try:
            identity = await self.ctx.auth.authenticate(token)
        except APIError as exc:
            raise _Close(CloseCode.AUTHENTICATION_FAILED, exc.message) from None
        guilds = await self.ctx.store.accounts.user_guilds(identity.user_id)
        self._guild_ids = [g["id"] for g in guilds]
        self.identity = identity
        self._last_heartbeat = trio.current_time()
        self.enqueue(
            control_frame(
                "ready",
                {
                    "session_id": self.session_id,
                    "user_id": identity.user_id,
                    "guilds": [
                        {
                            "id": g["id"],
                            "name": g["name"],
                            "owner_id": g["owner_id"],
                            "icon": g["icon"],
                            "created_at": iso(g["created_at"]),
                        }
                        for g in guilds
                    ],
                    "heartbeat_interval_ms": self.ctx.config.heartbeat_interval_ms,
                },
            )
        )
        self._identified.set()
        log.info("gateway identified", extra={"fields": {"conn": self.conn_id, "user_id": identity.user_id}})
