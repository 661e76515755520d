"""A request body that stops arriving ends its request: 408 when nothing was answered yet.

ASGI middleware around the REST app. While the body is incomplete, each wait for its next chunk is
bounded by ``http_body_timeout_s``. When one runs out:

- if the app has not started a response, the client gets 408 ``request_timeout`` (JSON error
  shape, ``Connection: close``); a response the app tries to send afterwards is dropped;
- the app is told the client disconnected (``http.disconnect``), which cancels the request's
  handler: an upload in progress deletes what it stored and no database row was written, since
  rows are written only after the whole body was read.

hypercorn then closes the connection, since the request was never completely received. Any
HTTP/1 response started before its request body was read says ``Connection: close`` for the same
reason, so clients open a new connection instead of failing on the next request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import trio

__all__ = ["TIMEOUT_BODY", "BodyDeadline"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TIMEOUT_BODY = msgspec.json.encode(
    {"error": {"code": "request_timeout", "message": "the request body stopped arriving"}}
)


class _Exchange:
    """One request's progress, as seen through its ASGI messages."""

    __slots__ = ("body_done", "started", "timed_out")

    def __init__(self) -> None:
        self.body_done = False
        self.started = False
        self.timed_out = False


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


class BodyDeadline:
    def __init__(self, app: Any, timeout_s: float) -> None:
        # Typed loosely: Quart's ASGI signature uses TypedDict scopes this wrapper does not build.
        self.app: ASGIApp = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()

        async def guarded_receive() -> Message:
            if exchange.timed_out:
                return {"type": "http.disconnect"}
            if exchange.body_done:
                return await receive()  # waiting for the disconnect is not the body's time
            with trio.move_on_after(self.timeout_s) as waiting:
                message = await receive()
            if not waiting.cancelled_caught:
                if message["type"] != "http.request" or not message.get("more_body", False):
                    exchange.body_done = True
                return message
            exchange.timed_out = True
            if not exchange.started:
                exchange.started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": 408,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(TIMEOUT_BODY)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": TIMEOUT_BODY, "more_body": False})
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            if exchange.timed_out:
                return  # the request is over; whatever the cancelled handler still says is dropped
            if message["type"] == "http.response.start":
                exchange.started = True
                if not exchange.body_done and _has_body(scope) and scope.get("http_version") != "2":
                    # Answered before the body was read (401, 404, 413 ...): the server will close
                    # rather than skip the rest of the body, so the client must not reuse the
                    # connection; without the header it sees a disconnect on its next request.
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)
