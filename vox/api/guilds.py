"""/api/v1/guilds/*: guilds, members, bans, timeouts, member roles, invites, channels,
categories, roles and the audit log (protocol.md section 3).

Thin: authenticate, parse, call a service. The services check membership and permissions before
they read anything, so a guild a caller is not in answers 404 whatever the route.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from quart import Blueprint, Response, request

from vox.api import ctx
from vox.api.bodies import json_body, query_limit
from vox.api.guard import identity
from vox.api.spec import AFTER, BEFORE, documented, limit
from vox.errors import ValidationError
from vox.protocol.permissions import ALL_PERMISSIONS
from vox.services.guilds import MEMBERS_PAGE
from vox.services.invites import MAX_EXPIRES_IN_S, MAX_USES

bp = Blueprint("guilds", __name__, url_prefix="/api/v1/guilds")

_UNSET: Any = msgspec.UNSET

# Trimmed by the services, which then require 1-100 characters; the raw bound only caps abuse.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Position = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Bits = Annotated[int, msgspec.Meta(ge=0, le=ALL_PERMISSIONS)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Icon = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Reason = Annotated[str, msgspec.Meta(max_length=512)]


class GuildCreate(msgspec.Struct):
    name: Name


class SecuritySettingsPatch(msgspec.Struct, forbid_unknown_fields=True):
    # Unknown settings are refused (400), unlike unknown body fields: a misspelt security
    # setting silently ignored would leave the guild less protected than its manager believes.
    allow_encrypted_messages: bool | msgspec.UnsetType = _UNSET


class GuildPatch(msgspec.Struct):
    name: Name | msgspec.UnsetType = _UNSET
    icon: Icon | msgspec.UnsetType | None = _UNSET
    security_settings: SecuritySettingsPatch | msgspec.UnsetType = _UNSET


class ChannelCreate(msgspec.Struct):
    name: Name
    channel_type: Literal["text", "voice"]
    category_id: Id | None = None
    position: Position | None = None


class CategoryCreate(msgspec.Struct):
    name: Name
    position: Position | None = None


class CategoryPatch(msgspec.Struct):
    name: Name | msgspec.UnsetType = _UNSET
    position: Position | msgspec.UnsetType = _UNSET


class RoleCreate(msgspec.Struct):
    name: Name
    permissions: Bits
    position: Position | None = None


class RolePatch(msgspec.Struct):
    name: Name | msgspec.UnsetType = _UNSET
    permissions: Bits | msgspec.UnsetType = _UNSET
    position: Position | msgspec.UnsetType = _UNSET


class TimeoutBody(msgspec.Struct):
    until: dt.datetime | None


class BanBody(msgspec.Struct):
    reason: Reason | None = None


class InviteCreate(msgspec.Struct):
    max_uses: Annotated[int, msgspec.Meta(ge=0, le=MAX_USES)] | None = None
    expires_in: Annotated[int, msgspec.Meta(ge=0, le=MAX_EXPIRES_IN_S)] | None = None


def changes_of(body: msgspec.Struct) -> dict[str, Any]:
    """The fields a PATCH body set (null included where the field allows it)."""
    return {f: getattr(body, f) for f in body.__struct_fields__ if getattr(body, f) is not msgspec.UNSET}


def no_content() -> Response:
    return Response(b"", status=204)


# -- guilds -------------------------------------------------------------------------------------
@bp.post("")
@documented("Create a guild", body=GuildCreate, ok=201)
async def create_guild() -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(GuildCreate)
    return await ctx().guilds.create(who.user_id, body.name), 201


@bp.get("")
@documented("My guilds", returns="array")
async def my_guilds() -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().guilds.mine(who.user_id)


@bp.get("/<guild_id>")
@documented("A guild")
async def get_guild(guild_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().guilds.view(who.user_id, guild_id)


@bp.patch("/<guild_id>")
@documented("Change a guild", body=GuildPatch)
async def patch_guild(guild_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(GuildPatch)
    changes = changes_of(body)
    if "security_settings" in changes:
        changes["security_settings"] = changes_of(changes["security_settings"])
    return await ctx().guilds.update(who.user_id, guild_id, changes)


@bp.delete("/<guild_id>")
@documented("Delete a guild", ok=204, returns="none")
async def delete_guild(guild_id: str) -> Response:
    who = await identity()
    c = ctx()
    await c.blobs.delete_many(await c.guilds.delete(who.user_id, guild_id))
    return no_content()


# -- members, bans, timeouts, member roles ------------------------------------------------------
@bp.get("/<guild_id>/members")
@documented("Members of a guild", query=(limit(MEMBERS_PAGE, MEMBERS_PAGE), AFTER), returns="array")
async def members(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    limit = query_limit(MEMBERS_PAGE, MEMBERS_PAGE)
    return await ctx().guilds.members(who.user_id, guild_id, after=request.args.get("after"), limit=limit)


@bp.get("/<guild_id>/members/<user_id>")
@documented("One member of a guild")
async def member(guild_id: str, user_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().guilds.member(who.user_id, guild_id, user_id)


@bp.delete("/<guild_id>/members/<user_id>")
@documented("Kick a member (or leave, for oneself)", ok=204, returns="none")
async def remove_member(guild_id: str, user_id: str) -> Response:
    who = await identity()
    target = who.user_id if user_id == "@me" else user_id
    await ctx().moderation.remove_member(who.user_id, guild_id, target)
    return no_content()


@bp.get("/<guild_id>/bans")
@documented("Bans of a guild", returns="array")
async def bans(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().moderation.bans(who.user_id, guild_id)


@bp.put("/<guild_id>/bans/<user_id>")
@documented("Ban a user", body=BanBody, ok=204, returns="none")
async def ban(guild_id: str, user_id: str) -> Response:
    who = await identity()
    body = await json_body(BanBody)
    reason = body.reason.strip() if body.reason else None
    await ctx().moderation.ban(who.user_id, guild_id, user_id, reason or None)
    return no_content()


@bp.delete("/<guild_id>/bans/<user_id>")
@documented("Lift a ban", ok=204, returns="none")
async def unban(guild_id: str, user_id: str) -> Response:
    who = await identity()
    await ctx().moderation.unban(who.user_id, guild_id, user_id)
    return no_content()


@bp.post("/<guild_id>/members/<user_id>/timeout")
@documented("Time a member out (or end a timeout)", body=TimeoutBody)
async def timeout(guild_id: str, user_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(TimeoutBody)
    return await ctx().moderation.timeout(who.user_id, guild_id, user_id, body.until)


@bp.put("/<guild_id>/members/<user_id>/roles/<role_id>")
@documented("Give a member a role", ok=204, returns="none")
async def add_member_role(guild_id: str, user_id: str, role_id: str) -> Response:
    who = await identity()
    await ctx().roles.set_member_role(who.user_id, guild_id, user_id, role_id, assigned=True)
    return no_content()


@bp.delete("/<guild_id>/members/<user_id>/roles/<role_id>")
@documented("Take a role from a member", ok=204, returns="none")
async def remove_member_role(guild_id: str, user_id: str, role_id: str) -> Response:
    who = await identity()
    await ctx().roles.set_member_role(who.user_id, guild_id, user_id, role_id, assigned=False)
    return no_content()


# -- invites ------------------------------------------------------------------------------------
@bp.post("/<guild_id>/invites")
@documented("Create an invite", body=InviteCreate, ok=201)
async def create_invite(guild_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(InviteCreate)
    return await ctx().invites.create(who.user_id, guild_id, body.max_uses, body.expires_in), 201


@bp.get("/<guild_id>/invites")
@documented("Invites of a guild", returns="array")
async def invites(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().invites.for_guild(who.user_id, guild_id)


# -- channels and categories --------------------------------------------------------------------
@bp.get("/<guild_id>/channels")
@documented("Channels of a guild", returns="array")
async def channels(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().guilds.channels(who.user_id, guild_id)


@bp.post("/<guild_id>/channels")
@documented("Create a channel", body=ChannelCreate, ok=201)
async def create_channel(guild_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(ChannelCreate)
    channel = await ctx().guilds.create_channel(
        who.user_id, guild_id, body.name, body.channel_type, body.category_id, body.position
    )
    return channel, 201


@bp.get("/<guild_id>/categories")
@documented("Categories of a guild", returns="array")
async def categories(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().guilds.categories(who.user_id, guild_id)


@bp.post("/<guild_id>/categories")
@documented("Create a category", body=CategoryCreate, ok=201)
async def create_category(guild_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(CategoryCreate)
    return await ctx().guilds.create_category(who.user_id, guild_id, body.name, body.position), 201


@bp.patch("/<guild_id>/categories/<category_id>")
@documented("Change a category", body=CategoryPatch)
async def patch_category(guild_id: str, category_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(CategoryPatch)
    return await ctx().guilds.update_category(who.user_id, guild_id, category_id, changes_of(body))


@bp.delete("/<guild_id>/categories/<category_id>")
@documented("Delete a category", ok=204, returns="none")
async def delete_category(guild_id: str, category_id: str) -> Response:
    who = await identity()
    await ctx().guilds.delete_category(who.user_id, guild_id, category_id)
    return no_content()


# -- roles --------------------------------------------------------------------------------------
@bp.get("/<guild_id>/roles")
@documented("Roles of a guild", returns="array")
async def roles(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().roles.roles(who.user_id, guild_id)


@bp.post("/<guild_id>/roles")
@documented("Create a role", body=RoleCreate, ok=201)
async def create_role(guild_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(RoleCreate)
    role = await ctx().roles.create(who.user_id, guild_id, body.name, body.permissions, body.position)
    return role, 201


@bp.patch("/<guild_id>/roles/<role_id>")
@documented("Change a role", body=RolePatch)
async def patch_role(guild_id: str, role_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(RolePatch)
    return await ctx().roles.update(who.user_id, guild_id, role_id, changes_of(body))


@bp.delete("/<guild_id>/roles/<role_id>")
@documented("Delete a role", ok=204, returns="none")
async def delete_role(guild_id: str, role_id: str) -> Response:
    who = await identity()
    await ctx().roles.delete(who.user_id, guild_id, role_id)
    return no_content()


# -- audit log ----------------------------------------------------------------------------------
@bp.get("/<guild_id>/audit-log")
@documented("Audit log of a guild", query=(limit(50, 100), BEFORE), returns="array")
async def audit_log(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    raw_limit = request.args.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise ValidationError("limit must be 1..100", {"limit": "must be an integer 1..100"})
    before = request.args.get("before")
    return await ctx().moderation.audit_log(who.user_id, guild_id, int(raw_limit), before)
