"""/api/v1/users/*: the caller's profile and public profiles."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import identity
from vox.api.spec import documented
from vox.errors import NotFound, ValidationError
from vox.services.permissions import valid_id
from vox.services.users import own_user, public_user

bp = Blueprint("users", __name__, url_prefix="/api/v1/users")

_UNSET: Any = msgspec.UNSET


class ProfilePatch(msgspec.Struct):
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | msgspec.UnsetType | None = (
        _UNSET
    )
    avatar: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | msgspec.UnsetType | None = _UNSET


@bp.get("/@me")
@documented("My profile")
async def me() -> dict[str, Any]:
    who = await identity()
    row = await ctx().store.accounts.user_by_id(who.user_id)
    if row is None:
        raise NotFound("user not found")
    return own_user(row)


@bp.patch("/@me")
@documented("Change my profile", body=ProfilePatch)
async def patch_me() -> dict[str, Any]:
    who = await identity()
    body = await json_body(ProfilePatch)
    changes = {
        f: getattr(body, f) for f in ("display_name", "avatar") if getattr(body, f) is not msgspec.UNSET
    }
    if isinstance(changes.get("display_name"), str) and not changes["display_name"].strip():
        raise ValidationError("display_name cannot be blank", {"display_name": "blank"})
    c = ctx()
    before = await c.store.accounts.user_by_id(who.user_id)
    row = await c.store.accounts.update_profile(who.user_id, changes)
    if row is None or before is None:
        raise NotFound("user not found")
    diff = {k: row[k] for k in changes if before[k] != row[k]}
    await c.presence.user_patched(who.user_id, diff)
    return own_user(row)


@bp.get("/<user_id>")
@documented("A user's public profile")
async def get_user(user_id: str) -> dict[str, Any]:
    await identity()
    row = await ctx().store.accounts.user_by_id(user_id) if valid_id(user_id) else None
    if row is None:
        raise NotFound("user not found")
    return public_user(row)
