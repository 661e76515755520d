"""The REST answer to a connection over the limits: 503 ``server_full``, over HTTP/1.1 or h2.

A refused connection never reaches hypercorn (vox.transports.http_guard), so the answer is written
here, with the security headers every other answer carries (vox.transports.http_headers, the one
``HeaderPolicy`` of the listener), ``Retry-After`` and the JSON error shape:

- HTTP/1.1: after the request head (or the header timeout), the response with
  ``Connection: close``; then the socket is half-closed and drained briefly, so unread request
  bytes do not turn the close into a reset that destroys the answer;
- h2 (negotiated by ALPN over TLS): a client sends the connection preface and starts streams at
  once, so raw HTTP/1.1 bytes would be a protocol error to it. The refusal runs h2's state machine:
  the server preface, then a 503 on every stream opened in the first batch of requests, then
  GOAWAY naming the last answered stream (NO_ERROR: those requests were answered; a client retries
  anything later elsewhere). A client that opens no stream before the timeout gets GOAWAY with
  REFUSED_STREAM.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import msgspec
import trio

from vox.transports.http_headers import HeaderPolicy, with_security_headers

__all__ = ["REFUSAL_RETRY_AFTER_S", "refuse", "server_full_body", "server_full_h1"]

REFUSAL_RETRY_AFTER_S = 5
# Most of a request head read before a refusal is answered (hypercorn's own limit is the same).
_REFUSAL_HEAD_BYTES = 16 * 1024
# A refused client gets this long after the answer to read it before the socket is closed.
_REFUSAL_LINGER_S = 1.0
_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError)


def server_full_body() -> bytes:
    return msgspec.json.encode(
        {"error": {"code": "server_full", "message": "too many connections; retry later"}}
    )


def _headers(policy: HeaderPolicy, body: bytes) -> list[tuple[bytes, bytes]]:
    base = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(REFUSAL_RETRY_AFTER_S).encode()),
    ]
    return with_security_headers(base, policy)


def _title(name: bytes) -> bytes:
    return b"-".join(part.capitalize() for part in name.split(b"-"))


def server_full_h1(policy: HeaderPolicy) -> bytes:
    """The whole HTTP/1.1 refusal, head and body."""
    body = server_full_body()
    lines = [b"HTTP/1.1 503 Service Unavailable"]
    lines += [_title(k) + b": " + v for k, v in _headers(policy, body)]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _negotiated_h2(stream: Any) -> bool:
    selected = getattr(stream, "selected_alpn_protocol", None)
    return callable(selected) and selected() == "h2"


async def refuse(stream: Any, policy: HeaderPolicy, head_timeout_s: float) -> None:
    """Answer 503 server_full on ``stream`` (TLS already established, if any), then close it."""
    with contextlib.suppress(*_ERRORS):
        if _negotiated_h2(stream):
            await _refuse_h2(stream, policy, head_timeout_s)
        else:
            await _refuse_h1(stream, policy, head_timeout_s)
        with trio.move_on_after(head_timeout_s):
            with contextlib.suppress(AttributeError):
                await stream.send_eof()
            with trio.move_on_after(_REFUSAL_LINGER_S):
                while await stream.receive_some(4096):
                    pass
    await trio.aclose_forcefully(stream)


async def _refuse_h1(stream: Any, policy: HeaderPolicy, head_timeout_s: float) -> None:
    with trio.move_on_after(head_timeout_s):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _REFUSAL_HEAD_BYTES:
            data = await stream.receive_some(4096)
            if not data:
                break
            head += data
    with trio.move_on_after(head_timeout_s):
        await stream.send_all(server_full_h1(policy))


async def _refuse_h2(stream: Any, policy: HeaderPolicy, head_timeout_s: float) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    body = server_full_body()
    headers = [(b":status", b"503"), *_headers(policy, body)]
    answered = 0
    with trio.move_on_after(head_timeout_s):
        await stream.send_all(conn.data_to_send())
        while not answered:
            data = await stream.receive_some(65536)
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                break  # h2 queued its own GOAWAY (PROTOCOL_ERROR); it is sent below
            for event in events:
                if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                    answered = max(answered, _answer(conn, event.stream_id, headers, body))
            await stream.send_all(conn.data_to_send())
    if conn.state_machine.state is not h2.connection.ConnectionState.CLOSED:
        code = h2.errors.ErrorCodes.NO_ERROR if answered else h2.errors.ErrorCodes.REFUSED_STREAM
        conn.close_connection(error_code=code, last_stream_id=answered)
    with trio.move_on_after(head_timeout_s):
        await stream.send_all(conn.data_to_send())


def _answer(
    conn: h2.connection.H2Connection, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> int:
    # A client that advertised a window too small for the body still gets the status.
    fits = conn.local_flow_control_window(stream_id) >= len(body)
    sent = headers if fits else [h for h in headers if h[0] != b"content-length"]
    conn.send_headers(stream_id, sent, end_stream=not fits)
    if fits:
        conn.send_data(stream_id, body, end_stream=True)
    return stream_id
