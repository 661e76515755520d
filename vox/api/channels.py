"""/api/v1/channels/*: edit and delete guild channels, their permission overrides, and the
caller's permissions in a channel (protocol.md section 3).

A channel the caller cannot VIEW_CHANNEL answers 404 on every route, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Blueprint, Response

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import identity
from vox.api.guilds import Bits, Id, Name, Position, changes_of, no_content
from vox.api.spec import documented

bp = Blueprint("channels", __name__, url_prefix="/api/v1/channels")

_UNSET: Any = msgspec.UNSET


class ChannelPatch(msgspec.Struct):
    name: Name | msgspec.UnsetType = _UNSET
    category_id: Id | msgspec.UnsetType | None = _UNSET
    position: Position | msgspec.UnsetType = _UNSET


class OverrideBody(msgspec.Struct):
    allow: Bits
    deny: Bits


@bp.patch("/<channel_id>")
@documented("Change a channel", body=ChannelPatch)
async def patch_channel(channel_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(ChannelPatch)
    return await ctx().guilds.update_channel(who.user_id, channel_id, changes_of(body))


@bp.delete("/<channel_id>")
@documented("Delete a channel", ok=204, returns="none")
async def delete_channel(channel_id: str) -> Response:
    who = await identity()
    c = ctx()
    await c.blobs.delete_many(await c.guilds.delete_channel(who.user_id, channel_id))
    return no_content()


@bp.get("/<channel_id>/overrides")
@documented("Permission overrides of a channel", returns="array")
async def overrides(channel_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().roles.overrides(who.user_id, channel_id)


@bp.put("/<channel_id>/overrides/<role_id>")
@documented("Set a role's permission override on a channel", body=OverrideBody)
async def put_override(channel_id: str, role_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(OverrideBody)
    return await ctx().roles.set_override(who.user_id, channel_id, role_id, body.allow, body.deny)


@bp.delete("/<channel_id>/overrides/<role_id>")
@documented("Remove a role's permission override", ok=204, returns="none")
async def delete_override(channel_id: str, role_id: str) -> Response:
    who = await identity()
    await ctx().roles.delete_override(who.user_id, channel_id, role_id)
    return no_content()


@bp.get("/<channel_id>/permissions/@me")
@documented("My effective permissions in a channel")
async def my_permissions(channel_id: str) -> dict[str, int]:
    who = await identity()
    return {"permissions": await ctx().guilds.my_permissions(who.user_id, channel_id)}
