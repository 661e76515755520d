"""Security headers and CORS for every REST response, as one ASGI wrapper around the app.

A wrapper rather than an after-request hook, so nothing escapes it: error handlers, 404s, 413s
raised before a route runs and the web client's files all pass through ``http.response.start``.

Every response gains, unless the route set its own:

- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``
  (browsers older than CSP's frame-ancestors);
- ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'``: API answers are JSON,
  nothing in them is to be run or framed. A route's own policy (the web client's, the sandbox of
  file downloads) is kept, with ``frame-ancestors 'none'`` appended when it has none;
- ``Strict-Transport-Security: max-age=N`` when the listener serves TLS, never over plaintext
  (a browser would ignore it there, and a proxy terminating TLS sets its own).

CORS (``cors_origins``, off when empty): a browser page from a listed origin may call the API. The
API authenticates with a bearer token in ``Authorization``, never cookies, so credentials are not
allowed and ``*`` is safe; a page still needs a token to do anything. With CORS on, a preflight
(``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from a listed origin is answered
here with 204; any other request from a listed origin gets ``Access-Control-Allow-Origin`` (and the
rate-limit headers exposed). Requests from other origins get no CORS header, so the browser keeps
the answer from the page; with CORS off a preflight reaches the app like any request (405).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from vox.config import Config, cors_origin_set

__all__ = ["PREFLIGHT_ROUTE", "HeaderPolicy", "SecurityHeaders", "with_security_headers"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

API_CSP = b"default-src 'none'; frame-ancestors 'none'"
CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = b"Authorization, Content-Type"
# Headers a page may read besides the CORS-safelisted ones: what a client needs to pace itself.
CORS_EXPOSE = (
    b"Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-RateLimit-Reset-After"
)
CORS_MAX_AGE_S = 600
PREFLIGHT_ROUTE = "preflight"


@dataclass(frozen=True)
class HeaderPolicy:
    hsts_max_age_s: int | None  # None: plaintext listener, no HSTS
    cors_origins: frozenset[str]

    @classmethod
    def from_config(cls, config: Config, *, tls: bool) -> HeaderPolicy:
        return cls(config.hsts_max_age_s if tls else None, cors_origin_set(config.cors_origins))

    def fixed_headers(self) -> Headers:
        """The headers every response carries (not CSP, which depends on the route's own)."""
        headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
        if self.hsts_max_age_s is not None:
            headers.append((b"strict-transport-security", f"max-age={self.hsts_max_age_s}".encode()))
        return headers

    def allowed_origin(self, origin: bytes | None) -> bytes | None:
        """The Access-Control-Allow-Origin value for a request from ``origin``; None: no CORS."""
        if origin is None or not self.cors_origins:
            return None
        if "*" in self.cors_origins:
            return b"*"
        return origin if origin.decode("latin-1") in self.cors_origins else None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def with_security_headers(headers: Iterable[tuple[bytes, bytes]], policy: HeaderPolicy) -> Headers:
    out = [(bytes(k), bytes(v)) for k, v in headers]
    present = {k.lower() for k, _ in out}
    out.extend(h for h in policy.fixed_headers() if h[0] not in present)
    for i, (key, value) in enumerate(out):
        if key.lower() == b"content-security-policy":
            if b"frame-ancestors" not in value:
                out[i] = (key, value.rstrip(b"; ") + b"; frame-ancestors 'none'")
            break
    else:
        out.append((b"content-security-policy", API_CSP))
    return out


class SecurityHeaders:
    def __init__(self, app: ASGIApp, policy: HeaderPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy
        allow = policy.allowed_origin(_header(scope, b"origin"))
        if (
            allow is not None
            and scope.get("method") == "OPTIONS"
            and _header(scope, b"access-control-request-method") is not None
        ):
            # The route label of the request metrics and access log (vox.transports.rest).
            scope["vox.route"] = PREFLIGHT_ROUTE
            await self._preflight(allow, send)
            return
        cors: Headers = []
        if allow is not None:
            cors = [(b"access-control-allow-origin", allow), (b"access-control-expose-headers", CORS_EXPOSE)]
        if policy.cors_origins and "*" not in policy.cors_origins:
            # The answer differs by Origin: a shared cache must not hand one origin's to another.
            cors.append((b"vary", b"Origin"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(message.get("headers", ()), policy) + cors
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _preflight(self, allow: bytes, send: Send) -> None:
        headers = with_security_headers(
            [
                (b"access-control-allow-origin", allow),
                (b"access-control-allow-methods", CORS_METHODS),
                (b"access-control-allow-headers", CORS_HEADERS),
                (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
                (b"vary", b"Origin"),
                (b"content-length", b"0"),
            ],
            self.policy,
        )
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
