"""One gateway connection = one nursery: a reader (which also keeps the heartbeat deadline) and
a writer. Shutdown reaches it through ``close_soon`` from the gateway transport.

Cancelling this nursery tears down the connection and everything it started, and nothing else.
What the client identified as lives in a GatewaySession (vox.nurseries.session) that outlives
the connection, so a dropped client can resume. Outbound frames go through a bounded queue
drained by the writer task, so a slow client never blocks whoever produced the event; a client
whose queue fills (``gateway_queue_frames`` frames or ``gateway_queue_bytes`` characters) is closed
with 4008 (its session keeps the events, so it can resume).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from vox.context import Context
from vox.errors import APIError, BrokerError, RateLimited
from vox.nurseries.admin_stream import admin_subscribe
from vox.nurseries.session import GatewaySession, SessionClosed, SessionRegistry
from vox.nurseries.voice_signaling import VOICE_REQUESTS, voice_request
from vox.protocol.gateway import (
    ClientFrame,
    CloseCode,
    GatewayProtocolError,
    control_frame,
    decode_client_frame,
)
from vox.services.auth import Identity
from vox.services.guild_objects import guild_object
from vox.services.presence import STATUSES, validate_activity
from vox.transports.ws_send import send_text_frames

log = logging.getLogger("vox.gateway")

# One socket write carries at most this much of a backlog (bounded so a big backlog does not
# build one huge buffer).
WRITE_BATCH_FRAMES = 64
WRITE_BATCH_CHARS = 256 * 1024
# Closes that end the session for good: a deliberate close by the client (1000), and the
# server refusing the client. After anything else (the network dropped, the client went silent
# or fell behind) the session stays resumable for the resume window.
FINAL_CLOSES = frozenset(
    {
        1000,
        CloseCode.UNKNOWN_TYPE,
        CloseCode.DECODE_ERROR,
        CloseCode.NOT_AUTHENTICATED,
        CloseCode.AUTHENTICATION_FAILED,
        CloseCode.ALREADY_AUTHENTICATED,
        CloseCode.VERSION_MISMATCH,
        CloseCode.SERVER_FULL,
        # The WebSocket layer refusing a frame (not UTF-8, over the size limit): a protocol
        # error like 4002, only caught before a frame reached the gateway.
        1007,
        1009,
    }
)
CLIENT_REQUESTS = (
    frozenset(
        {
            "subscribe",
            "unsubscribe",
            "typing",
            "stop_typing",
            "set_status",
            "set_activity",
            "mls_relay",
            "admin_subscribe",
        }
    )
    | VOICE_REQUESTS
)


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _peer_code(exc: ConnectionClosed) -> int:
    """The code the client closed with (it decides whether the session stays resumable);
    1006 when it went away without a close frame. The reader and the writer may each notice
    the close first, so both ask this."""
    code = exc.reason.code if exc.reason is not None else None
    return 1006 if code is None or code == 1005 else int(code)


def _unwrap_session_closed(exc: BaseException) -> SessionClosed | None:
    if isinstance(exc, SessionClosed):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _unwrap_session_closed(inner)
            if found is not None:
                return found
    return None


class GatewayConnection:
    def __init__(
        self,
        ctx: Context,
        ws: WebSocketConnection,
        conn_id: int,
        sessions: SessionRegistry,
        *,
        client_ip: str,
        header_token: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.ws = ws
        self.conn_id = conn_id
        self.sessions = sessions
        self.client_ip = client_ip
        self.header_token = header_token
        self.heartbeat_interval_s = ctx.config.heartbeat_interval_ms / 1000
        self.session: GatewaySession | None = None
        self._identified = False
        self._send, self._recv = trio.open_memory_channel[str](ctx.config.gateway_queue_frames)
        # Characters queued and not yet taken by the writer: frames vary in size, so their count
        # alone does not bound the memory a client that stops reading holds.
        self._queued_chars = 0
        self._queue_chars = ctx.config.gateway_queue_bytes
        self._last_heartbeat = trio.current_time()
        self._close: _Close | None = None
        self._closing = trio.Event()

    @property
    def identity(self) -> Identity | None:
        return self.session.identity if self.session else None

    @property
    def user_id(self) -> str | None:
        return self.session.user_id if self.session else None

    # -- outbound ---------------------------------------------------------------------------
    def enqueue(self, frame: str) -> None:
        """Queue a frame without waiting; a full queue means the client is too slow to keep."""
        # A single frame is always accepted into an empty queue, however large.
        if self._queued_chars and self._queued_chars + len(frame) > self._queue_chars:
            self.close_soon(CloseCode.RATE_LIMITED, "client too slow; reconnect and resume")
            return
        try:
            self._send.send_nowait(frame)
            self._queued_chars += len(frame)
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
                if self.ctx.draining.is_set():
                    self.close_soon(CloseCode.GOING_AWAY, "server shutting down")
                reading = trio.CancelScope()
                outer.start_soon(self._read_until_cancelled, reading)
                await self._closing.wait()
                reading.cancel()
                # The reader stops at its next checkpoint and enqueueing fails quietly from here.
                # Frames queued before the close (hello, ready, the last events) still go out,
                # briefly; a client closed for not reading gets none of them.
                self._send.close()
                slow = self._close is not None and self._close.code == CloseCode.RATE_LIMITED
                outer.cancel_scope.deadline = trio.current_time() + (0 if slow else 0.5)
        finally:
            if self._close is not None:
                code, reason = self._close.code, self._close.reason
            if self.ctx.voice is not None:
                self.ctx.voice.connection_closed(self.conn_id)  # its voice peer leaves
            self._release_session(code)
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

    def _release_session(self, code: int) -> None:
        session = self.session
        if session is None:
            return
        session.detach(self.enqueue)
        if session.ended is None and (code in FINAL_CLOSES or self.ctx.draining.is_set()):
            session.end(code, "connection closed")

    async def _read_until_cancelled(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._reader()

    async def _reader(self) -> None:
        """Read and dispatch frames. Waiting for the next frame is bounded by the heartbeat
        deadline: 4009 when no heartbeat arrived for 1.5 x the interval, 4003 when the client
        has not identified within ``gateway_identify_timeout_s`` (default: that same time;
        heartbeats alone do not keep it open)."""
        self.enqueue(control_frame("hello", {"heartbeat_interval_ms": self.ctx.config.heartbeat_interval_ms}))
        limit = 1.5 * self.heartbeat_interval_s
        identify_limit = self.ctx.config.gateway_identify_timeout_s or limit
        opened = trio.current_time()
        try:
            if self.header_token is not None:
                await self._identify(self.header_token)
            while True:
                deadline = self._last_heartbeat + limit if self._identified else opened + identify_limit
                # Only the wait is bounded: a frame being handled is never cut short.
                with trio.move_on_at(deadline) as waiting:
                    data = await self.ws.get_message()
                if not waiting.cancelled_caught:
                    await self._dispatch(decode_client_frame(data))
                elif not self._identified:
                    raise _Close(CloseCode.NOT_AUTHENTICATED, "identify timeout")
                elif trio.current_time() >= self._last_heartbeat + limit:
                    raise _Close(CloseCode.SESSION_TIMEOUT, "heartbeat timeout")
        except (GatewayProtocolError, _Close) as exc:
            self.close_soon(exc.code, exc.reason)
        except ConnectionClosed as exc:
            self.close_soon(_peer_code(exc), "")

    async def _writer(self) -> None:
        async with self._recv:
            async for frame in self._recv:  # ends once run() closed the send side and it drained
                # What queued up while the last write was in flight goes out in one write.
                batch, size = [frame], len(frame)
                while len(batch) < WRITE_BATCH_FRAMES and size < WRITE_BATCH_CHARS:
                    try:
                        more = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    size += len(more)
                self._queued_chars -= size
                try:
                    # Frames are str because the contract's frames are JSON *text*: trio-websocket
                    # sends bytes as binary frames.
                    await send_text_frames(self.ws, batch)
                except ConnectionClosed as exc:
                    self.close_soon(_peer_code(exc), "")
                    return
                self.ctx.metrics.gateway_events_sent.inc(len(batch))

    # -- frames -----------------------------------------------------------------------------
    async def _dispatch(self, frame: ClientFrame) -> None:
        d: dict[str, Any] = frame.d or {}
        if frame.type == "heartbeat":
            self._last_heartbeat = trio.current_time()
            self.enqueue(control_frame("heartbeat_ack"))
            return
        if frame.type == "identify":
            token = d.get("token")
            if not isinstance(token, str) or not token:
                raise _Close(CloseCode.DECODE_ERROR, "identify needs d.token")
            await self._identify(token)
            return
        if frame.type == "resume":
            await self._resume(d)
            return
        if self.session is None:
            raise _Close(CloseCode.NOT_AUTHENTICATED, "identify first")
        if frame.type in CLIENT_REQUESTS:
            await self._request(self.session, frame.type, d)
            return
        raise _Close(CloseCode.UNKNOWN_TYPE, f"{frame.type} is not supported by this server yet")

    async def _request(self, session: GatewaySession, type_: str, d: dict[str, Any]) -> None:
        if type_ in VOICE_REQUESTS:
            await voice_request(self.ctx, session.user_id, self.conn_id, self.enqueue, type_, d)
        elif type_ in {"subscribe", "unsubscribe", "typing", "stop_typing"}:
            channel_id = d.get("channel_id")
            if not isinstance(channel_id, str) or not 0 < len(channel_id) <= 64:
                raise _Close(CloseCode.DECODE_ERROR, f"{type_} needs d.channel_id")
            if type_ == "subscribe":
                # A channel the client cannot see is ignored, as if it did not exist.
                session.subscribe(channel_id)
            elif type_ == "unsubscribe":
                session.unsubscribe(channel_id)
            elif type_ == "typing":
                await self._limited("typing", session.user_id)
                await session.typing(channel_id)
            else:
                await session.stop_typing(channel_id)
        elif type_ == "set_status":
            status = d.get("status")
            if status not in STATUSES:
                raise _Close(CloseCode.DECODE_ERROR, f"set_status needs d.status in {', '.join(STATUSES)}")
            await self._limited("presence", session.user_id)
            await self.ctx.presence.set_status(session.user_id, status)
        elif type_ == "set_activity":
            try:
                activity = validate_activity(d.get("activity"))
            except ValueError as exc:
                raise _Close(CloseCode.DECODE_ERROR, f"set_activity: {exc}") from None
            await self._limited("presence", session.user_id)
            await self.ctx.presence.set_activity(session.user_id, activity)
        elif type_ == "admin_subscribe":
            await self._limited("presence", session.user_id)
            await admin_subscribe(self.ctx, session, self.enqueue)
        elif type_ == "mls_relay":
            await self._limited("mls_relay", session.user_id)
            try:
                await self.ctx.mls.relay(session.user_id, d)
            except APIError as exc:
                # A refused relay (bad payload, a recipient outside the channel) is answered and
                # the connection stays: group membership can race with channel membership.
                group_id = d.get("group_id") if isinstance(d.get("group_id"), str) else None
                self.enqueue(control_frame("error", {"request": type_, "group_id": group_id, **exc.body()}))

    async def _limited(self, klass: str, subject: str) -> None:
        try:
            await self.ctx.limiter.take(klass, subject)
        except RateLimited:
            raise _Close(CloseCode.RATE_LIMITED, f"too many {klass} updates") from None

    async def _authenticate(self, token: str) -> Identity:
        if self.session is not None:
            raise _Close(CloseCode.ALREADY_AUTHENTICATED, "already identified")
        await self._limited("gateway_identify", self.client_ip)
        try:
            return await self.ctx.auth.authenticate(token)
        except APIError as exc:
            raise _Close(CloseCode.AUTHENTICATION_FAILED, exc.message) from None

    def _attach(self, session: GatewaySession) -> None:
        self.session = session
        session.attach(self.enqueue, self.close_soon)
        self._last_heartbeat = trio.current_time()
        self._identified = True

    async def _identify(self, token: str) -> None:
        identity = await self._authenticate(token)
        try:
            session, guilds = await self.sessions.start(identity)
        except BaseException as exc:
            closed = _unwrap_session_closed(exc)
            if closed is not None:
                raise _Close(closed.code, closed.reason) from None
            if isinstance(exc, BrokerError) or (
                isinstance(exc, BaseExceptionGroup) and exc.subgroup(BrokerError) is not None
            ):
                raise _Close(CloseCode.UNKNOWN_ERROR, "event stream unavailable") from None
            raise
        # ready goes out before any event of the session: the queue keeps that order, and events
        # the session collected before this connection attached follow ready at once.
        self.enqueue(
            control_frame(
                "ready",
                {
                    "session_id": session.session_id,
                    "user_id": identity.user_id,
                    "guilds": [guild_object(g) for g in guilds],
                    "heartbeat_interval_ms": self.ctx.config.heartbeat_interval_ms,
                },
            )
        )
        for frame in session.replay_after(0) or []:
            self.enqueue(frame)
        self._attach(session)
        log.info("gateway identified", extra={"fields": {"conn": self.conn_id, "user_id": identity.user_id}})

    async def _resume(self, d: dict[str, Any]) -> None:
        token, session_id, last_seq = d.get("token"), d.get("session_id"), d.get("last_seq")
        if not isinstance(token, str) or not isinstance(session_id, str) or type(last_seq) is not int:
            raise _Close(CloseCode.DECODE_ERROR, "resume needs d.token, d.session_id and d.last_seq")
        identity = await self._authenticate(token)
        session = self.sessions.get(session_id)
        if session is None and self.sessions.handoff is not None:
            # Held by another node of the deployment: it hands the session over (or 4009).
            session = await self.sessions.handoff.take_over(identity, session_id, last_seq)
        if session is None or session.ended is not None or session.identity != identity:
            raise _Close(CloseCode.SESSION_TIMEOUT, "session cannot be resumed; identify again")
        frames = session.replay_after(last_seq)
        if frames is None:
            session.end()
            raise _Close(CloseCode.SESSION_TIMEOUT, "missed events are no longer kept; identify again")
        for frame in frames:
            self.enqueue(frame)
        self.enqueue(control_frame("resumed", {"session_id": session.session_id, "replayed": len(frames)}))
        self._attach(session)
        log.info(
            "gateway resumed",
            extra={"fields": {"conn": self.conn_id, "user_id": identity.user_id, "replayed": len(frames)}},
        )
