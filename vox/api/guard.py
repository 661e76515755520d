"""Authentication and rate limiting for routes: called first, before any data is read."""

from __future__ import annotations

from quart import g, request

from vox.api import ctx
from vox.errors import Unauthorized
from vox.services.auth import ClientInfo, Identity

MAX_USER_AGENT = 512


def client_info() -> ClientInfo:
    agent = request.headers.get("User-Agent")
    return ClientInfo(ip=request.remote_addr, user_agent=agent[:MAX_USER_AGENT] if agent else None)


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization header")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <access_token>'")
    return token.strip()


async def identity() -> Identity:
    """Authenticate the request, then charge the caller's per-user API bucket."""
    c = ctx()
    who = await c.auth.authenticate(bearer_token())
    g.rate = await c.limiter.take("api", who.user_id)
    return who


async def limit_by_ip(klass: str) -> None:
    g.rate = await ctx().limiter.take(klass, request.remote_addr or "unknown")
