"""/api/v1/dms/{channel_id}/call: DM calls (protocol.md section 8, docs/protocol.md "DM calls").

Every route authenticates, and the service checks that the caller is a recipient of the DM
(404 otherwise) before it reads the call. Each returns the call object.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from vox.api import ctx
from vox.api.guard import identity
from vox.api.spec import documented

bp = Blueprint("calls", __name__, url_prefix="/api/v1/dms/<channel_id>/call")


@bp.post("")
@documented("Start a call in a DM", ok=201)
async def start_call(channel_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    return await ctx().calls.start(who.user_id, channel_id), 201


@bp.post("/join")
@documented("Join the ringing call of a DM")
async def join_call(channel_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().calls.join(who.user_id, channel_id)


@bp.post("/decline")
@documented("Decline the call of a DM")
async def decline_call(channel_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().calls.decline(who.user_id, channel_id)


@bp.post("/leave")
@documented("Leave the call of a DM")
async def leave_call(channel_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().calls.leave(who.user_id, channel_id)


@bp.get("")
@documented("The call of a DM")
async def get_call(channel_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().calls.get(who.user_id, channel_id)
