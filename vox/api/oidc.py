"""/api/v1/auth/oidc/*: single sign-on (protocol.md section 2, "SSO (OIDC)").

The authorize and callback answers are redirects; they are never cached and send no Referer,
since the callback's Location carries the tokens and its request the code and state.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from vox.api import ctx
from vox.api.guard import client_info, limit_by_ip
from vox.api.spec import Query, documented
from vox.errors import ValidationError

bp = Blueprint("oidc", __name__, url_prefix="/api/v1/auth/oidc")

CALLBACK_PATH = "/api/v1/auth/oidc/callback"
MAX_PARAM = 4096


def _redirect(location: str) -> Response:
    response = Response(b"", status=302)
    response.headers["Location"] = location
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _param(name: str) -> str | None:
    value = request.args.get(name)
    if value is not None and len(value) > MAX_PARAM:
        raise ValidationError(f"{name} is too long", {name: f"at most {MAX_PARAM} characters"})
    return value


def callback_url() -> str:
    """Where the provider sends the browser back: this daemon's public REST URL (behind a proxy,
    set public_rest_url, and register exactly this URL with the provider)."""
    c = ctx()
    base = c.config.public_rest_url.rstrip("/")
    if not base:
        assert c.addresses is not None
        base = c.addresses.rest_url
    return base + CALLBACK_PATH


@bp.get("/providers")
@documented("SSO providers offered on the login page", auth=False, returns="array")
async def providers() -> list[dict[str, Any]]:
    await limit_by_ip("auth")
    oidc = ctx().oidc
    return await oidc.public_providers()


@bp.get("/authorize/<slug>")
@documented(
    "Start an SSO login (redirects to the provider)",
    auth=False,
    query=(Query("redirect_uri", "Where the tokens go at the end.", required=True),),
    ok=302,
    returns="redirect",
)
async def authorize(slug: str) -> Response:
    await limit_by_ip("auth")
    redirect_uri = _param("redirect_uri")
    if not redirect_uri:
        raise ValidationError("redirect_uri is required", {"redirect_uri": "required"})
    return _redirect(await ctx().oidc.authorize(slug, redirect_uri, callback_url()))


@bp.get("/callback")
@documented(
    "Where the provider sends the browser back (redirects)",
    auth=False,
    query=(
        Query("state", "The login's state."),
        Query("code", "The provider's code."),
        Query("error", "The provider's error."),
    ),
    ok=302,
    returns="redirect",
)
async def callback() -> Response:
    await limit_by_ip("auth")
    state = _param("state") or ""
    location = await ctx().oidc.callback(state, _param("code"), _param("error"), client_info())
    return _redirect(location)
