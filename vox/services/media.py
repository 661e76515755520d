"""Voice rooms over the QUIC media transport: sessions, tokens and the forwarding rules
(protocol.md section 9, docs/media.md).

``voice_join {channel_id, transport: "quic"}`` makes a *media session*: the user's place in the
channel's room, with the room id and ssrc its datagrams must carry and a short-lived media token
(vox.protocol.media) that lets exactly one QUIC connection claim the session. The connection
itself belongs to the transport (vox.transports.quic); the service only sees it as a
``MediaLink`` that can queue a datagram or be closed.

Rules kept here, without sockets:

- a room carries one transport at a time: a channel whose room is in use over WebRTC refuses a
  QUIC join and vice versa (``voice_error`` ``transport_mismatch``); nothing is bridged;
- one voice channel at a time per user, across both transports: a QUIC join leaves the user's
  WebRTC room and a WebRTC join leaves their media session (``VoiceService.media``);
- ``route`` decides, per datagram, to whom it goes or why it is dropped (the drop reasons are the
  ``reason`` label of ``vox_media_datagrams_dropped_total``).

Ownership mirrors the SFU: every session is owned by one task in the service's nursery, inside its
own cancel scope; leaving, the gateway connection closing, the QUIC connection closing, joining
another channel and shutdown cancel exactly that scope, and the owner's teardown unlinks the
session, closes its connection and announces ``voice_user_left``. While the session has no
connection yet the owner also sends a fresh token before the last one expires.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from vox.config import Config
from vox.metrics import MediaSnapshot, Metrics
from vox.protocol.gateway import control_frame
from vox.protocol.media import (
    HEADER_SIZE,
    MAX_DATAGRAM_BYTES,
    VERSION,
    Codec,
    MediaToken,
    MediaTokenError,
    MediaType,
    issue_token,
    route_fields,
    token_key,
    verify_token,
)
from vox.protocol.permissions import Permission
from vox.pubsub import Broker
from vox.services.calls import CallService
from vox.services.guild_events import user_topic
from vox.services.permissions import PermissionService
from vox.services.publish import publish_event
from vox.services.voice import VoiceService
from vox.services.voice_access import VoiceAccessWatch
from vox.services.voice_rules import (
    VoiceError,
    as_rest_error,
    check_move_target,
    current_rights,
    moderated,
    released,
    room_state,
    stats_event,
    voice_channel_access,
)
from vox.storage.accounts import Accounts

__all__ = ["MediaLink", "MediaService", "MediaSession", "TokenBucket", "open_media"]

log = logging.getLogger("vox.media")

Send = Callable[[str], None]
EVENT_TIMEOUT_S = 2.0
FORWARD_DELAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)
U32 = 0xFFFFFFFF


class MediaLink(Protocol):
    """The QUIC connection of a session, as the service sees it."""

    def queue_datagram(self, data: bytes) -> bool:
        """Queue one datagram for sending; False when the receiver is too far behind (dropped)."""
        ...

    def close(self, code: int, reason: str) -> None: ...


@dataclass(eq=False, slots=True)
class TokenBucket:
    """Per-sender datagram budget: ``rate`` a second on average, ``burst`` at once. Sans-IO:
    ``now`` comes from the caller."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


@dataclass(eq=False)
class MediaSession:
    number: int
    user_id: str
    username: str
    channel_id: str
    room: MediaRoom
    ssrc: int
    conn_id: int
    send: Send
    can_speak: bool
    can_video: bool
    can_screen: bool
    bucket: TokenBucket
    self_muted: bool = False
    server_muted: bool = False
    deafened: bool = False
    screen_sharing: bool = False
    screen_quality: str | None = None
    link: MediaLink | None = None
    claimed: bool = False  # a connection authenticated for it once; no other may
    ended: bool = False
    # Set when the session goes because the user is no longer in the DM call (nothing to leave).
    out_of_call: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    linked: trio.Event = field(default_factory=trio.Event)

    @property
    def room_id(self) -> int:
        return self.room.room_id

    @property
    def muted(self) -> bool:
        return self.self_muted or self.server_muted

    def state(self) -> dict[str, Any]:
        # The same shape as a WebRTC participant (vox.services.voice.Participant.state).
        return {
            "user_id": self.user_id,
            "muted": self.muted,
            "self_muted": self.self_muted,
            "server_muted": self.server_muted,
            "deafened": self.deafened,
            "screen_sharing": self.screen_sharing,
        }


@dataclass(eq=False)
class MediaRoom:
    channel_id: str
    room_id: int
    guild_id: str | None = None  # None for a DM call's room
    sessions: dict[str, MediaSession] = field(default_factory=dict)
    # Who receives: rebuilt on membership, deafen and link changes, read per datagram.
    receivers: tuple[MediaSession, ...] = ()

    def refresh(self) -> None:
        self.receivers = tuple(s for s in self.sessions.values() if s.link is not None and not s.deafened)

    def state(self) -> dict[str, Any]:
        return room_state(self.channel_id, self.sessions.values())


class MediaService:
    def __init__(
        self,
        config: Config,
        server_secret: bytes,
        permissions: PermissionService,
        broker: Broker,
        accounts: Accounts,
        metrics: Metrics,
        nursery: trio.Nursery,
        calls: CallService,
        voice: VoiceService | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.permissions = permissions
        self.broker = broker
        self.accounts = accounts
        self.metrics = metrics
        self.nursery = nursery
        self.calls = calls
        self.voice = voice
        self.clock = clock  # Unix seconds, for token expiry
        self._key = token_key(server_secret)
        self.media_url: str | None = None  # set by the transport once it is bound
        self.rooms: dict[str, MediaRoom] = {}
        self.by_user: dict[str, MediaSession] = {}
        self.by_number: dict[int, MediaSession] = {}
        self._room_ids: dict[int, MediaRoom] = {}
        self._next_session = 1
        self._next_room = secrets.randbelow(U32) + 1
        # Plain ints on the hot path; /metrics reads them at scrape time (MediaCollector).
        self.received = 0
        self.forwarded = 0
        self.dropped: dict[str, int] = {}
        self.auth_failures: dict[str, int] = {}
        self.connections = 0  # kept by the transport
        self._delay_counts = [0] * len(FORWARD_DELAY_BUCKETS)
        self._delay_sum = 0.0
        self.watch = VoiceAccessWatch(
            broker, self._members_of, lambda: list(self.by_user), self._recheck_user
        )

    # -- queries ------------------------------------------------------------------------------
    def session(self, user_id: str) -> MediaSession | None:
        return self.by_user.get(user_id)

    def has_connection(self, user_id: str, conn_id: int) -> bool:
        s = self.by_user.get(user_id)
        return s is not None and s.conn_id == conn_id

    def room_state(self, channel_id: str) -> dict[str, Any] | None:
        room = self.rooms.get(channel_id)
        return None if room is None else room.state()

    def metrics_snapshot(self) -> MediaSnapshot:
        return MediaSnapshot(
            connections=self.connections,
            participants=len(self.by_user),
            received=self.received,
            forwarded=self.forwarded,
            dropped=dict(self.dropped),
            auth_failures=dict(self.auth_failures),
            forward_delay=tuple(
                zip(FORWARD_DELAY_BUCKETS, itertools.accumulate(self._delay_counts), strict=True)
            ),
            forward_delay_sum=self._delay_sum,
        )

    def observe_forward_delay(self, seconds: float, count: int) -> None:
        """``count`` datagrams left for one receiver ``seconds`` after their batch was read."""
        self._delay_sum += seconds * count
        self._delay_counts[bisect.bisect_left(FORWARD_DELAY_BUCKETS, seconds)] += count

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def auth_failed(self, reason: str) -> None:
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1

    # -- join / leave -------------------------------------------------------------------------
    async def _check_channel(self, user_id: str, channel_id: str) -> tuple[int, str | None]:
        return await voice_channel_access(self.permissions, self.calls, user_id, channel_id)

    def _webrtc_room(self, channel_id: str, user_id: str) -> bool:
        """Whether others use the channel over WebRTC (the user's own peer leaves on switching)."""
        state = self.voice.room_state(channel_id) if self.voice is not None else None
        return state is not None and any(p["user_id"] != user_id for p in state["participants"])

    def _mismatch(self, have: str) -> VoiceError:
        return VoiceError(
            "transport_mismatch",
            f"this voice channel is in use over {have}; join it with transport {have!r}",
            transport=have,
        )

    async def before_webrtc_join(self, user_id: str, channel_id: str) -> None:
        """Called by the SFU before a WebRTC join: refuse a channel in use over QUIC, and leave
        the user's media session (one voice channel at a time)."""
        room = self.rooms.get(channel_id)
        if room is not None and any(u != user_id for u in room.sessions):
            raise self._mismatch("quic")
        s = self.by_user.get(user_id)
        if s is not None:
            await self._leave(s)

    async def join(
        self, user_id: str, channel_id: Any, conn_id: int, send: Send, *, keep: MediaSession | None = None
    ) -> None:
        """``keep``: the session a moderator moves; its mute and deafen state carries over."""
        if not isinstance(channel_id, str) or not 0 < len(channel_id) <= 64:
            raise VoiceError("validation_error", "voice_join needs d.channel_id")
        if self.media_url is None:
            raise VoiceError("unavailable", "the QUIC media transport is not running")
        perms, guild_id = await self._check_channel(user_id, channel_id)
        if self._webrtc_room(channel_id, user_id):
            raise self._mismatch("webrtc")
        if self.voice is not None and self.voice.participant(user_id) is not None:
            await self.voice.leave(user_id)
        existing = self.by_user.get(user_id)
        if existing is not None:
            await self._leave(existing)
        user = await self.accounts.user_by_id(user_id)
        username = str(user["username"]) if user is not None else ""
        # Re-checked after the awaits: another join (of this user, or over WebRTC) may have won.
        if user_id in self.by_user:
            raise VoiceError("conflict", "another voice_join of this user won the race")
        if self._webrtc_room(channel_id, user_id):
            raise self._mismatch("webrtc")
        room = self.rooms.get(channel_id)
        if room is not None and len(room.sessions) >= self.config.voice_room_limit:
            raise VoiceError("room_full", f"this voice channel holds {self.config.voice_room_limit} people")
        if room is None:
            room = MediaRoom(channel_id, self._new_room_id(), guild_id)
            self.rooms[channel_id] = room
            self._room_ids[room.room_id] = room
        now = trio.current_time()
        s = MediaSession(
            number=self._next_session,
            user_id=user_id,
            username=username,
            channel_id=channel_id,
            room=room,
            ssrc=self._new_ssrc(room),
            conn_id=conn_id,
            send=send,
            can_speak=bool(perms & Permission.VOICE_SPEAK),
            can_video=bool(perms & Permission.VIDEO),
            can_screen=bool(perms & Permission.SCREEN_SHARE),
            bucket=TokenBucket(
                float(self.config.media_rate_pps),
                float(self.config.media_rate_burst),
                float(self.config.media_rate_burst),
                now,
            ),
        )
        if keep is not None:
            s.self_muted, s.server_muted, s.deafened = keep.self_muted, keep.server_muted, keep.deafened
        self._next_session += 1
        room.sessions[user_id] = s
        self.by_user[user_id] = s
        self.by_number[s.number] = s
        await self.nursery.start(self._own, s)
        await self.watch.track(user_id, guild_id)
        self._send_session(s)
        await self._publish(
            room, "voice_user_joined", {"channel_id": channel_id, "user_id": user_id, "username": username}
        )
        await self._publish(room, "voice_room_state", room.state())
        log.info(
            "media joined",
            extra={"fields": {"user_id": user_id, "channel_id": channel_id, "room_id": room.room_id}},
        )

    def _new_room_id(self) -> int:
        while True:
            room_id = self._next_room
            self._next_room = self._next_room % U32 + 1
            if room_id not in self._room_ids:
                return room_id

    def _new_ssrc(self, room: MediaRoom) -> int:
        taken = {s.ssrc for s in room.sessions.values()}
        while True:
            ssrc = secrets.randbelow(U32) + 1
            if ssrc not in taken:
                return ssrc

    def _send_session(self, s: MediaSession) -> None:
        ttl = self.config.media_token_ttl_s
        token = issue_token(
            self._key,
            MediaToken(s.user_id, s.room_id, s.ssrc, s.number, self.clock() + ttl, secrets.token_bytes(16)),
        )
        s.send(
            control_frame(
                "voice_media_session",
                {
                    "channel_id": s.channel_id,
                    "media_url": self.media_url,
                    "media_token": token,
                    "room_id": s.room_id,
                    "ssrc": s.ssrc,
                    "expires_in": ttl,
                },
            )
        )

    async def leave(self, user_id: str) -> None:
        s = self.by_user.get(user_id)
        if s is None:
            raise VoiceError("not_in_voice", "not in a voice channel")
        await self._leave(s)

    async def _leave(self, s: MediaSession) -> None:
        s.scope.cancel()
        with trio.move_on_after(EVENT_TIMEOUT_S + 1):
            await s.done.wait()

    def connection_closed(self, conn_id: int) -> None:
        """The gateway connection that joined went away: its session ends."""
        for s in list(self.by_user.values()):
            if s.conn_id == conn_id:
                s.scope.cancel()

    async def _own(
        self, s: MediaSession, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with s.scope:
            task_status.started()
            try:
                # Until a connection claims the session, keep a valid token in the client's hands.
                ttl = self.config.media_token_ttl_s
                while not s.claimed:
                    with trio.move_on_after(ttl * 2 / 3):
                        await s.linked.wait()
                    if not s.claimed:
                        self._send_session(s)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._teardown(s)

    async def _teardown(self, s: MediaSession) -> None:
        room = s.room
        try:
            s.ended = True
            if self.by_user.get(s.user_id) is s:
                del self.by_user[s.user_id]
            self.by_number.pop(s.number, None)
            link, s.link = s.link, None
            if room.sessions.get(s.user_id) is s:
                del room.sessions[s.user_id]
                if not room.sessions:
                    del self.rooms[room.channel_id]
                    self._room_ids.pop(room.room_id, None)
            room.refresh()
            if link is not None:
                link.close(0, "left the voice channel")
            d = {"channel_id": s.channel_id, "user_id": s.user_id}
            with trio.move_on_after(EVENT_TIMEOUT_S):
                await self._publish(room, "voice_user_left", d, also=[s.user_id])
                if room.sessions:
                    await self._publish(room, "voice_room_state", room.state())
            await released(self.watch, self.calls, s, room.guild_id)
        finally:
            s.done.set()
            log.info("media left", extra={"fields": {"user_id": s.user_id, "channel_id": s.channel_id}})

    # -- rights during a call (vox.services.voice_access says when to look again) --------------
    def _members_of(self, guild_id: str) -> list[str]:
        return [u for room in self.rooms.values() if room.guild_id == guild_id for u in room.sessions]

    async def _recheck_user(self, user_id: str) -> None:
        s = self.by_user.get(user_id)
        if s is not None:
            await self.recheck(s)

    async def recheck(self, s: MediaSession) -> None:
        """The SFU's rule for its peers, for a media session: without VOICE_CONNECT, the channel
        or the DM call the user leaves (told by a voice_error with the reason); the datagram
        permissions follow VOICE_SPEAK, VIDEO and SCREEN_SHARE; losing SCREEN_SHARE stops a share."""
        perms = await current_rights(s, self._check_channel, lambda: self.by_user.get(s.user_id) is s)
        if perms is None:
            return
        can_speak = bool(perms & Permission.VOICE_SPEAK)
        s.can_video = bool(perms & Permission.VIDEO)
        s.can_screen = bool(perms & Permission.SCREEN_SHARE)
        if can_speak != s.can_speak:
            s.can_speak = can_speak
            await self._publish(s.room, "voice_room_state", s.room.state())
        if s.screen_sharing and not s.can_screen:
            await self._stop_share(s)

    # -- the QUIC side ------------------------------------------------------------------------
    def authenticate(self, token: str, link: MediaLink) -> MediaSession:
        """Bind ``link`` to the session the token opens; MediaTokenError (with a metrics reason)
        when the token is bad, expired, for a session that is gone or already claimed."""
        claims = verify_token(self._key, token, self.clock())
        s = self.by_number.get(claims.session)
        if s is None or s.ended:
            raise MediaTokenError("unknown_session", "that media session has ended")
        if (s.user_id, s.room_id, s.ssrc) != (claims.user_id, claims.room_id, claims.ssrc):
            raise MediaTokenError("session_mismatch", "the token does not match its session")
        if s.claimed:
            raise MediaTokenError("session_claimed", "this media session already has a connection")
        s.claimed = True
        s.link = link
        s.room.refresh()
        s.linked.set()
        log.info("media connected", extra={"fields": {"user_id": s.user_id, "room_id": s.room_id}})
        return s

    def link_closed(self, s: MediaSession) -> None:
        """The session's QUIC connection closed (or timed out): the user leaves the room."""
        if s.link is not None:
            s.link = None
            s.room.refresh()
        s.scope.cancel()

    def route(self, s: MediaSession, data: bytes, now: float) -> tuple[MediaSession, ...] | str:
        """Who gets this datagram from ``s``: the other linked, non-deafened participants of its
        room, or the reason it is dropped. ``now`` is trio time (the rate limit's clock)."""
        if len(data) < HEADER_SIZE:
            return "truncated"
        if len(data) > MAX_DATAGRAM_BYTES:
            return "too_large"
        version, type_, codec, room_id, ssrc = route_fields(data)
        if version != VERSION:
            return "bad_version"
        if s.ended:
            return "not_in_room"
        if room_id != s.room.room_id:
            return "wrong_room"
        if ssrc != s.ssrc:
            return "wrong_ssrc"
        if type_ == MediaType.FEC:
            # FEC protects one kind of media: it needs the permission of the codec it carries.
            if codec == Codec.OPUS:
                type_ = MediaType.AUDIO
            elif codec == Codec.AV1:
                type_ = MediaType.VIDEO
            elif codec == Codec.AV1_SCREEN:
                type_ = MediaType.SCREEN
            else:
                return "bad_type"
        if type_ == MediaType.AUDIO:
            if not s.can_speak:
                return "no_permission"
            if s.self_muted or s.server_muted:
                return "muted"
        elif type_ == MediaType.VIDEO:
            if not s.can_video:
                return "no_permission"
        elif type_ == MediaType.SCREEN:
            if not s.can_screen:
                return "no_permission"
        elif type_ != MediaType.RTCP_FEEDBACK:
            return "bad_type"
        if not s.bucket.take(now):
            return "rate_limited"
        return s.room.receivers

    # -- signaling requests of a session (mute, screen share, stats) --------------------------
    def _own_session(self, user_id: str, conn_id: int) -> MediaSession:
        s = self.by_user.get(user_id)
        if s is None or s.conn_id != conn_id:
            raise VoiceError("not_in_voice", "this connection is not in a voice channel")
        return s

    async def set_self_muted(self, user_id: str, conn_id: int, muted: bool) -> None:
        s = self._own_session(user_id, conn_id)
        if s.self_muted == muted:
            return
        s.self_muted = muted
        await self._announce_mute(s, muted, by=None)

    async def _announce_mute(self, s: MediaSession, muted: bool, by: str | None) -> None:
        d: dict[str, Any] = {
            "channel_id": s.channel_id,
            "user_id": s.user_id,
            "muted": s.muted,
            "self_muted": s.self_muted,
            "server_muted": s.server_muted,
        }
        if by is not None:
            d["by"] = by
        await self._publish(s.room, "voice_user_muted" if muted else "voice_user_unmuted", d)

    async def screen_share_start(self, user_id: str, conn_id: int, quality: Any) -> None:
        s = self._own_session(user_id, conn_id)
        if quality is not None and (not isinstance(quality, str) or len(quality) > 32):
            raise VoiceError("validation_error", "quality must be a short string")
        perms, _guild_id = await self._check_channel(user_id, s.channel_id)
        if not perms & Permission.SCREEN_SHARE:
            raise VoiceError(
                "missing_permission", "missing permission SCREEN_SHARE", missing_permission="SCREEN_SHARE"
            )
        if s.screen_sharing:
            raise VoiceError("already_sharing", "already sharing the screen")
        s.screen_sharing, s.screen_quality = True, quality
        await self._publish(
            s.room,
            "screen_share_started",
            {"channel_id": s.channel_id, "user_id": user_id, "quality": quality},
        )

    async def screen_share_stop(self, user_id: str, conn_id: int) -> None:
        s = self._own_session(user_id, conn_id)
        if not s.screen_sharing:
            raise VoiceError("not_sharing", "not sharing the screen")
        await self._stop_share(s)

    async def _stop_share(self, s: MediaSession) -> None:
        s.screen_sharing, s.screen_quality = False, None
        await self._publish(
            s.room, "screen_share_stopped", {"channel_id": s.channel_id, "user_id": s.user_id}
        )

    async def stats(self, user_id: str, conn_id: int, d: dict[str, Any]) -> None:
        s = self._own_session(user_id, conn_id)
        out = stats_event(s, d)
        await self._publish(s.room, "voice_user_stats", out, exclude=s.user_id)

    # -- moderation (REST, through the SFU's routes) ------------------------------------------
    def in_channel(self, user_id: str, channel_id: str) -> bool:
        s = self.by_user.get(user_id)
        return s is not None and s.channel_id == channel_id

    async def _moderated(self, actor: str, channel_id: str, target: str, bit: Permission) -> MediaSession:
        return await moderated(self.permissions, self.by_user, actor, channel_id, target, bit)

    async def server_mute(self, actor: str, channel_id: str, target: str, muted: bool) -> dict[str, Any]:
        s = await self._moderated(actor, channel_id, target, Permission.VOICE_MUTE_OTHERS)
        if s.server_muted != muted:
            s.server_muted = muted
            await self._announce_mute(s, muted, by=actor)
        return s.state()

    async def server_deafen(self, actor: str, channel_id: str, target: str, deafened: bool) -> dict[str, Any]:
        s = await self._moderated(actor, channel_id, target, Permission.VOICE_DEAFEN_OTHERS)
        if s.deafened != deafened:
            s.deafened = deafened
            s.room.refresh()
            await self._publish(s.room, "voice_room_state", s.room.state())
        return s.state()

    async def move(self, actor: str, channel_id: str, target: str, target_channel_id: Any) -> dict[str, Any]:
        """A moved QUIC participant gets a new media session (new room id, ssrc and token) in the
        target channel; its old connection is closed."""
        s = await self._moderated(actor, channel_id, target, Permission.VOICE_MOVE_MEMBERS)
        target_channel_id = await check_move_target(self.permissions, actor, target_channel_id)
        try:
            await self.join(target, target_channel_id, s.conn_id, s.send, keep=s)
        except VoiceError as exc:
            raise as_rest_error(exc) from None
        return {"user_id": target, "channel_id": target_channel_id}

    # -- events -------------------------------------------------------------------------------
    async def _publish(
        self,
        room: MediaRoom,
        type_: str,
        d: Any,
        *,
        also: list[str] | None = None,
        exclude: str | None = None,
    ) -> None:
        users = [u for u in room.sessions if u != exclude] + (also or [])
        await publish_event(self.broker, [user_topic(u) for u in users], type_, d)


@asynccontextmanager
async def open_media(
    config: Config,
    server_secret: bytes,
    permissions: PermissionService,
    broker: Broker,
    accounts: Accounts,
    metrics: Metrics,
    calls: CallService,
    voice: VoiceService | None,
) -> AsyncIterator[MediaService]:
    """The media sessions' nursery; on exit every session is torn down (events announced)."""
    async with trio.open_nursery() as nursery:
        service = MediaService(
            config, server_secret, permissions, broker, accounts, metrics, nursery, calls, voice
        )
        metrics.media.source = service.metrics_snapshot
        await nursery.start(service.watch.run)
        if voice is not None:
            voice.media = service
        try:
            yield service
        finally:
            if voice is not None:
                voice.media = None
            nursery.cancel_scope.cancel()
