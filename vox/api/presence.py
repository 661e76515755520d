"""/api/v1/guilds/{id}/presences (beyond the contract): the current presence of a guild's members.

The gateway only announces changes (`presence_update`), so a client opening a member list needs
the state at that moment once; afterwards the events keep it current.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from vox.api import ctx
from vox.api.bodies import query_limit
from vox.api.guard import identity
from vox.api.spec import AFTER, documented, limit

bp = Blueprint("presence", __name__, url_prefix="/api/v1")

MAX_LIMIT = 1000


@bp.get("/guilds/<guild_id>/presences")
@documented("Presences of a guild's members", query=(limit(MAX_LIMIT, MAX_LIMIT), AFTER), returns="array")
async def guild_presences(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    c = ctx()
    members = await c.guilds.members(
        who.user_id, guild_id, after=request.args.get("after"), limit=query_limit(MAX_LIMIT, MAX_LIMIT)
    )
    return [await c.presence.status_of(m["user"]["id"]) for m in members]
