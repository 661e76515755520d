"""/api/v1/invites/{code}: preview, join, revoke (protocol.md section 3)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from vox.api import ctx
from vox.api.guard import identity
from vox.api.guilds import no_content
from vox.api.spec import documented

bp = Blueprint("invites", __name__, url_prefix="/api/v1/invites")


@bp.get("/<code>")
@documented("Preview an invite")
async def preview(code: str) -> dict[str, Any]:
    await identity()
    return await ctx().invites.preview(code)


@bp.post("/<code>")
@documented("Join a guild through an invite")
async def join(code: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().invites.join(who.user_id, code)


@bp.delete("/<code>")
@documented("Revoke an invite", ok=204, returns="none")
async def revoke(code: str) -> Response:
    who = await identity()
    await ctx().invites.revoke(who.user_id, code)
    return no_content()
