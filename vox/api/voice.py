"""/api/v1/channels/{channel_id}/voice/{user_id}/mute|deafen|move: voice moderation
(protocol.md section 8, docs/protocol.md "Voice").

``mute`` and ``deafen`` take an optional body ``{"muted": bool}`` / ``{"deafened": bool}``
(default true; false undoes it) and return the participant's state; ``move`` takes
``{"target_channel_id"}`` and returns ``{user_id, channel_id}``. A target who is not in that voice
channel is a 404.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import identity
from vox.api.spec import documented
from vox.errors import APIError
from vox.services.voice import VoiceService

bp = Blueprint("voice", __name__, url_prefix="/api/v1/channels/<channel_id>/voice/<user_id>")


class Mute(msgspec.Struct, forbid_unknown_fields=True):
    muted: bool = True


class Deafen(msgspec.Struct, forbid_unknown_fields=True):
    deafened: bool = True


class Move(msgspec.Struct, forbid_unknown_fields=True):
    target_channel_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Unavailable(APIError):
    status = 503
    code = "unavailable"


def _voice() -> VoiceService:
    voice = ctx().voice
    if voice is None:
        raise Unavailable("voice is not available on this server")
    return voice


@bp.post("/mute")
@documented("Server-mute a user in a voice channel", body=Mute)
async def mute(channel_id: str, user_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(Mute)
    return await _voice().server_mute(who.user_id, channel_id, user_id, body.muted)


@bp.post("/deafen")
@documented("Server-deafen a user in a voice channel", body=Deafen)
async def deafen(channel_id: str, user_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(Deafen)
    return await _voice().server_deafen(who.user_id, channel_id, user_id, body.deafened)


@bp.post("/move")
@documented("Move a user to another voice channel", body=Move)
async def move(channel_id: str, user_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(Move)
    return await _voice().move(who.user_id, channel_id, user_id, body.target_channel_id)
