"""The REST transport: a QuartTrio app served by hypercorn's trio worker.

This module owns everything HTTP-generic: the JSON error shape for every error (404/405/413/500
included), the per-request log line, request metrics, and the graceful drain. Routes live in
vox/api/ and call services.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import msgspec
import trio
from hypercorn.trio import serve
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from vox.api import (
    admin,
    auth,
    calls,
    channels,
    dms,
    emoji,
    federated,
    federation,
    friends,
    guilds,
    invites,
    keys,
    messages,
    oidc,
    openapi,
    ops,
    presence,
    text,
    users,
    web,
)
from vox.api import voice as voice_api
from vox.context import Context
from vox.errors import APIError
from vox.services.uploads import DEFAULT_LIMITS
from vox.transports import http_guard, tls
from vox.transports.body_deadline import BodyDeadline
from vox.transports.http_headers import HeaderPolicy, SecurityHeaders

MAX_FILES_PER_MESSAGE = DEFAULT_LIMITS.max_files

log = logging.getLogger("vox.rest")
access_log = logging.getLogger("vox.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HTTP_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return Response(msgspec.json.encode({"error": body}), status=status, content_type="application/json")


def create_app(ctx: Context) -> QuartTrio:
    app = QuartTrio("vox")
    # Werkzeug would answer a path with an empty segment ("/guilds//search") with an HTML redirect
    # to the merged path; an API client gets the 404 error shape instead. Set before any route is
    # added, since rules take the map's setting when they are bound.
    app.url_map.merge_slashes = False
    app.extensions["vox"] = ctx
    # The ceiling for any body: an upload of the most files a message may carry. JSON routes
    # enforce their own, much smaller limit (vox.api.bodies); uploads enforce per-file limits.
    app.config["MAX_CONTENT_LENGTH"] = max(
        ctx.config.max_request_bytes, ctx.config.max_upload_bytes * MAX_FILES_PER_MESSAGE + 1_048_576
    )
    app.config["JSON_SORT_KEYS"] = False
    # OPTIONS is answered by the CORS layer when CORS is on; otherwise it is a 405 like any
    # method a route does not take (an automatic 200 would look like a preflight that passed).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for blueprint in (
        *(ops.bp, auth.bp, users.bp, guilds.bp, channels.bp, invites.bp, messages.bp),
        *(dms.bp, calls.bp, friends.bp, emoji.bp, keys.bp, voice_api.bp, oidc.bp, admin.bp),
        *(presence.bp, web.bp, openapi.bp, federation.bp, federated.bp),
    ):
        app.register_blueprint(blueprint)
    openapi.install(app)
    app.before_request(text.refuse_nul_in_url)

    @app.after_request
    async def _rate_headers(response: Response) -> Response:
        decision = g.get("rate")
        if decision is not None:
            response.headers.update(decision.headers())
        return response

    @app.before_request
    async def _route_label() -> None:
        rule = request.url_rule
        cast(dict[str, Any], request.scope)["vox.route"] = rule.rule if rule is not None else "unmatched"

    @app.errorhandler(APIError)
    async def _api_error(exc: APIError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        if exc.status == 429 and "retry_after_ms" in exc.extra:
            response.headers["Retry-After"] = str(max(1, -(-int(exc.extra["retry_after_ms"]) // 1000)))
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
        message = exc.description or exc.name
        response = error_response(status, code, message)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"method": request.method, "path": request.path}},
        )
        return error_response(500, "internal_error", "internal server error")

    return app


class ObservedApp:
    """ASGI wrapper: one access-log line and metrics per request, whatever the outcome."""

    def __init__(self, app: QuartTrio | BodyDeadline | SecurityHeaders, ctx: Context) -> None:
        # Typed loosely: Quart's ASGI signature uses TypedDict scopes this wrapper does not build.
        self.app: Callable[[Scope, Receive, Send], Awaitable[None]] = cast(Any, app)
        self.metrics = ctx.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - start
            route = str(scope.get("vox.route", "unmatched"))
            method = str(scope.get("method", "?"))
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_latency.labels(method, route).observe(elapsed)
            # The path only, never the query string: OIDC callbacks carry codes there.
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": method,
                        "path": scope.get("path", ""),
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": (scope.get("client") or ("?",))[0],
                    }
                },
            )


async def serve_rest(ctx: Context, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve REST until ``ctx.draining`` is set, then let in-flight requests finish (up to the grace)."""
    tls_context = tls.server_context(ctx.tls, alpn=tls.REST_ALPN) if ctx.tls else None
    cfg = tls.hypercorn_config(tls_context)
    host = ctx.config.host
    cfg.bind = [f"[{host}]:{ctx.config.rest_port}" if ":" in host else f"{host}:{ctx.config.rest_port}"]
    cfg.graceful_timeout = ctx.config.shutdown_grace_s
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    policy = HeaderPolicy.from_config(ctx.config, tls=tls_context is not None)
    http_guard.configure(cfg, ctx, policy)
    # Observed outermost, so the answers the header layer gives itself (CORS preflights) are
    # logged and counted like any other request, once.
    app = ObservedApp(
        SecurityHeaders(BodyDeadline(create_app(ctx), ctx.config.http_body_timeout_s), policy), ctx
    )
    http_guard.install()

    class _Status:
        def started(self, binds: list[str]) -> None:
            port = int(binds[0].rsplit(":", 1)[1])
            task_status.started(port)

    await serve(app, cfg, shutdown_trigger=ctx.draining.wait, task_status=_Status())  # type: ignore[arg-type]
