"""A response sent before its request body has arrived (a 404 or 405 to a POST) ends the connection
cleanly instead of leaving it stuck: found by the API fuzz run, where the next request on the
connection waited until the client gave up."""

from __future__ import annotations

import trio

from tests.e2e.conftest import Daemon

BODY = b'{"name": "x"}'


async def _read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}}"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def _early_404_then_next_request(daemon: Daemon, method: bytes, path: bytes) -> bytes:
    port = int(daemon.rest.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = b"%s %s HTTP/1.1\r\nHost: vox\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        await stream.send_all(head % (method, path, len(BODY)))
        with trio.fail_after(10):
            first = await _read_response(stream)
        # The body arrives after the answer, then a second request on the same connection.
        try:
            await stream.send_all(BODY + b"GET /healthz HTTP/1.1\r\nHost: vox\r\n\r\n")
            with trio.fail_after(10):
                rest = b""
                while chunk := await stream.receive_some(65536):
                    rest += chunk
                    if rest.endswith(b"}"):
                        break
        except trio.BrokenResourceError:
            rest = b""  # closed (reset) by the server: the client reconnects
        return first + b"|" + rest


async def test_early_404_does_not_stall_the_connection(daemon: Daemon) -> None:
    out = await _early_404_then_next_request(daemon, b"POST", b"/api/v1/no/such/route")
    first, _, rest = out.partition(b"|")
    assert first.startswith(b"HTTP/1.1 404"), first
    assert b'"code":"not_found"' in first
    # The client is told not to reuse the connection, since the body it sent was not read.
    assert b"\r\nconnection: close\r\n" in first.lower(), first
    # Either the connection closed or the next request was answered; a stall fails by timeout.
    assert rest == b"" or rest.startswith(b"HTTP/1.1 200"), rest


async def test_early_405_does_not_stall_the_connection(daemon: Daemon) -> None:
    out = await _early_404_then_next_request(daemon, b"TRACE", b"/api/v1/guilds")
    first, _, rest = out.partition(b"|")
    assert first.startswith(b"HTTP/1.1 405"), first
    assert rest == b"" or rest.startswith(b"HTTP/1.1 200"), rest


async def test_an_answer_after_the_whole_body_keeps_the_connection(daemon: Daemon) -> None:
    """Only an early answer closes: a request whose body was read stays keep-alive."""
    port = int(daemon.rest.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        body = b'{"username": "", "password": ""}'
        head = b"POST /api/v1/auth/login HTTP/1.1\r\nHost: vox\r\nContent-Type: application/json\r\n"
        await stream.send_all(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        with trio.fail_after(10):
            first = await _read_response(stream)
    assert first.startswith(b"HTTP/1.1 4"), first
    assert b"connection: close" not in first.lower(), first
