"""Gateway sessions: what a client identified as, and the event stream it is owed.

A session outlives its WebSocket. It owns the Broker subscription, the ``seq`` counter, a
replay ring of the last ``REPLAY_EVENTS`` events, the guild/channel visibility state, typing
state and its share of the user's presence. Sessions run in the registry's nursery (not the
connection's): when a connection drops, its session keeps collecting events for
``RESUME_WINDOW_S`` so that a client which resumes with ``last_seq`` receives every event it
missed, in order; after that the session ends. Its id names the node holding it; a resume that
reaches another node of the deployment takes it over from there (vox.nurseries.handoff).

Guild delivery: the session is subscribed to ``user:{id}``, to ``guild:{gid}`` for each guild of
the user, to ``channel:{cid}`` for each channel it may view and for each of its DMs, and keeps,
per guild, the set of channel ids it may view. Public events on those topics are forwarded as
they are. Internal events (vox.protocol.guild_events, ``_session_revoked``, ``_dm_created``)
change that state: a join subscribes, a leave/kick/ban/guild deletion unsubscribes at once, and
a channel or permission change makes the session recompute what it may view (one permission
load) and tell its client channel_create / channel_update / channel_delete as they apply to it.
Typing events are forwarded only for channels the client subscribed to with ``subscribe``. DM
message events come through ``user:{id}`` (vox.services.messages), DM typing through the channel.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from vox.context import Context
from vox.errors import APIError, BrokerError, StorageError, SubscriberLagged
from vox.protocol.cluster import HANDOFF_MARK, new_session_id
from vox.protocol.gateway import CloseCode, EnvelopeFrames, Event, encode_event, envelope, open_envelope
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
from vox.protocol.permissions import Permission
from vox.pubsub import Message, Subscription
from vox.services.admin_events import ADMIN_TOPIC
from vox.services.auth import Identity
from vox.services.dms import DM_CREATED
from vox.services.guild_events import channel_topic, guild_topic, user_topic
from vox.services.guild_objects import channel_object
from vox.services.permissions import require
from vox.storage.base import Row

if TYPE_CHECKING:
    from vox.nurseries.handoff import SessionTaker

log = logging.getLogger("vox.gateway")

REPLAY_EVENTS = 1000
RESUME_WINDOW_S = 60.0
TYPING_TTL_S = 10.0
# A client refreshes typing every few seconds; re-announcing more often than this is noise.
TYPING_REPUBLISH_S = 5.0
TYPING_EVENTS = frozenset({"typing_start", "typing_stop"})
PRESENCE_PREFIXES = (b"presence_update\x00", b"rich_presence_update\x00")


class SessionClosed(Exception):
    """The session ended for good; the attached connection closes with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


Outlet = Callable[[str], None]
Closer = Callable[[int, str], None]


class GatewaySession:
    def __init__(
        self,
        ctx: Context,
        identity: Identity,
        registry: SessionRegistry,
        frames: EnvelopeFrames | None = None,
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.registry = registry
        self.frames = frames or EnvelopeFrames()
        self.session_id = new_session_id(registry.node_id)
        self.seq = 0
        # The last events in seq order (the newest has ``self.seq``). A broker Message is kept as
        # it is (shared by every subscriber, so the ring costs a pointer per event) and framed
        # again only when replayed.
        self.ring: deque[Message | Event] = deque(maxlen=REPLAY_EVENTS)
        self.guilds: dict[str, set[str]] = {}
        self.dms: set[str] = set()
        self.typing_subscriptions: set[str] = set()
        self._typing_until: dict[str, float] = {}
        self._typing_announced: dict[str, float] = {}
        self._outlet: Outlet | None = None
        self._closer: Closer | None = None
        self._sub: Subscription | None = None
        self._scope = trio.CancelScope()
        self.ended: SessionClosed | None = None
        self._busy = False
        self._own_topic = user_topic(identity.user_id)
        self._own_id_json = b'"user_id":"' + identity.user_id.encode() + b'"'
        # Epoch ms until which admin_event frames are delivered (admin_subscribe; 0: never).
        self.admin_until_ms = 0
        # While a handoff to or from another node is under way (vox.nurseries.handoff): the gate
        # takes every event instead of the client, and on_mark hears the handoff's mark.
        self.gate: Callable[[Message | Event], None] | None = None
        self.on_mark: Callable[[Event], None] | None = None

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def is_typing(self) -> bool:
        return bool(self._typing_until)

    # -- attachment -------------------------------------------------------------------------
    def attach(self, outlet: Outlet, closer: Closer) -> None:
        if self._closer is not None:
            self._closer(CloseCode.SESSION_TIMEOUT, "session resumed elsewhere")
        self._outlet, self._closer = outlet, closer
        self.registry.detached.pop(self, None)

    def detach(self, outlet: Outlet) -> None:
        """The connection is gone; keep collecting events for the resume window."""
        if self._outlet is outlet:
            self._outlet = self._closer = None
            self.registry.detached[self] = trio.current_time() + RESUME_WINDOW_S

    def end(self, code: int = CloseCode.SESSION_TIMEOUT, reason: str = "session ended") -> None:
        if self.ended is None:
            self.ended = SessionClosed(code, reason)
        if self._closer is not None:
            self._closer(code, reason)
        self._scope.cancel()

    def replay_after(self, last_seq: int) -> list[str] | None:
        """Frames after ``last_seq``, or None when some of them are no longer kept."""
        if last_seq > self.seq or last_seq < 0:
            return None
        missed = self.seq - last_seq
        if missed > len(self.ring):
            return None
        items = list(self.ring)[len(self.ring) - missed :]
        return [self._frame(item, seq) for seq, item in enumerate(items, start=last_seq + 1)]

    def _frame(self, item: Message | Event, seq: int) -> str:
        if isinstance(item, Message):
            return self.frames.frame(item.payload, seq)
        return item.text_frame(seq)

    # -- the session task -------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[list[Row]] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            try:
                async with self.ctx.broker.subscribe() as sub:
                    self._sub = sub
                    guilds = await self._subscribe_all()
                    await self.ctx.presence.connected(self.user_id)
                    # From here public events go straight from the publisher to the client's
                    # queue, without waking this task; it handles internal ones (and whatever
                    # queued behind them).
                    sub.set_inline(self._offer_inline)
                    try:
                        task_status.started(guilds)
                        await self._pump(sub)
                    finally:
                        with trio.move_on_after(2) as cleanup:
                            cleanup.shield = True
                            await self._stop_all_typing()
                            await self.ctx.presence.disconnected(self.user_id)
            except SubscriberLagged:
                self.end(CloseCode.RATE_LIMITED, "fell behind the event stream; identify again")
            except (BrokerError, StorageError) as exc:
                log.warning("gateway session failed", extra={"fields": {"error": type(exc).__name__}})
                self.end(CloseCode.UNKNOWN_ERROR, "event stream failed; identify again")
            finally:
                self.registry.forget(self)

    def expire(self) -> None:
        """Called by the registry once the resume window passed with no connection attached."""
        log.info("gateway session expired", extra={"fields": {"user_id": self.user_id}})
        self.end()

    async def _pump(self, sub: Subscription) -> None:
        async for message in sub:
            if message.payload.startswith(b"_"):
                # Until this is handled, later events queue behind it (the state it changes
                # decides what they mean), so inline delivery pauses.
                self._busy = True
                try:
                    await self._on_internal(open_envelope(message.payload))
                finally:
                    self._busy = False
                continue
            self._forward(message)

    def _offer_inline(self, message: Message) -> bool:
        if self._busy or message.payload.startswith(b"_"):
            return False
        self._forward(message)
        return True

    def _forward(self, message: Message) -> None:
        if self.admin_until_ms and message.topic == ADMIN_TOPIC:
            # The stream is for elevated admins: once the elevation has lapsed, nothing more.
            if time.time() * 1000 >= self.admin_until_ms:
                return
        elif message.payload.startswith(b"typing_"):
            channel = message.topic.partition(":")[2]
            if channel not in self.typing_subscriptions:
                return
        elif (
            message.payload.startswith(PRESENCE_PREFIXES)
            and message.topic != self._own_topic
            and self._own_id_json in message.payload
        ):
            # One's own presence arrives through one's guilds too; only the user topic
            # (changes made on another device) is meant for oneself.
            return
        self._deliver(message)

    def _deliver(self, item: Message | Event) -> None:
        if self.gate is not None:
            self.gate(item)
            return
        self.seq += 1
        self.ring.append(item)
        if self._outlet is not None:
            self._outlet(self._frame(item, self.seq))

    def emit(self, event: Message | Event) -> None:
        self._deliver(event)

    # -- internal events --------------------------------------------------------------------
    async def _on_internal(self, event: Event) -> None:
        if event.type == HANDOFF_MARK:
            if self.on_mark is not None:
                self.on_mark(event)
        elif event.type == "_session_revoked":
            if msgspec.json.decode(event.d_json).get("session_id") == self.identity.session_id:
                self.end(CloseCode.AUTHENTICATION_FAILED, "session revoked")
        elif event.type == GUILD_ACCESS:
            await self._access_changed(event)
        elif event.type == GUILD_JOINED:
            await self._joined(event)
        elif event.type == GUILD_LEFT:
            await self._dropped(decode_guild_ref(event.d_json).guild_id, Event("member_leave", event.d_json))
        elif event.type == GUILD_DELETED:
            await self._dropped(decode_deleted_guild(event.d_json).id, Event("guild_update", event.d_json))
        elif event.type == DM_CREATED:
            channel_id = msgspec.json.decode(event.d_json).get("id")
            if isinstance(channel_id, str) and channel_id not in self.dms:
                assert self._sub is not None
                await self._sub.add(channel_topic(channel_id))
                self.dms.add(channel_id)
                self.emit(Event("dm_create", event.d_json))

    async def _subscribe_all(self) -> list[Row]:
        """Subscribe to the user, their guilds, DMs and the channels they may view; return the
        guilds. Each subscription is in place before the state it guards is read, so a change
        that commits meanwhile is either in what is read or arrives as an event afterwards."""
        assert self._sub is not None
        user_id = self.user_id
        await self._sub.add(user_topic(user_id))
        # A revocation published before that subscription would have been missed.
        state = await self.ctx.store.accounts.session_state(self.identity.session_id)
        if state is None or state["revoked_at"] is not None:
            raise SessionClosed(CloseCode.AUTHENTICATION_FAILED, "session revoked")
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
        self.dms = set(await self.ctx.store.accounts.dm_channel_ids(user_id))
        topics = [channel_topic(c) for c in [*channels, *self.dms]]
        if topics:
            await self._sub.add(*topics)
        self.guilds = {g["id"]: {ch["id"] for ch in chs} for g, chs in visible}
        return [g for g, _ in visible]

    async def _visible(self, guild_id: str) -> dict[str, Row] | None:
        rows = await self.ctx.permissions.visible_channels(self.user_id, guild_id)
        return None if rows is None else {ch["id"]: ch for ch in rows}

    async def _resubscribe(self, guild_id: str, before: set[str], after: set[str]) -> None:
        assert self._sub is not None
        gone = before - after
        if gone:
            await self._sub.remove(*(channel_topic(c) for c in gone))
            self.typing_subscriptions -= gone
        new = after - before
        if new:
            await self._sub.add(*(channel_topic(c) for c in new))
        self.guilds[guild_id] = after

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
                self.emit(Event("channel_delete", d))
        for cid in order:
            if cid in after and cid not in told:
                d = raw.get(cid) or msgspec.json.encode(channel_object(rows[cid]))
                self.emit(Event("channel_create", d))

    async def _access_changed(self, event: Event) -> None:
        change = decode_access_change(event.d_json)
        guild_id = change.guild_id
        before = self.guilds.get(guild_id)
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
                self.emit(Event("channel_update", raw[cid]))
        await self._resubscribe(guild_id, before, after)

    async def _joined(self, event: Event) -> None:
        assert self._sub is not None
        joined = decode_joined(event.d_json)
        guild_id = joined.guild_id
        known = guild_id in self.guilds
        if not known:
            await self._sub.add(guild_topic(guild_id))
        # Computed after subscribing to the guild, so any later change reaches this session.
        fresh = await self._visible(guild_id)
        if fresh is None:
            if not known:
                await self._sub.remove(guild_topic(guild_id))
            return
        self.emit(Event("member_join", event.d_json))
        told = {c.id for c in joined.guild.channels}
        after = set(fresh)
        self._announce(guild_id, told, after, {}, fresh)
        await self._resubscribe(guild_id, self.guilds.get(guild_id, set()), after)

    async def _dropped(self, guild_id: str, notice: Event) -> None:
        """Leave, kick, ban or deletion: stop everything from the guild at once (buffered events
        of its topics included), then tell the client."""
        assert self._sub is not None
        channels = self.guilds.pop(guild_id, None)
        if channels is None:
            return
        self.typing_subscriptions -= channels
        await self._sub.remove(guild_topic(guild_id), *(channel_topic(c) for c in channels))
        self.emit(notice)

    async def follow_admin(self, until_ms: int) -> None:
        """Deliver admin_events until ``until_ms`` (the caller checked admin and elevation)."""
        assert self._sub is not None
        if not self.admin_until_ms:
            await self._sub.add(ADMIN_TOPIC)
        self.admin_until_ms = until_ms

    # -- client requests --------------------------------------------------------------------
    def _can_see(self, channel_id: str) -> bool:
        return channel_id in self.dms or any(channel_id in chs for chs in self.guilds.values())

    def subscribe(self, channel_id: str) -> bool:
        """Narrow typing delivery to channels the client shows; False for a channel it cannot see."""
        if not self._can_see(channel_id):
            return False
        self.typing_subscriptions.add(channel_id)
        return True

    def unsubscribe(self, channel_id: str) -> None:
        self.typing_subscriptions.discard(channel_id)

    async def typing(self, channel_id: str) -> bool:
        """Start or refresh typing; False when the channel is unknown or the user may not send."""
        if not self._can_see(channel_id):
            return False
        now = trio.current_time()
        self._typing_until[channel_id] = now + TYPING_TTL_S
        self.registry.typing[self] = None
        if now - self._typing_announced.get(channel_id, -TYPING_REPUBLISH_S) < TYPING_REPUBLISH_S:
            return True
        try:
            perms, _ = await self.ctx.permissions.channel_permissions(self.user_id, channel_id)
            require(perms, Permission.SEND_MESSAGES)
        except APIError:
            self._typing_until.pop(channel_id, None)
            return False
        self._typing_announced[channel_id] = now
        await self._publish_typing("typing_start", channel_id)
        if channel_id in self.dms and self.ctx.federated is not None:
            # To the other server of a federated DM, best effort and without waiting for it.
            self.ctx.federated.typing.started(self.user_id, channel_id)
        return True

    async def stop_typing(self, channel_id: str) -> None:
        if self._typing_until.pop(channel_id, None) is not None:
            self._typing_announced.pop(channel_id, None)
            await self._publish_typing("typing_stop", channel_id)

    async def _publish_typing(self, type_: str, channel_id: str) -> None:
        d: dict[str, Any] = {"channel_id": channel_id, "user_id": self.user_id}
        await self.ctx.broker.publish(channel_topic(channel_id), envelope(encode_event(type_, d)))

    async def expire_typing(self, now: float) -> None:
        """Called by the registry's timer: typing not refreshed within TYPING_TTL_S stops."""
        for channel_id in [c for c, until in self._typing_until.items() if until <= now]:
            await self.stop_typing(channel_id)

    async def _stop_all_typing(self) -> None:
        for channel_id in list(self._typing_until):
            await self.stop_typing(channel_id)


class SessionRegistry:
    """The daemon's live gateway sessions, each running in this registry's nursery.

    One timer task (``run_timers``) serves every session's deadlines: the resume window of
    detached sessions and typing that was not refreshed. A task per session for each would cost
    memory for every idle connection and a wake-up per second each."""

    TICK_S = 1.0

    def __init__(self, ctx: Context, nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self.nursery = nursery
        self.sessions: dict[str, GatewaySession] = {}
        self.frames = EnvelopeFrames()
        nodes = getattr(ctx, "nodes", None)  # unit tests build a registry without a daemon
        self.node_id = nodes.node_id if nodes is not None else ""
        # Resumes of sessions held by other nodes (set by the gateway when several nodes run).
        self.handoff: SessionTaker | None = None
        # Sessions with no connection, and when their resume window ends.
        self.detached: dict[GatewaySession, float] = {}
        # Sessions with typing in progress (insertion-ordered set).
        self.typing: dict[GatewaySession, None] = {}
        self._timers = trio.CancelScope()

    async def run_timers(self) -> None:
        with self._timers:
            while True:
                await trio.sleep(self.TICK_S)
                now = trio.current_time()
                for session in [s for s, deadline in self.detached.items() if deadline <= now]:
                    self.detached.pop(session, None)
                    session.expire()
                for session in list(self.typing):
                    await session.expire_typing(now)
                    if not session.is_typing:
                        self.typing.pop(session, None)

    async def start(
        self, identity: Identity, *, gate: Callable[[Message | Event], None] | None = None
    ) -> tuple[GatewaySession, list[Row]]:
        """``gate``: a session taken over from another node starts with its events held back."""
        session = GatewaySession(self.ctx, identity, self, self.frames)
        session.gate = gate
        self.sessions[session.session_id] = session
        try:
            guilds: list[Row] = await self.nursery.start(session.run)
        except BaseException:
            self.sessions.pop(session.session_id, None)
            raise
        # Expires like a dropped one unless a connection attaches (it does at once when all goes well).
        self.detached[session] = trio.current_time() + RESUME_WINDOW_S
        return session, guilds

    def get(self, session_id: str) -> GatewaySession | None:
        return self.sessions.get(session_id)

    def forget(self, session: GatewaySession) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        self.detached.pop(session, None)
        self.typing.pop(session, None)

    def end_all(self) -> None:
        self._timers.cancel()
        for session in list(self.sessions.values()):
            session.end(CloseCode.GOING_AWAY, "server shutting down")
