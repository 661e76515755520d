"""Abuse limits over real sockets: connections per address and in total, frame and queue sizes,
request bodies (docs/operations.md "Limits and timeouts")."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url, open_websocket_url

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api
from tests.e2e.helpers import close_code, db_rows, gateway, next_frame
from tests.e2e.test_slow_clients import open_connections, wait_closed


async def _raw_rest(d: Daemon) -> trio.SocketStream:
    return await trio.open_tcp_stream(d.addresses.host, d.addresses.rest_port)


async def read_response(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw connection."""
    raw = b""
    with trio.fail_after(20):
        while b"\r\n\r\n" not in raw:
            data = await stream.receive_some(65536)
            assert data, f"closed before a response: {raw!r}"
            raw += data
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            data = await stream.receive_some(65536)
            assert data, "closed mid-body"
            body += data
    return int(lines[0].split()[1]), headers, body


async def get_healthz(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return await read_response(stream)


async def _metrics(d: Daemon) -> str:
    async with d.http() as client:
        return (await client.get("/metrics")).text


def refused(text: str, listener: str, reason: str) -> int:
    found = re.search(
        rf'^vox_connections_refused_total\{{listener="{listener}",reason="{reason}"\}} (\S+)$', text, re.M
    )
    return 0 if found is None else int(float(found.group(1)))


async def test_rest_connections_per_ip_and_in_total(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_connections_per_ip=3, max_connections=100)
    held = [await _raw_rest(d) for _ in range(3)]
    for stream in held:
        assert (await get_healthz(stream))[0] == 200  # answered: admitted and counted
    extra = await _raw_rest(d)
    await extra.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(20):
        raw = await wait_closed(extra)  # answered, then closed by the server
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"Retry-After: 5" in head and b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "server_full"
    await extra.aclose()
    # A freed slot is usable again (once the server has seen the close).
    await held.pop().aclose()
    with trio.fail_after(20):
        while True:
            again = await _raw_rest(d)
            await again.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await read_response(again)
            if status == 200:
                held.append(again)
                break
            await again.aclose()
            await trio.sleep(0.2)
    for stream in held:
        await stream.aclose()
    # Per address, counted separately from the total; the metrics scrape itself needs a slot.
    with trio.fail_after(20):
        while refused(text := await _metrics(d), "rest", "per_ip") < 1:
            await trio.sleep(0.2)
    assert refused(text, "rest", "total") == 0
    d.stop.set()


async def test_rest_total_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_connections=2)
    held = [await _raw_rest(d) for _ in range(2)]
    for stream in held:
        assert (await get_healthz(stream))[0] == 200
    extra = await _raw_rest(d)
    await extra.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(20):
        raw = await wait_closed(extra)
    assert raw.startswith(b"HTTP/1.1 503")
    await extra.aclose()
    # The counters say why (read over one of the admitted connections).
    await held[0].send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(held[0])
    assert status == 200
    assert refused(body.decode(), "rest", "total") == 1
    assert open_connections(body.decode(), "rest") == 2
    for stream in held:
        await stream.aclose()
    d.stop.set()


async def _hello(d: Daemon, nursery: trio.Nursery) -> WebSocketConnection | None:
    """A gateway connection that got hello, or None when the server closed it with 4012."""
    ws = await connect_websocket_url(nursery, d.gateway)
    try:
        frame = await next_frame(ws)
    except ConnectionClosed as exc:
        assert exc.reason.code == 4012, exc.reason
        return None
    assert frame["type"] == "hello"
    return ws


async def test_gateway_connections_per_ip(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_connections_per_ip=2)
    first, second = await _hello(d, nursery), await _hello(d, nursery)
    assert first is not None and second is not None
    async with open_websocket_url(d.gateway, subprotocols=["vox.v1"]) as third:
        assert await close_code(third, timeout=20) == 4012  # handshake completed, then 4012
    await first.aclose()
    with trio.fail_after(20):
        while (again := await _hello(d, nursery)) is None:
            await trio.sleep(0.2)
    text = await _metrics(d)
    assert refused(text, "gateway", "per_ip") >= 1
    assert 'vox_gateway_closes_total{code="4012"}' in text
    await again.aclose()
    await second.aclose()
    d.stop.set()


async def test_gateway_total_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_gateway_connections=1)
    first = await _hello(d, nursery)
    assert first is not None
    async with open_websocket_url(d.gateway) as second:
        assert await close_code(second, timeout=20) == 4012
    assert refused(await _metrics(d), "gateway", "total") == 1
    await first.aclose()
    d.stop.set()


async def test_oversized_gateway_frame_closes_1009(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path)
    async with gateway(d) as (ws, _):
        # Just under the limit is a frame like any other (an unknown type: 4001 would close;
        # a heartbeat is answered).
        padded = json.dumps({"type": "heartbeat", "d": {"pad": "x" * (64 * 1024 - 64)}})
        assert len(padded) <= 64 * 1024
        await ws.send_message(padded)
        assert (await next_frame(ws))["type"] == "heartbeat_ack"
        await ws.send_message("x" * (64 * 1024 + 1))
        assert await close_code(ws) == 1009
    d.stop.set()


def _raw_identified_reader(d: Daemon, token: str) -> socket.socket:
    """A raw gateway client with a tiny receive window that identifies and then never reads."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((d.addresses.host, d.addresses.gateway_port))
    raw.sendall(
        b"GET /gateway HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    raw.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += raw.recv(1024)
    assert answer.startswith(b"HTTP/1.1 101")
    payload = json.dumps({"type": "identify", "d": {"token": token}}).encode()
    header = b"\x81" + bytes([0x80 | 126]) + len(payload).to_bytes(2, "big") + b"\x00\x00\x00\x00"
    raw.sendall(header + payload)
    return raw


async def test_slow_gateway_reader_is_closed_by_the_queue_bound(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The byte bound is what cuts here (512 frames of 4 KB would need far more events).
    d = await start_daemon(nursery, tmp_path, rate_limits="api=1000000/1", gateway_queue_bytes=64 * 1024)
    async with d.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        sleeper = await api.user("sleeper")
        guild = await api.guild(owner)
        await api.join(owner, sleeper, guild["id"])
        channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
        raw = await trio.to_thread.run_sync(_raw_identified_reader, d, sleeper.token)
        try:
            cut = False
            big = "x" * 3900
            for i in range(1500):
                await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": f"{i} {big}"}, 201)
                if i % 25 == 24 and 'vox_gateway_closes_total{code="4008"}' in await _metrics(d):
                    cut = True
                    break
            assert cut, "a client that never reads was not closed"
            assert i < 1000, "the byte bound should cut well before the frame count"
            # Its socket is closed too (within the close and disconnect timeouts), and its slot freed.
            raw.setblocking(False)
            sock = trio.socket.from_stdlib_socket(raw)
            with trio.fail_after(30):
                while True:
                    try:
                        if not await sock.recv(65536):
                            break
                    except ConnectionResetError:
                        break
            with trio.fail_after(20):
                while open_connections(await _metrics(d), "gateway") != 0:
                    await trio.sleep(0.2)
        finally:
            raw.close()
    d.stop.set()


async def test_json_body_limits(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_request_bytes=1024)
    async with d.http() as client:
        declared = await client.post(
            "/api/v1/auth/register",
            content=b"{" + b" " * 2000 + b"}",
            headers={"content-type": "application/json"},
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
    # Chunked, no Content-Length, and never finished: the answer comes at the limit, not at the end.
    stream = await _raw_rest(d)
    await stream.send_all(
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"800\r\n" + b"{" + b" " * 2047 + b"\r\n"
    )
    status, _, body = await read_response(stream)
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    await stream.aclose()
    assert db_rows(d, "SELECT id FROM users") == []
    d.stop.set()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


async def test_upload_over_the_limit_is_413_and_stores_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_upload_bytes=64 * 1024)
    async with d.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        guild = await api.guild(owner)
        channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
        big = await client.post(
            f"/api/v1/channels/{channel}/messages/upload",
            headers=owner.h,
            files=[("file", ("big.png", PNG + b"\x00" * 200_000, "image/png"))],
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    assert db_rows(d, "SELECT id FROM messages") == []
    blobs = d.config.data_dir / "blobs"
    assert not blobs.exists() or [p for p in blobs.rglob("*") if p.is_file()] == []
    d.stop.set()
