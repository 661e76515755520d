"""The browser client: static files from vox/web/, served at ``/`` (protocol.md section 0).

The files are plain ES modules read from the package at request time (they are small, and
reading them each time keeps an edited checkout current without a restart). Every answer carries
a Content-Security-Policy that lets the page load scripts and styles from this origin only and
connect to this origin and the gateway, so injected markup can neither run code nor send tokens
elsewhere. docs/web-client.md explains the choices.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
from quart import Blueprint, Response

from vox.api import ctx
from vox.errors import NotFound

bp = Blueprint("web", __name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".webmanifest": "application/manifest+json",
}
# One directory level at most and no dot segments: the URL can only name a shipped file.
_SAFE_NAME = re.compile(r"^(?:[a-z0-9_-]+/)?[a-z0-9_-]+\.[a-z]+$")


def gateway_url() -> str:
    c = ctx()
    addrs = c.addresses
    return c.config.public_gateway_url or (addrs.gateway_url if addrs else "")


def content_security_policy(gateway: str) -> str:
    # img-src/media-src allow blob: because attachments need the bearer token: the page fetches
    # them and shows object URLs. Voice needs no CSP entry (WebRTC is not covered by connect-src).
    connect = "'self'" + (f" {gateway}" if gateway else "")
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob: data:",
            "media-src 'self' blob:",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def _headers(content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Content-Security-Policy": content_security_policy(gateway_url()),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # SSO sends tokens back in the query string of the page's URL: never leak it onward.
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "microphone=(self), display-capture=(self)",
        # Revalidate every time: an upgraded daemon must not run against last version's modules.
        "Cache-Control": "no-cache",
    }


async def _file(name: str) -> Response:
    suffix = Path(name).suffix
    if not _SAFE_NAME.match(name) or suffix not in _TYPES:
        raise NotFound("no such file")
    path = trio.Path(WEB_ROOT / name)
    if not await path.is_file():
        raise NotFound("no such file")
    return Response(await path.read_bytes(), status=200, headers=_headers(_TYPES[suffix]))


@bp.get("/")
async def index() -> Response:
    return await _file("index.html")


@bp.get("/web/<path:name>")
async def static_file(name: str) -> Response:
    return await _file(name)
