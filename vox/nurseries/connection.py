"""One gateway connection = one nursery: reader, writer, heartbeat watchdog and drain watcher.

Cancelling this nursery tears down the connection and everything it started, and nothing else.
Outbound frames go through a bounded queue drained by the writer task, so a slow client never
blocks whoever produced the event; a client whose queue fills is closed (it can resume).

Guild delivery: once identified, the connection is subscribed to ``user:{id}``, to
``guild:{gid}`` for each guild of the user, and to ``channel:{cid}`` for each channel it may view;
it keeps, per guild, the set of channel ids it may view. Public events on those topics are
forwarded as they are. Internal guild events (vox.protocol.guild_events) change that state: a
join subscribes, a leave/kick/ban/guild deletion unsubscribes at once, and a channel or
permission change makes the connection recompute what it may view (one permission load) and
tell its client channel_create / channel_update / channel_delete as they apply to it.
"""

from __future__ import annotations

import logging
import uuid

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from vox.context import Context
from vox.errors import APIError, BrokerError, RateLimited, StorageError, SubscriberLagged
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
from vox.protocol.guild_events import (
    GUILD_ACCESS,
    GUILD_DELETED,
    GUILD_JOINED,
    GUILD_LEFT,
    decode_access_change,
    decode_deleted_guild,
    decode_guild_ref,
    decode_joined,
)
from vox.pubsub import Subscription
from vox.services.auth import Identity
from vox.services.guild_events import channel_topic, guild_topic, user_topic
from vox.services.guild_objects import channel_object, guild_object
from vox.storage.base import Row

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
        self._sub: Subscription | None = None
        # guild id -> ids of the channels of it this connection may view (and is subscribed to).
        self._guilds: dict[str, set[str]] = {}

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
            # One subscription for the connection's whole life: identify adds its topics before
            # it answers ready, so nothing published after ready can be missed.
            async with self.ctx.broker.subscribe() as sub, trio.open_nursery() as outer:
                self._sub = sub
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
        except BrokerError:
            self.close_soon(CloseCode.UNKNOWN_ERROR, "event stream unavailable")
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
        """Forward broker events for this user, their guilds and visible channels once identified."""
        await self._identified.wait()
        assert self._sub is not None
        try:
            async for message in self._sub:
                event = open_envelope(message.payload)
                if event.type.startswith(INTERNAL_PREFIX):
                    await self._on_internal(event)
                else:
                    self._emit(event)
        except SubscriberLagged:
            self.close_soon(CloseCode.RATE_LIMITED, "fell behind the event stream; reconnect and resume")
        except (BrokerError, StorageError) as exc:
            log.warning(
                "gateway event stream failed",
                extra={"fields": {"conn": self.conn_id, "error": type(exc).__name__}},
            )
            self.close_soon(CloseCode.UNKNOWN_ERROR, "event stream failed; reconnect")

    def _emit(self, event: Event) -> None:
        self.seq += 1
        self.enqueue(event.frame(self.seq))

    async def _on_internal(self, event: Event) -> None:
        if event.type == "_session_revoked" and self.identity is not None:
            revoked = msgspec.json.decode(event.d_json).get("session_id")
            if revoked == self.identity.session_id:
                self.close_soon(CloseCode.AUTHENTICATION_FAILED, "session revoked")
        elif event.type == GUILD_ACCESS:
            await self._access_changed(event)
        elif event.type == GUILD_JOINED:
            await self._joined(event)
        elif event.type == GUILD_LEFT:
            await self._dropped(decode_guild_ref(event.d_json).guild_id, Event("member_leave", event.d_json))
        elif event.type == GUILD_DELETED:
            await self._dropped(decode_deleted_guild(event.d_json).id, Event("guild_update", event.d_json))

    # -- guild state ------------------------------------------------------------------------
    async def _visible(self, guild_id: str) -> dict[str, Row] | None:
        assert self.identity is not None
        rows = await self.ctx.permissions.visible_channels(self.identity.user_id, guild_id)
        return None if rows is None else {ch["id"]: ch for ch in rows}

    async def _resubscribe(self, guild_id: str, before: set[str], after: set[str]) -> None:
        assert self._sub is not None
        gone = before - after
        if gone:
            await self._sub.remove(*(channel_topic(c) for c in gone))
        new = after - before
        if new:
            await self._sub.add(*(channel_topic(c) for c in new))
        self._guilds[guild_id] = after

    def _announce(
        self,
        guild_id: str,
        told: set[str],
        after: set[str],
        raw: dict[str, bytes],
        rows: dict[str, Row],
    ) -> None:
        """Tell the client the channels it now sees (``after``) versus what it was told
        (``told``), with pre-encoded objects when the event carried them."""
        order = [*raw, *(c for c in rows if c not in raw)]
        order += sorted((told | after) - set(order))
        for cid in order:
            if cid in told and cid not in after:
                d = raw.get(cid) or msgspec.json.encode({"id": cid, "guild_id": guild_id})
                self._emit(Event("channel_delete", d))
        for cid in order:
            if cid in after and cid not in told:
                d = raw.get(cid) or msgspec.json.encode(channel_object(rows[cid]))
                self._emit(Event("channel_create", d))

    async def _access_changed(self, event: Event) -> None:
        change = decode_access_change(event.d_json)
        guild_id = change.guild_id
        before = self._guilds.get(guild_id)
        if before is None:
            return
        deleted = set(change.deleted)
        rows: dict[str, Row] = {}
        if change.reload:
            fresh = await self._visible(guild_id)
            if fresh is None:
                return  # no longer a member: the _guild_left that follows drops the guild
            rows = fresh
            after = set(rows) - deleted
        else:
            after = before - deleted
        raw = {cid: bytes(obj) for cid, obj in change.channels.items()}
        self._announce(guild_id, before, after, raw, rows)
        for cid in change.updated:
            if cid in before and cid in after and cid in raw:
                self._emit(Event("channel_update", raw[cid]))
        await self._resubscribe(guild_id, before, after)

    async def _joined(self, event: Event) -> None:
        assert self._sub is not None
        joined = decode_joined(event.d_json)
        guild_id = joined.guild_id
        known = guild_id in self._guilds
        if not known:
            await self._sub.add(guild_topic(guild_id))
        # Computed after subscribing to the guild, so any later change reaches this connection.
        fresh = await self._visible(guild_id)
        if fresh is None:
            if not known:
                await self._sub.remove(guild_topic(guild_id))
            return
        self._emit(Event("member_join", event.d_json))
        told = {c.id for c in joined.guild.channels}
        after = set(fresh)
        self._announce(guild_id, told, after, {}, fresh)
        await self._resubscribe(guild_id, self._guilds.get(guild_id, set()), after)

    async def _dropped(self, guild_id: str, notice: Event) -> None:
        """Leave, kick, ban or deletion: stop everything from the guild at once (buffered events
        of its topics included), then tell the client."""
        assert self._sub is not None
        channels = self._guilds.pop(guild_id, None)
        if channels is None:
            return
        await self._sub.remove(guild_topic(guild_id), *(channel_topic(c) for c in channels))
        self._emit(notice)

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
        try:
            guilds = await self._subscribe_all(identity)
        except BrokerError:
            raise _Close(CloseCode.UNKNOWN_ERROR, "event stream unavailable") from None
        self.identity = identity
        self._last_heartbeat = trio.current_time()
        self.enqueue(
            control_frame(
                "ready",
                {
                    "session_id": self.session_id,
                    "user_id": identity.user_id,
                    "guilds": [guild_object(g) for g in guilds],
                    "heartbeat_interval_ms": self.ctx.config.heartbeat_interval_ms,
                },
            )
        )
        self._identified.set()
        log.info("gateway identified", extra={"fields": {"conn": self.conn_id, "user_id": identity.user_id}})

    async def _subscribe_all(self, identity: Identity) -> list[Row]:
        """Subscribe to the user, their guilds and the channels they may view; return the guilds.

        Each subscription is in place before the state it guards is read, so a change that
        commits meanwhile is either in what is read or arrives as an event afterwards.
        """
        assert self._sub is not None
        user_id = identity.user_id
        await self._sub.add(user_topic(user_id))
        # A revocation published before that subscription would have been missed.
        state = await self.ctx.store.accounts.session_state(identity.session_id)
        if state is None or state["revoked_at"] is not None:
            raise _Close(CloseCode.AUTHENTICATION_FAILED, "session revoked")
        early = set(await self.ctx.store.guilds.guild_ids_of(user_id))
        if early:
            await self._sub.add(*(guild_topic(g) for g in early))
        visible = await self.ctx.permissions.visible_guilds(user_id)
        now = {g["id"] for g, _ in visible}
        if early - now:
            await self._sub.remove(*(guild_topic(g) for g in early - now))
        if now - early:
            await self._sub.add(*(guild_topic(g) for g in now - early))
        channels = [ch["id"] for _, chs in visible for ch in chs]
        if channels:
            await self._sub.add(*(channel_topic(c) for c in channels))
        self._guilds = {g["id"]: {ch["id"] for ch in chs} for g, chs in visible}
        return [g for g, _ in visible]
