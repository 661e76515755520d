"""/api/v1/auth/*: register, login, MFA, refresh, logout, sessions (protocol.md section 2)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint, Response

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import client_info, identity, limit_by_ip
from vox.api.spec import documented
from vox.errors import NotFound

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")

Username = Annotated[str, msgspec.Meta(min_length=2, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=128)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Opaque = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class RegisterBody(msgspec.Struct):
    username: Username
    password: Password
    email: Email | None = None
    invite_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class LoginBody(msgspec.Struct):
    # Login accepts any username shape up to the limit: an old account must never be locked out
    # by a later rule change, and the answer for a bad shape is the same 401 as a wrong password.
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class MfaVerifyBody(msgspec.Struct):
    mfa_token: Opaque
    code: Code


class RefreshBody(msgspec.Struct):
    refresh_token: Opaque


class CodeBody(msgspec.Struct):
    code: Code


@bp.post("/register")
@documented("Create an account", body=RegisterBody, auth=False, ok=201)
async def register() -> tuple[dict[str, Any], int]:
    await limit_by_ip("auth")
    body = await json_body(RegisterBody)
    c = ctx()
    user_id, _, guild_id = await c.auth.register(body.username, body.password, body.email, body.invite_code)
    if guild_id is not None:
        # The invite was consumed atomically with the account; now tell the guild.
        await c.invites.announce_join(user_id, guild_id)
    return {"user_id": user_id}, 201


@bp.post("/login")
@documented("Log in with username and password", body=LoginBody, auth=False)
async def login() -> dict[str, Any]:
    await limit_by_ip("auth")
    body = await json_body(LoginBody)
    return await ctx().auth.login(body.username, body.password, client_info())


@bp.post("/mfa/verify")
@documented("Finish a login with a TOTP or recovery code", body=MfaVerifyBody, auth=False)
async def mfa_verify() -> dict[str, Any]:
    await limit_by_ip("auth")
    body = await json_body(MfaVerifyBody)
    return await ctx().auth.verify_mfa(body.mfa_token, body.code)


@bp.post("/refresh")
@documented("Exchange a refresh token for new tokens", body=RefreshBody, auth=False)
async def refresh() -> dict[str, Any]:
    await limit_by_ip("auth")
    body = await json_body(RefreshBody)
    return await ctx().auth.refresh(body.refresh_token)


@bp.post("/logout")
@documented("Revoke the current session", ok=204, returns="none")
async def logout() -> Response:
    who = await identity()
    await ctx().auth.revoke(who, who.session_id)
    return Response(b"", status=204)


@bp.get("/sessions")
@documented("List my sessions", returns="array")
async def sessions() -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().auth.sessions(who)


@bp.delete("/sessions/<session_id>")
@documented("Revoke one of my sessions", ok=204, returns="none")
async def revoke_session(session_id: str) -> Response:
    who = await identity()
    if len(session_id) > 64 or not await ctx().auth.revoke(who, session_id):
        raise NotFound("no such session")
    return Response(b"", status=204)


@bp.post("/mfa/setup")
@documented("Start TOTP enrolment")
async def mfa_setup() -> dict[str, str]:
    who = await identity()
    return await ctx().auth.mfa_setup(who)


@bp.post("/mfa/enable")
@documented("Turn TOTP on with a first code", body=CodeBody, ok=204, returns="none")
async def mfa_enable() -> Response:
    who = await identity()
    body = await json_body(CodeBody)
    await ctx().auth.mfa_enable(who, body.code)
    return Response(b"", status=204)


@bp.post("/mfa/disable")
@documented("Turn TOTP off", body=CodeBody, ok=204, returns="none")
async def mfa_disable() -> Response:
    who = await identity()
    body = await json_body(CodeBody)
    await ctx().auth.mfa_disable(who, body.code)
    return Response(b"", status=204)
