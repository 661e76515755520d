"""Gateway voice signaling: the ``voice_*`` client requests (protocol.md sections 6, 8 and 9).

``voice_join {transport: "quic"}`` goes to the QUIC media rooms (vox.services.media), anything
else to the WebRTC SFU; later requests of a user in a media session go to the media rooms.

The gateway connection hands every request named in ``VOICE_REQUESTS`` here. A refused request
is answered with a ``voice_error {code, message, request}`` frame to that connection; the
connection stays open (voice state races with permissions and with other devices).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from vox.context import Context
from vox.errors import APIError
from vox.protocol.gateway import control_frame
from vox.services.media import MediaService
from vox.services.voice_rules import VoiceError

__all__ = ["VOICE_REQUESTS", "voice_request"]

log = logging.getLogger("vox.voice")

VOICE_REQUESTS = frozenset(
    {
        "voice_join",
        "voice_leave",
        "voice_answer",
        "voice_ice_candidate",
        "voice_mute",
        "voice_unmute",
        "voice_screen_share_start",
        "voice_screen_share_stop",
        "voice_stats",
    }
)


async def voice_request(
    ctx: Context, user_id: str, conn_id: int, send: Callable[[str], None], type_: str, d: dict[str, Any]
) -> None:
    voice, media = ctx.voice, ctx.media
    try:
        if voice is None:
            raise VoiceError("unavailable", "voice is not available on this server")
        if type_ in ("voice_join", "voice_screen_share_start"):
            await ctx.limiter.take("voice_join", user_id)
        transport = d.get("transport", "webrtc") if type_ == "voice_join" else None
        # A user in a QUIC media session has its mute, share, stats and leave requests handled
        # there; the WebRTC-only requests (answer, ICE) answer not_in_voice from the SFU.
        quic = media is not None and (transport == "quic" or media.has_connection(user_id, conn_id))
        if type_ == "voice_leave" and media is not None and media.session(user_id) is not None:
            quic = True
        if type_ == "voice_join":
            if transport not in ("webrtc", "quic"):
                raise VoiceError("unsupported_transport", 'transport must be "webrtc" or "quic"')
            await _claim_room(ctx, d.get("channel_id"))
            if transport == "quic":
                if media is None:
                    raise VoiceError("unsupported_transport", "the QUIC media transport is not enabled")
                await media.join(user_id, d.get("channel_id"), conn_id, send)
            else:
                await voice.join(user_id, d.get("channel_id"), conn_id, send)  # type: ignore[arg-type]
        elif quic and media is not None and type_ in MEDIA_REQUESTS:
            await _media_request(media, user_id, conn_id, type_, d)
        elif type_ == "voice_leave":
            await voice.leave(user_id)
        elif type_ == "voice_answer":
            await voice.answer(user_id, conn_id, d.get("sdp"))
        elif type_ == "voice_ice_candidate":
            await voice.ice_candidate(user_id, conn_id, d)
        elif type_ in ("voice_mute", "voice_unmute"):
            await voice.set_self_muted(user_id, conn_id, type_ == "voice_mute")
        elif type_ == "voice_screen_share_start":
            await voice.screen_share_start(user_id, conn_id, d.get("quality"))
        elif type_ == "voice_screen_share_stop":
            await voice.screen_share_stop(user_id, conn_id)
        elif type_ == "voice_stats":
            await voice.stats(user_id, conn_id, d)
    except (VoiceError, APIError) as exc:
        body = exc.body() if isinstance(exc, VoiceError) else exc.body()["error"]
        log.info("voice request refused", extra={"fields": {"user_id": user_id, "request": type_, **body}})
        send(control_frame("voice_error", {"request": type_, **body}))


async def _claim_room(ctx: Context, channel_id: Any) -> None:
    """A voice room's media lives on one node (vox.services.nodes): a join that arrives at
    another node is sent to that node's gateway rather than relayed."""
    if ctx.nodes is None or not isinstance(channel_id, str) or not 0 < len(channel_id) <= 64:
        return
    elsewhere = await ctx.nodes.claim_room(channel_id)
    if elsewhere is not None:
        raise VoiceError(
            "room_elsewhere",
            "this voice channel is hosted by another node: join it over that gateway",
            gateway_url=elsewhere,
        )


MEDIA_REQUESTS = frozenset(
    {
        "voice_leave",
        "voice_mute",
        "voice_unmute",
        "voice_screen_share_start",
        "voice_screen_share_stop",
        "voice_stats",
    }
)


async def _media_request(
    media: MediaService, user_id: str, conn_id: int, type_: str, d: dict[str, Any]
) -> None:
    if type_ == "voice_leave":
        await media.leave(user_id)
    elif type_ in ("voice_mute", "voice_unmute"):
        await media.set_self_muted(user_id, conn_id, type_ == "voice_mute")
    elif type_ == "voice_screen_share_start":
        await media.screen_share_start(user_id, conn_id, d.get("quality"))
    elif type_ == "voice_screen_share_stop":
        await media.screen_share_stop(user_id, conn_id)
    elif type_ == "voice_stats":
        await media.stats(user_id, conn_id, d)
