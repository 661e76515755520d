"""/api/v1/admin/*: server administration (protocol.md section 10).

Every route except ``elevate`` needs a system admin with an elevated session; both are checked
(``_elevated``) before the body is parsed or anything is read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from quart import Blueprint, Response, request

from vox.api import ctx
from vox.api.bodies import json_body, query_limit
from vox.api.guard import identity
from vox.api.spec import AFTER, BEFORE, Query, documented, limit
from vox.errors import NotFound, ValidationError
from vox.services.auth import Identity
from vox.services.permissions import valid_id

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")

_UNSET: Any = msgspec.UNSET

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9\-]{0,31}$")]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
IconHint = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=512)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
ClientSecret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Scopes = Annotated[str, msgspec.Meta(min_length=6, max_length=512, pattern=r"^[\x21\x23-\x5B\x5D-\x7E ]+$")]


class ElevateBody(msgspec.Struct):
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=16)] | None = None


class SettingsPatch(msgspec.Struct):
    registration_policy: Literal["open", "invite_only", "closed"] | msgspec.UnsetType = _UNSET


class ProviderBody(msgspec.Struct):
    slug: Slug
    display_name: DisplayName
    issuer_url: Url
    client_id: ClientId
    client_secret: ClientSecret | None = None
    icon_hint: IconHint | None = None
    scopes: Scopes = "openid profile email"
    enabled: bool = True


class ProviderPatch(msgspec.Struct):
    slug: Slug | msgspec.UnsetType = _UNSET
    display_name: DisplayName | msgspec.UnsetType = _UNSET
    issuer_url: Url | msgspec.UnsetType = _UNSET
    client_id: ClientId | msgspec.UnsetType = _UNSET
    # null removes the secret (a public client, PKCE only).
    client_secret: ClientSecret | msgspec.UnsetType | None = _UNSET
    icon_hint: IconHint | msgspec.UnsetType | None = _UNSET
    scopes: Scopes | msgspec.UnsetType = _UNSET
    enabled: bool | msgspec.UnsetType = _UNSET


def _given(body: msgspec.Struct) -> dict[str, Any]:
    return {f: getattr(body, f) for f in body.__struct_fields__ if getattr(body, f) is not msgspec.UNSET}


def _ip() -> str | None:
    return request.remote_addr


def _id_param(name: str) -> str | None:
    value = request.args.get(name)
    if value is not None and not valid_id(value):
        raise ValidationError(f"{name} is not an id", {name: "not an id"})
    return value


async def _elevated() -> Identity:
    who = await identity()
    await ctx().admin.require_elevated(who)
    return who


@bp.post("/elevate")
@documented("Elevate an admin session (password and, with MFA, a code)", body=ElevateBody)
async def elevate() -> dict[str, Any]:
    who = await identity()
    await ctx().admin.require_admin(who)
    body = await json_body(ElevateBody)
    return await ctx().admin.elevate(who, body.password, body.code, _ip())


@bp.get("/users")
@documented(
    "List users (admin)",
    query=(limit(50, 100), AFTER, Query("q", "Username prefix, at most 32 characters.")),
    returns="array",
)
async def users() -> list[dict[str, Any]]:
    await _elevated()
    query = request.args.get("q")
    if query is not None and len(query) > 32:
        raise ValidationError("q is too long", {"q": "at most 32 characters"})
    return await ctx().admin.users(query_limit(50, 100), _id_param("after"), query or None)


@bp.post("/users/<user_id>/disable")
@documented("Disable a user account (admin)")
async def disable_user(user_id: str) -> dict[str, Any]:
    who = await _elevated()
    if not valid_id(user_id):
        raise NotFound("user not found")
    return await ctx().admin.set_disabled(who, user_id, True, _ip())


@bp.post("/users/<user_id>/enable")
@documented("Enable a user account (admin)")
async def enable_user(user_id: str) -> dict[str, Any]:
    who = await _elevated()
    if not valid_id(user_id):
        raise NotFound("user not found")
    return await ctx().admin.set_disabled(who, user_id, False, _ip())


@bp.get("/guilds")
@documented("List guilds (admin)", query=(limit(50, 100), AFTER), returns="array")
async def guilds() -> list[dict[str, Any]]:
    await _elevated()
    return await ctx().admin.guilds(query_limit(50, 100), _id_param("after"))


@bp.get("/settings")
@documented("Read instance settings (admin)")
async def settings() -> dict[str, Any]:
    await _elevated()
    return await ctx().admin.settings()


@bp.patch("/settings")
@documented("Change instance settings (admin)", body=SettingsPatch)
async def patch_settings() -> dict[str, Any]:
    who = await _elevated()
    body = await json_body(SettingsPatch)
    return await ctx().admin.update_settings(who, _given(body), _ip())


@bp.get("/oidc-providers")
@documented("List SSO providers (admin)", returns="array")
async def providers() -> list[dict[str, Any]]:
    await _elevated()
    return await ctx().oidc.admin_providers()


@bp.post("/oidc-providers")
@documented("Add an SSO provider (admin)", body=ProviderBody, ok=201)
async def create_provider() -> tuple[dict[str, Any], int]:
    who = await _elevated()
    body = await json_body(ProviderBody)
    return await ctx().oidc.create_provider(who.user_id, _given(body), _ip()), 201


@bp.patch("/oidc-providers/<key>")
@documented("Change an SSO provider (admin)", body=ProviderPatch)
async def update_provider(key: str) -> dict[str, Any]:
    who = await _elevated()
    body = await json_body(ProviderPatch)
    return await ctx().oidc.update_provider(who.user_id, key, _given(body), _ip())


@bp.delete("/oidc-providers/<key>")
@documented("Remove an SSO provider (admin)", ok=204, returns="none")
async def delete_provider(key: str) -> Response:
    who = await _elevated()
    await ctx().oidc.delete_provider(who.user_id, key, _ip())
    return Response(b"", status=204)


@bp.get("/audit-log")
@documented(
    "Instance audit log (admin)",
    query=(
        limit(50, 100),
        BEFORE,
        Query("action", "Only this action."),
        Query("actor_id", "Only this actor."),
        Query("guild_id", "Only this guild."),
    ),
    returns="array",
)
async def audit_log() -> list[dict[str, Any]]:
    await _elevated()
    action = request.args.get("action")
    if action is not None and not 0 < len(action) <= 64:
        raise ValidationError("action is too long", {"action": "1..64 characters"})
    return await ctx().admin.audit_log(
        query_limit(50, 100),
        _id_param("before"),
        action=action,
        actor_id=_id_param("actor_id"),
        guild_id=_id_param("guild_id"),
    )
