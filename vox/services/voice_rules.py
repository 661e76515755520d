"""The rules both voice transports share (the WebRTC SFU, vox.services.voice, and the QUIC media
rooms, vox.services.media): who may be in a voice channel, how a moderator's move is checked, how a
refusal reads over REST, and how a DM call's media and the call end together."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import trio

from vox.errors import APIError, MissingPermission, NotFound, ValidationError, VoxError
from vox.protocol.gateway import control_frame
from vox.protocol.permissions import Permission
from vox.services.calls import CallService
from vox.services.permissions import PermissionService, require
from vox.services.voice_access import VoiceAccessWatch

__all__ = [
    "EVENT_TIMEOUT_S",
    "Member",
    "VoiceError",
    "as_rest_error",
    "check_move_target",
    "current_rights",
    "leave_call",
    "moderated",
    "released",
    "room_state",
    "stats_event",
    "voice_channel_access",
]

log = logging.getLogger("vox.voice")

EVENT_TIMEOUT_S = 2.0

# REST status of a voice refusal met by a moderation request (a move).
_STATUS = {
    "not_found": 404,
    "missing_permission": 403,
    "not_in_call": 403,
    "room_full": 409,
    "conflict": 409,
    "transport_mismatch": 409,
}


class VoiceError(VoxError):
    """Refused voice request: answered with ``voice_error {code, message}``, never a close."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


def as_rest_error(exc: VoiceError) -> APIError:
    error = APIError(exc.message, code=exc.code, **exc.extra)
    error.status = _STATUS.get(exc.code, 400)
    return error


async def voice_channel_access(
    permissions: PermissionService, calls: CallService, user_id: str, channel_id: str
) -> tuple[int, str | None]:
    """The user's permissions in a voice channel they may connect to and its guild id (None for a
    DM, whose call they must be in), or VoiceError."""
    try:
        perms, channel = await permissions.channel_permissions(user_id, channel_id)
    except NotFound:
        raise VoiceError("not_found", "channel not found") from None
    guild_id = channel["guild_id"]
    if guild_id is None:
        if not await calls.is_participant(channel_id, user_id):
            raise VoiceError("not_in_call", "join the DM call first")
    elif channel.get("channel_type") != "voice":
        raise VoiceError("not_voice_channel", "not a voice channel")
    try:
        require(perms, Permission.VOICE_CONNECT)
    except MissingPermission as exc:
        raise VoiceError(exc.code, exc.message, **exc.extra) from None
    return perms, None if guild_id is None else str(guild_id)


async def check_move_target(permissions: PermissionService, actor: str, target_channel_id: Any) -> str:
    """A move's destination: a voice channel where the moderator also has VOICE_MOVE_MEMBERS."""
    if not isinstance(target_channel_id, str) or not target_channel_id:
        raise ValidationError("target_channel_id is required", {"target_channel_id": "required"})
    perms, channel = await permissions.channel_permissions(actor, target_channel_id)
    require(perms, Permission.VOICE_MOVE_MEMBERS)
    if channel.get("channel_type") != "voice":
        raise ValidationError("not a voice channel", {"target_channel_id": "not a voice channel"})
    return target_channel_id


async def leave_call(calls: CallService, user_id: str, channel_id: str) -> None:
    """A DM call's media is its call: whoever drops out of the room (voice_leave, a closed
    connection, joining another channel, shutdown) leaves the call too, so the call ends when the
    last one goes instead of staying "active" with nobody connected."""
    try:
        await calls.leave(user_id, channel_id)
    except VoxError as exc:  # the call or DM is gone, or storage/Redis failed
        log.info(
            "voice media ended; call not left",
            extra={"fields": {"user_id": user_id, "channel_id": channel_id, "error": str(exc)}},
        )


class Member(Protocol):
    """A participant of a room, whatever its transport (an SFU peer or a QUIC media session)."""

    user_id: str
    channel_id: str
    out_of_call: bool
    scope: trio.CancelScope

    def send(self, frame: str) -> None: ...


async def current_rights(
    member: Member,
    check: Callable[[str, str], Awaitable[tuple[int, str | None]]],
    still_here: Callable[[], bool],
) -> int | None:
    """The member's permissions in their channel now (vox.services.voice_access says when to
    look), or None when there is nothing to apply: they may no longer be in the room (told by
    ``voice_error {removed: true}`` and their owner scope cancelled, so they leave), the check
    failed (storage down: they stay, the next change looks again), or they left meanwhile."""
    try:
        perms, _guild_id = await check(member.user_id, member.channel_id)
    except VoiceError as exc:
        if not still_here() or member.scope.cancel_called:
            return None
        log.info(
            "voice access lost",
            extra={"fields": {"user_id": member.user_id, "channel_id": member.channel_id, "code": exc.code}},
        )
        member.out_of_call = exc.code == "not_in_call"
        member.send(control_frame("voice_error", {"request": None, "removed": True, **exc.body()}))
        member.scope.cancel()
        return None
    except VoxError as exc:
        fields = {"user_id": member.user_id, "error": str(exc)}
        log.warning("voice access check failed", extra={"fields": fields})
        return None
    return perms if still_here() else None


async def released(watch: VoiceAccessWatch, calls: CallService, member: Member, guild_id: str | None) -> None:
    """What follows a member leaving a room on any transport: their rights are no longer watched,
    and a DM call's media being its call, they leave the call (unless the call is why they left)."""
    with trio.move_on_after(EVENT_TIMEOUT_S):
        await watch.untrack(member.user_id, guild_id)
    if guild_id is None and not member.out_of_call:
        with trio.move_on_after(EVENT_TIMEOUT_S):
            await leave_call(calls, member.user_id, member.channel_id)


class Shown(Protocol):
    """What a room's state shows of a participant, whatever its transport."""

    user_id: str
    screen_sharing: bool
    screen_quality: str | None

    def state(self) -> dict[str, Any]: ...


def room_state(channel_id: str, members: Iterable[Shown]) -> dict[str, Any]:
    """``voice_room_state {channel_id, participants, screen_shares}``."""
    members = list(members)
    return {
        "channel_id": channel_id,
        "participants": [m.state() for m in members],
        "screen_shares": [
            {"user_id": m.user_id, "quality": m.screen_quality} for m in members if m.screen_sharing
        ],
    }


M = TypeVar("M", bound=Member)


async def moderated(
    permissions: PermissionService,
    members: Mapping[str, M],
    actor: str,
    channel_id: str,
    target: str,
    bit: Permission,
) -> M:
    """The target of a moderation request: the actor holds ``bit`` in the channel and the target
    is in that channel's room (404 otherwise)."""
    perms, _channel = await permissions.channel_permissions(actor, channel_id)
    require(perms, bit)
    member = members.get(target)
    if member is None or member.channel_id != channel_id:
        raise NotFound("that user is not in this voice channel")
    return member


def stats_event(member: Member, d: Mapping[str, Any]) -> dict[str, Any]:
    """``voice_user_stats`` from a client's ``voice_stats {latency_ms, packet_loss, jitter_ms}``
    (numbers 0..1e6), or VoiceError."""
    out: dict[str, Any] = {"channel_id": member.channel_id, "user_id": member.user_id}
    for key in ("latency_ms", "packet_loss", "jitter_ms"):
        value = d.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1e6:
            raise VoiceError("validation_error", f"voice_stats needs a number d.{key}")
        out[key] = value
    return out
