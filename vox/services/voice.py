"""Voice rooms: the rules of the WebRTC SFU (protocol.md sections 6 and 8).

One room per voice channel id, one peer per user (a user is in one voice channel at a time:
joining another leaves the first). A room lives on the daemon that holds its peers; its events go
to the participants' ``user:{id}`` topics, so they reach every device of a participant through
the broker (and, scaled out, whichever daemon holds their gateway connection). Connection-scoped
frames (``voice_offer``, ``voice_error``) go straight to the connection that joined; they carry no
seq and are not replayed on resume (the peer dies with its connection).

Ownership: each peer is owned on the trio side by one task in the service's nursery, inside its
own cancel scope. Leaving, disconnecting, being moved or shutting down cancels exactly that scope;
the owner then unroutes the peer, closes its ``RTCPeerConnection`` under a deadline
(``voice_close_timeout_s``) and, when the close does not finish in time, abandons it and counts it
(``VoiceService.abandoned`` and the ``vox_voice_abandoned_peers_total`` metric).

Forwarding happens on the asyncio side without decoding (vox.transports.webrtc): every peer
has one inbound audio transceiver (its microphone), one inbound video transceiver once it has
shared its screen, and outbound "slots" (sendonly transceivers fed by a ``RelayTrack``), one per
other participant's audio and per other participant's screen. A slot freed by someone leaving is
reused by the next one to arrive; a new m-line (and so a new ``voice_offer``) is only needed when
no slot is free.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import aioice.ice
import trio

from vox.config import Config
from vox.metrics import Metrics
from vox.nurseries.bridge import aio, bounded, open_bridge
from vox.protocol.gateway import control_frame
from vox.protocol.permissions import Permission
from vox.pubsub import Broker
from vox.services.calls import CallService
from vox.services.guild_events import user_topic
from vox.services.permissions import PermissionService
from vox.services.publish import publish_event
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
from vox.transports import webrtc

if TYPE_CHECKING:
    from vox.services.media import MediaService

__all__ = ["Participant", "VoiceError", "VoiceService", "open_voice"]

log = logging.getLogger("vox.voice")

Send = Callable[[str], None]
NEGOTIATION_TIMEOUT_S = 10.0
# REST status of a voice error met by a moderation request (a move).
EVENT_TIMEOUT_S = 2.0


@dataclass(eq=False)
class Slot:
    """An outbound transceiver of one peer, forwarding one source's audio or screen."""

    kind: str
    track: webrtc.RelayTrack
    source: str | None = None
    # Video: the next frame forwarded to this slot asks the source for a key frame first.
    fresh: bool = True


@dataclass(eq=False)
class Participant:
    user_id: str
    username: str
    channel_id: str
    conn_id: int
    send: Send
    pc: Any  # RTCPeerConnection
    can_speak: bool
    self_muted: bool = False
    server_muted: bool = False
    deafened: bool = False
    screen_sharing: bool = False
    screen_quality: str | None = None
    mic: Any = None  # RTCRtpReceiver
    screen: Any = None  # RTCRtpReceiver, once the peer shared its screen
    slots: list[Slot] = field(default_factory=list)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)
    renegotiate: bool = False
    keyframe_asked: float = 0.0
    # Set when the peer goes because the user is no longer in the DM call (nothing to leave).
    out_of_call: bool = False
    # A new peer connection (a join, a switch of channel, a move) gets a new id; an offer with an
    # id the client already answered is a renegotiation of the same connection.
    peer_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def muted(self) -> bool:
        return self.self_muted or self.server_muted

    def state(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "muted": self.muted,
            "self_muted": self.self_muted,
            "server_muted": self.server_muted,
            "deafened": self.deafened,
            "screen_sharing": self.screen_sharing,
        }

    def slot_for(self, source: str, kind: str) -> Slot | None:
        for slot in self.slots:
            if slot.source == source and slot.kind == kind:
                return slot
        return None


@dataclass(eq=False)
class Room:
    channel_id: str
    guild_id: str | None  # None for a DM call's room
    participants: dict[str, Participant] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return room_state(self.channel_id, self.participants.values())


class VoiceService:
    def __init__(
        self,
        config: Config,
        permissions: PermissionService,
        broker: Broker,
        accounts: Accounts,
        metrics: Metrics,
        nursery: trio.Nursery,
        calls: CallService,
    ) -> None:
        self.config = config
        self.permissions = permissions
        self.broker = broker
        self.accounts = accounts
        self.metrics = metrics
        self.nursery = nursery
        self.calls = calls
        self.rooms: dict[str, Room] = {}
        self.by_user: dict[str, Participant] = {}
        self.abandoned = 0  # peer connections that did not close in time
        self.forwarded = 0  # frames handed to outbound tracks
        self.rtc_config = webrtc.ice_configuration(
            webrtc.parse_ice_servers(config.ice_servers, config.ice_username, config.ice_credential)
        )
        self.watch = VoiceAccessWatch(
            broker, self._members_of, lambda: list(self.by_user), self._recheck_user
        )
        # The QUIC media rooms (vox.services.media), set while they run: one voice channel per
        # user and one transport per room hold across both.
        self.media: MediaService | None = None

    # -- queries ------------------------------------------------------------------------------
    def participant(self, user_id: str) -> Participant | None:
        return self.by_user.get(user_id)

    def room_state(self, channel_id: str) -> dict[str, Any] | None:
        room = self.rooms.get(channel_id)
        return None if room is None else room.state()

    # -- join / leave -------------------------------------------------------------------------
    async def _check_channel(self, user_id: str, channel_id: str) -> tuple[int, str | None]:
        return await voice_channel_access(self.permissions, self.calls, user_id, channel_id)

    async def join(
        self, user_id: str, channel_id: str, conn_id: int, send: Send, *, keep: Participant | None = None
    ) -> None:
        """``keep``: the participant's previous peer when a moderator moves them; its mute and
        deafen state carries over to the new room."""
        if not isinstance(channel_id, str) or not 0 < len(channel_id) <= 64:
            raise VoiceError("validation_error", "voice_join needs d.channel_id")
        perms, guild_id = await self._check_channel(user_id, channel_id)
        if self.media is not None:
            await self.media.before_webrtc_join(user_id, channel_id)
        existing = self.by_user.get(user_id)
        if existing is not None:
            await self._leave(existing)
        room = self.rooms.get(channel_id)
        if room is not None and len(room.participants) >= self.config.voice_room_limit:
            raise VoiceError("room_full", f"this voice channel holds {self.config.voice_room_limit} people")
        user = await self.accounts.user_by_id(user_id)
        username = str(user["username"]) if user is not None else ""
        pc = await aio(webrtc.new_peer, self.rtc_config)
        p = Participant(
            user_id=user_id,
            username=username,
            channel_id=channel_id,
            conn_id=conn_id,
            send=send,
            pc=pc,
            can_speak=bool(perms & Permission.VOICE_SPEAK),
        )
        if keep is not None:
            p.self_muted, p.server_muted, p.deafened = keep.self_muted, keep.server_muted, keep.deafened
        try:
            mic = await aio(webrtc.add_transceiver, pc, "audio", "recvonly")
        except BaseException:
            await self._close_pc(p)
            raise
        p.mic = mic.receiver
        webrtc.hook_receiver(p.mic, self._forwarder(p, "audio"), per_packet=True)
        # Another join may have filled or created the room while we awaited.
        room = self.rooms.setdefault(channel_id, Room(channel_id, guild_id))
        if len(room.participants) >= self.config.voice_room_limit or user_id in self.by_user:
            await self._close_pc(p)
            if not room.participants:
                del self.rooms[channel_id]
            if user_id in self.by_user:
                raise VoiceError("conflict", "another voice_join of this user won the race")
            raise VoiceError("room_full", "this voice channel is full")
        others = list(room.participants.values())
        room.participants[user_id] = p
        self.by_user[user_id] = p
        await self.nursery.start(self._own, p)
        await self.watch.track(user_id, guild_id)
        changed: set[Participant] = {p}
        for other in others:
            if await self._route(other, p, "audio"):
                changed.add(other)
            await self._route(p, other, "audio")
            if other.screen_sharing:
                await self._route(p, other, "video")
        for q in [p, *others]:
            if q in changed:
                self.nursery.start_soon(self._negotiate_quietly, q)
        await self._publish(
            room, "voice_user_joined", {"channel_id": channel_id, "user_id": user_id, "username": username}
        )
        await self._publish(room, "voice_room_state", room.state())
        log.info("voice joined", extra={"fields": {"user_id": user_id, "channel_id": channel_id}})

    async def leave(self, user_id: str) -> None:
        p = self.by_user.get(user_id)
        if p is None:
            raise VoiceError("not_in_voice", "not in a voice channel")
        await self._leave(p)

    async def _leave(self, p: Participant) -> None:
        p.scope.cancel()
        with trio.move_on_after(self.config.voice_close_timeout_s + EVENT_TIMEOUT_S + 1):
            await p.done.wait()

    def connection_closed(self, conn_id: int) -> None:
        """The gateway connection went away: its peer leaves (owner task does the teardown)."""
        for p in list(self.by_user.values()):
            if p.conn_id == conn_id:
                p.scope.cancel()
        if self.media is not None:
            self.media.connection_closed(conn_id)

    async def _own(
        self, p: Participant, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with p.scope:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._teardown(p)

    async def _teardown(self, p: Participant) -> None:
        room = self.rooms.get(p.channel_id)
        try:
            if self.by_user.get(p.user_id) is p:
                del self.by_user[p.user_id]
            if room is not None and room.participants.get(p.user_id) is p:
                del room.participants[p.user_id]
                for other in room.participants.values():
                    for slot in other.slots:
                        if slot.source == p.user_id:
                            slot.source = None
                            slot.track.clear()
                if not room.participants:
                    del self.rooms[p.channel_id]
            await self._close_pc(p)
            if room is not None:
                d = {"channel_id": p.channel_id, "user_id": p.user_id}
                with trio.move_on_after(EVENT_TIMEOUT_S):
                    await self._publish(room, "voice_user_left", d, also=[p.user_id])
                await released(self.watch, self.calls, p, room.guild_id)
        finally:
            p.done.set()
            log.info("voice left", extra={"fields": {"user_id": p.user_id, "channel_id": p.channel_id}})

    def _members_of(self, guild_id: str) -> list[str]:
        return [u for room in self.rooms.values() if room.guild_id == guild_id for u in room.participants]

    async def _recheck_user(self, user_id: str) -> None:
        p = self.by_user.get(user_id)
        if p is not None:
            await self.recheck(p)

    async def recheck(self, p: Participant) -> None:
        """Apply the participant's current rights (vox.services.voice_access says when): without
        VOICE_CONNECT, the channel or the DM call they leave the room (told by a voice_error
        with the reason); without VOICE_SPEAK their audio stops; without SCREEN_SHARE their
        share stops."""
        perms = await current_rights(p, self._check_channel, lambda: self.by_user.get(p.user_id) is p)
        if perms is None:
            return
        room = self.rooms.get(p.channel_id)
        can_speak = bool(perms & Permission.VOICE_SPEAK)
        if can_speak != p.can_speak and room is not None:
            p.can_speak = can_speak
            if not can_speak:
                self._drop_queued(p, "audio")
            await self._publish(room, "voice_room_state", room.state())
        if p.screen_sharing and not perms & Permission.SCREEN_SHARE:
            await self._stop_share(p)

    async def _close_pc(self, p: Participant) -> None:
        if not await bounded(webrtc.close_peer, p.pc, timeout=self.config.voice_close_timeout_s):
            self.abandoned += 1
            self.metrics.voice_abandoned_peers.inc()
            log.warning(
                "voice peer did not close in time; abandoned",
                extra={"fields": {"user_id": p.user_id, "abandoned": self.abandoned}},
            )

    # -- routing ------------------------------------------------------------------------------
    def _forwarder(self, source: Participant, kind: str) -> webrtc.OnFrame:
        def on_frame(data: bytes, timestamp: int, time_base: Fraction) -> None:
            if kind == "audio" and (source.muted or not source.can_speak):
                return
            if kind == "video" and not source.screen_sharing:
                return
            room = self.rooms.get(source.channel_id)
            if room is None or room.participants.get(source.user_id) is not source:
                return
            packet = None
            for q in room.participants.values():
                if q is source or q.deafened:
                    continue
                slot = q.slot_for(source.user_id, kind)
                if slot is None:
                    continue
                if packet is None:
                    packet = webrtc.make_packet(data, timestamp, time_base)
                if slot.fresh and kind == "video":
                    slot.fresh = False
                    self._keyframe_soon(source)
                slot.track.feed(packet)
                self.forwarded += 1

        return on_frame

    async def _route(self, receiver: Participant, source: Participant, kind: str) -> bool:
        """Give ``receiver`` a slot carrying ``source``'s ``kind``; True when a new m-line was
        added (the receiver needs a new offer)."""
        if receiver.slot_for(source.user_id, kind) is not None:
            return False
        for slot in receiver.slots:
            if slot.kind == kind and slot.source is None:
                slot.source, slot.fresh = source.user_id, True
                return False
        track = webrtc.RelayTrack(kind)
        transceiver = await aio(webrtc.add_transceiver, receiver.pc, track, "sendonly")
        slot = Slot(kind, track, source.user_id)
        receiver.slots.append(slot)
        if kind == "video":
            webrtc.hook_sender_pli(transceiver.sender, lambda: self._pli(receiver, slot))
        return True

    def _pli(self, receiver: Participant, slot: Slot) -> None:
        """A receiver lost video: its request goes to the slot's current source (asyncio side)."""
        room = self.rooms.get(receiver.channel_id)
        source = room.participants.get(slot.source) if room is not None and slot.source else None
        if source is not None and source.screen_sharing:
            self._keyframe_soon(source)

    def _keyframe_soon(self, source: Participant) -> None:
        """Ask a sharer for a key frame, at most every 0.5 s (called on the asyncio side)."""
        now = time.monotonic()
        if source.screen is None or now - source.keyframe_asked < 0.5:
            return
        source.keyframe_asked = now
        task = asyncio.ensure_future(webrtc.request_keyframe(source.screen))
        task.add_done_callback(_quiet)

    # -- negotiation --------------------------------------------------------------------------
    async def _negotiate_quietly(self, p: Participant) -> None:
        try:
            await self._negotiate(p)
        except Exception as exc:
            if p.scope.cancel_called:
                return  # the peer is going away; its connection needs no offer
            log.warning("voice offer failed", extra={"fields": {"user_id": p.user_id, "error": repr(exc)}})
            p.send(
                control_frame(
                    "voice_error", {"code": "negotiation_failed", "message": "could not create an offer"}
                )
            )

    async def _negotiate(self, p: Participant) -> None:
        async with p.lock:
            if p.scope.cancel_called:
                return
            if p.pc.signalingState != "stable":
                p.renegotiate = True  # offered already; a new offer follows the answer
                return
            with trio.fail_after(NEGOTIATION_TIMEOUT_S):
                sdp = await aio(webrtc.make_offer, p.pc)
            sdp = webrtc.add_public_ip(sdp, self.config.voice_public_ip)
            p.send(
                control_frame("voice_offer", {"channel_id": p.channel_id, "peer_id": p.peer_id, "sdp": sdp})
            )

    def _signaling_peer(self, user_id: str, conn_id: int) -> Participant:
        p = self.by_user.get(user_id)
        if p is None or p.conn_id != conn_id:
            raise VoiceError("not_in_voice", "this connection is not in a voice channel")
        return p

    async def answer(self, user_id: str, conn_id: int, sdp: Any) -> None:
        p = self._signaling_peer(user_id, conn_id)
        if not isinstance(sdp, str) or not sdp or len(sdp) > 65_536:
            raise VoiceError("validation_error", "voice_answer needs d.sdp")
        async with p.lock:
            if p.pc.signalingState != "have-local-offer":
                raise VoiceError("unexpected_answer", "no offer is waiting for an answer")
            try:
                with trio.fail_after(NEGOTIATION_TIMEOUT_S):
                    await aio(webrtc.apply_answer, p.pc, sdp)
            except Exception as exc:  # aiortc raises ValueError, InvalidStateError, InvalidAccessError...
                raise VoiceError("invalid_sdp", f"the answer was refused: {exc}") from None
        if p.renegotiate:
            p.renegotiate = False
            await self._negotiate(p)

    async def ice_candidate(self, user_id: str, conn_id: int, d: dict[str, Any]) -> None:
        p = self._signaling_peer(user_id, conn_id)
        candidate = d.get("candidate")
        if isinstance(candidate, dict):  # the browser's RTCIceCandidateInit
            mid, index, candidate = (
                candidate.get("sdpMid"),
                candidate.get("sdpMLineIndex"),
                candidate.get("candidate"),
            )
        else:
            mid, index = d.get("sdp_mid", d.get("sdpMid")), d.get("sdp_mline_index", d.get("sdpMLineIndex"))
        if not isinstance(candidate, str) or len(candidate) > 1024:
            raise VoiceError("validation_error", "voice_ice_candidate needs d.candidate")
        if mid is None and index is None:
            mid = "0"  # BUNDLE: every m-line shares the first one's transport
        try:
            await aio(
                webrtc.add_candidate,
                p.pc,
                candidate,
                mid if isinstance(mid, str) else None,
                index if isinstance(index, int) else None,
            )
        except Exception as exc:
            raise VoiceError("invalid_candidate", f"the candidate was refused: {exc}") from None

    # -- state changes ------------------------------------------------------------------------
    async def set_self_muted(self, user_id: str, conn_id: int, muted: bool) -> None:
        p = self._signaling_peer(user_id, conn_id)
        if p.self_muted == muted:
            return
        p.self_muted = muted
        await self._announce_mute(p, muted, by=None)

    def _drop_queued(self, source: Participant, kind: str) -> None:
        """Discard what is queued for the receivers of ``source``'s ``kind``: after a mute, frames
        already queued (up to RELAY_QUEUE per receiver when it is behind) must not play."""
        room = self.rooms.get(source.channel_id)
        for q in room.participants.values() if room is not None else ():
            slot = q.slot_for(source.user_id, kind)
            if slot is not None:
                slot.track.clear()

    async def _announce_mute(self, p: Participant, muted: bool, by: str | None) -> None:
        room = self.rooms.get(p.channel_id)
        if room is None:
            return
        if p.muted:
            self._drop_queued(p, "audio")
        d = {
            "channel_id": p.channel_id,
            "user_id": p.user_id,
            "muted": p.muted,
            "self_muted": p.self_muted,
            "server_muted": p.server_muted,
        }
        if by is not None:
            d["by"] = by
        await self._publish(room, "voice_user_muted" if muted else "voice_user_unmuted", d)

    async def screen_share_start(self, user_id: str, conn_id: int, quality: Any) -> None:
        p = self._signaling_peer(user_id, conn_id)
        if quality is not None and (not isinstance(quality, str) or len(quality) > 32):
            raise VoiceError("validation_error", "quality must be a short string")
        perms, _guild_id = await self._check_channel(user_id, p.channel_id)
        if not perms & Permission.SCREEN_SHARE:
            raise VoiceError(
                "missing_permission", "missing permission SCREEN_SHARE", missing_permission="SCREEN_SHARE"
            )
        if p.screen_sharing:
            raise VoiceError("already_sharing", "already sharing the screen")
        changed: set[Participant] = set()
        if p.screen is None:
            transceiver = await aio(webrtc.add_transceiver, p.pc, "video", "recvonly")
            p.screen = transceiver.receiver
            webrtc.hook_receiver(p.screen, self._forwarder(p, "video"), per_packet=False)
            changed.add(p)
        p.screen_sharing, p.screen_quality = True, quality
        room = self.rooms[p.channel_id]
        for q in list(room.participants.values()):
            if q is not p:
                await self._route(q, p, "video")
                changed.add(q)  # renegotiate everyone: the contract announces shares with an offer
        for q in changed:
            self.nursery.start_soon(self._negotiate_quietly, q)
        await self._publish(
            room,
            "screen_share_started",
            {"channel_id": p.channel_id, "user_id": p.user_id, "quality": quality},
        )

    async def screen_share_stop(self, user_id: str, conn_id: int) -> None:
        p = self._signaling_peer(user_id, conn_id)
        if not p.screen_sharing:
            raise VoiceError("not_sharing", "not sharing the screen")
        await self._stop_share(p)

    async def _stop_share(self, p: Participant) -> None:
        p.screen_sharing, p.screen_quality = False, None
        room = self.rooms[p.channel_id]
        for q in room.participants.values():
            for slot in q.slots:
                if slot.source == p.user_id and slot.kind == "video":
                    slot.source = None
                    slot.track.clear()
        await self._publish(room, "screen_share_stopped", {"channel_id": p.channel_id, "user_id": p.user_id})

    async def stats(self, user_id: str, conn_id: int, d: dict[str, Any]) -> None:
        p = self._signaling_peer(user_id, conn_id)
        out = stats_event(p, d)
        room = self.rooms.get(p.channel_id)
        if room is not None:
            await self._publish(room, "voice_user_stats", out, exclude=p.user_id)

    # -- moderation (REST) --------------------------------------------------------------------
    async def _moderated(self, actor: str, channel_id: str, target: str, bit: Permission) -> Participant:
        return await moderated(self.permissions, self.by_user, actor, channel_id, target, bit)

    async def server_mute(self, actor: str, channel_id: str, target: str, muted: bool) -> dict[str, Any]:
        if self.media is not None and self.media.in_channel(target, channel_id):
            return await self.media.server_mute(actor, channel_id, target, muted)
        p = await self._moderated(actor, channel_id, target, Permission.VOICE_MUTE_OTHERS)
        if p.server_muted != muted:
            p.server_muted = muted
            await self._announce_mute(p, muted, by=actor)
        return p.state()

    async def server_deafen(self, actor: str, channel_id: str, target: str, deafened: bool) -> dict[str, Any]:
        if self.media is not None and self.media.in_channel(target, channel_id):
            return await self.media.server_deafen(actor, channel_id, target, deafened)
        p = await self._moderated(actor, channel_id, target, Permission.VOICE_DEAFEN_OTHERS)
        if p.deafened != deafened:
            p.deafened = deafened
            if deafened:
                for slot in p.slots:
                    slot.track.clear()
            room = self.rooms[p.channel_id]
            await self._publish(room, "voice_room_state", room.state())
        return p.state()

    async def move(self, actor: str, channel_id: str, target: str, target_channel_id: Any) -> dict[str, Any]:
        if self.media is not None and self.media.in_channel(target, channel_id):
            return await self.media.move(actor, channel_id, target, target_channel_id)
        p = await self._moderated(actor, channel_id, target, Permission.VOICE_MOVE_MEMBERS)
        target_channel_id = await check_move_target(self.permissions, actor, target_channel_id)
        try:
            await self.join(target, target_channel_id, p.conn_id, p.send, keep=p)
        except VoiceError as exc:
            raise as_rest_error(exc) from None
        return {"user_id": target, "channel_id": target_channel_id}

    # -- events -------------------------------------------------------------------------------
    async def _publish(
        self, room: Room, type_: str, d: Any, *, also: list[str] | None = None, exclude: str | None = None
    ) -> None:
        users = [u for u in room.participants if u != exclude] + (also or [])
        await publish_event(self.broker, [user_topic(u) for u in users], type_, d)


def _quiet(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("keyframe request failed", extra={"fields": {"error": repr(task.exception())}})


def _host_addresses(configured: list[str]) -> Callable[[bool, bool], list[str]]:
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return list(configured)

    return get_host_addresses


@asynccontextmanager
async def open_voice(
    config: Config,
    permissions: PermissionService,
    broker: Broker,
    accounts: Accounts,
    metrics: Metrics,
    calls: CallService,
) -> AsyncIterator[VoiceService]:
    """The SFU: the trio_asyncio loop and the nursery owning every peer. On exit every peer is
    torn down concurrently, each close bounded by ``voice_close_timeout_s``."""
    original = aioice.ice.get_host_addresses
    addresses = [a for a in config.voice_host_addresses.replace(",", " ").split() if a]
    if addresses:
        # aioice skips 127.0.0.1 (stack-notes pitfall 4); this is process-wide, restored on exit.
        aioice.ice.get_host_addresses = _host_addresses(addresses)  # type: ignore[assignment]
    try:
        async with open_bridge() as loop, trio.open_nursery() as nursery:
            service = VoiceService(config, permissions, broker, accounts, metrics, nursery, calls)
            await nursery.start(service.watch.run)
            metrics.voice_peers.set_function(lambda: len(service.by_user))
            metrics.voice_forwarded.set_function(lambda: service.forwarded)
            metrics.voice_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
            if config.voice_udp_ports:
                low, _, high = config.voice_udp_ports.partition("-")
                webrtc.restrict_udp_ports(loop, int(low), int(high))
            try:
                yield service
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if addresses:
            aioice.ice.get_host_addresses = original
