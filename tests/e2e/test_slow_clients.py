"""Slow and silent clients are closed by timeouts, over real sockets, while normal clients work.

Timeouts are set to a few seconds; the margins are generous (the machine may be loaded).
"""

from __future__ import annotations

import json
import re
import resource
import socket
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User
from tests.e2e.helpers import close_code, db_rows, gateway, next_frame

SILENT_PER_LISTENER = 500
# File descriptors the big test needs: both ends of every silent socket, plus the daemon's own.
FDS_NEEDED = 4 * SILENT_PER_LISTENER + 1024


def open_connections(text: str, listener: str) -> int:
    found = re.search(rf'^vox_connections\{{listener="{listener}"\}} (\S+)$', text, re.M)
    assert found is not None, f"no vox_connections gauge for {listener}"
    return int(float(found.group(1)))


async def wait_closed(stream: trio.SocketStream) -> bytes:
    """Read until the server closes the connection (EOF or reset); return what it sent."""
    got = b""
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return got
            got += data
    except trio.BrokenResourceError:
        return got


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _message_roundtrip(d: Daemon, owner: User, channel: str, count: int) -> None:
    """A normal client: a new REST connection sends messages; its gateway receives each one."""
    async with gateway(d, owner.token) as (ws, ready):
        assert ready is not None and ready["type"] == "ready"
        async with d.http() as fresh:
            for i in range(count):
                sent = await fresh.post(
                    f"/api/v1/channels/{channel}/messages", headers=owner.h, json={"content": f"hi {i}"}
                )
                assert sent.status_code == 201, sent.text
                while True:
                    frame = await next_frame(ws, timeout=20)
                    if frame["type"] == "message_new":
                        assert frame["d"]["content"] == f"hi {i}"
                        break


async def test_a_thousand_silent_connections_are_closed_while_a_client_keeps_working(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    raise_fd_limit(FDS_NEEDED)
    timeout = 5.0
    d = await start_daemon(
        nursery,
        tmp_path,
        http_header_timeout_s=timeout,
        ws_handshake_timeout_s=timeout,
        max_connections_per_ip=2 * SILENT_PER_LISTENER,
        max_connections=4 * SILENT_PER_LISTENER,
        max_gateway_connections=4 * SILENT_PER_LISTENER,
    )
    host = d.addresses.host
    async with d.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        guild = await api.guild(owner)
        channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
        before = (await client.get("/metrics")).text
        rest_baseline, gateway_baseline = (
            open_connections(before, "rest"),
            open_connections(before, "gateway"),
        )

        silent: list[tuple[str, trio.SocketStream, float]] = []
        for _ in range(SILENT_PER_LISTENER):
            silent.append(
                ("rest", await trio.open_tcp_stream(host, d.addresses.rest_port), trio.current_time())
            )
            gw = await trio.open_tcp_stream(host, d.addresses.gateway_port)
            silent.append(("gateway", gw, trio.current_time()))
        closed_after: dict[int, float] = {}
        answers: dict[int, bytes] = {}

        async def watch(index: int, stream: trio.SocketStream, opened: float) -> None:
            with trio.fail_after(timeout + 60):
                answers[index] = await wait_closed(stream)
            closed_after[index] = trio.current_time() - opened
            await stream.aclose()

        async with trio.open_nursery() as watchers:
            for index, (_, stream, opened) in enumerate(silent):
                watchers.start_soon(watch, index, stream, opened)
            # Meanwhile: the server holds them all, and a normal client works as usual.
            with trio.fail_after(timeout - 0.5):
                while True:
                    during = (await client.get("/metrics")).text
                    if (
                        open_connections(during, "rest") >= rest_baseline + SILENT_PER_LISTENER
                        and open_connections(during, "gateway") >= gateway_baseline + SILENT_PER_LISTENER
                    ):
                        break
                    await trio.sleep(0.1)
            await _message_roundtrip(d, owner, channel, 5)

        assert len(closed_after) == len(silent)
        assert all(answer == b"" for answer in answers.values()), "silent sockets get no answer"
        for kind in ("rest", "gateway"):
            waits = [closed_after[i] for i, (k, _, _) in enumerate(silent) if k == kind]
            # Closed by the timeout: not before it, and not long after it.
            assert min(waits) >= timeout - 0.2, (kind, min(waits))
            assert max(waits) <= timeout + 60, (kind, max(waits))

        with trio.fail_after(30):
            while True:
                after = (await client.get("/metrics")).text
                if (
                    open_connections(after, "rest") == rest_baseline
                    and open_connections(after, "gateway") == gateway_baseline
                ):
                    break
                await trio.sleep(0.2)
        # Silent sockets are closed quietly; none of them was refused.
        assert 'vox_connections_refused_total{listener="rest",reason="per_ip"} 0.0' in after
    d.stop.set()


async def _raw_rest(d: Daemon) -> trio.SocketStream:
    return await trio.open_tcp_stream(d.addresses.host, d.addresses.rest_port)


async def test_dribbled_headers_are_cut_by_the_header_timeout(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, http_header_timeout_s=2.0, http_keepalive_timeout_s=30.0)
    stream = await _raw_rest(d)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    start = trio.current_time()
    got = b""
    with trio.fail_after(20):
        try:
            for i in range(100):  # one header byte every 0.25 s: never a complete head
                await stream.send_all(b"X-Slow: %d\r\n" % i)
                await trio.sleep(0.25)
            pytest.fail("a head dribbled for 25 s was never cut")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except OSError:
            pass
        got = await wait_closed(stream)
    elapsed = trio.current_time() - start
    assert got == b"" and 1.8 <= elapsed <= 15, elapsed
    await stream.aclose()

    # On a kept-alive connection, the head clock starts at the next request's first byte.
    stream = await _raw_rest(d)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in first:
            first += await stream.receive_some(4096)
    assert first.startswith(b"HTTP/1.1 200")
    await trio.sleep(3)  # idle longer than the header timeout: only keep-alive applies here
    await stream.send_all(b"GET /healthz HTTP/1.1\r\n")
    start = trio.current_time()
    with trio.fail_after(20):
        rest = await wait_closed(stream)
    elapsed = trio.current_time() - start
    assert b"HTTP/1.1" not in rest.split(b"\r\n\r\n", 1)[-1]
    assert 1.8 <= elapsed <= 15, elapsed
    await stream.aclose()
    d.stop.set()


async def test_idle_keepalive_connection_is_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, http_keepalive_timeout_s=2.0)
    stream = await _raw_rest(d)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    start = trio.current_time()
    with trio.fail_after(20):
        got = await wait_closed(stream)
    assert got.startswith(b"HTTP/1.1 200")
    assert 1.8 <= trio.current_time() - start <= 15
    await stream.aclose()
    d.stop.set()


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_stalled_json_body_gets_408_and_writes_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, http_body_timeout_s=2.0)
    body = json.dumps({"username": "stalled", "password": "correct horse battery"}).encode()
    stream = await _raw_rest(d)
    await stream.send_all(
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
    )
    start = trio.current_time()
    with trio.fail_after(20):
        raw = await wait_closed(stream)
    status, headers, answer = _response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(answer)["error"]["code"] == "request_timeout"
    assert 1.8 <= trio.current_time() - start <= 15
    await stream.aclose()
    assert db_rows(d, "SELECT id FROM users WHERE username = 'stalled'") == []
    # The listener is unharmed.
    async with d.http() as client:
        assert (await client.get("/healthz")).status_code == 200
    d.stop.set()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


async def test_stalled_upload_leaves_no_blob_and_no_row(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, http_body_timeout_s=2.0)
    async with d.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        guild = await api.guild(owner)
        channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
    boundary = "vox-stall"
    part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + PNG
        + b"\x00" * 200_000
    )  # well past the type sniffing: the blob is being written
    stream = await _raw_rest(d)
    await stream.send_all(
        (
            f"POST /api/v1/channels/{channel}/messages/upload HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {owner.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(part) + 1_000_000}\r\n\r\n"
        ).encode()
        + part
    )
    with trio.fail_after(20):
        raw = await wait_closed(stream)
    status, _, answer = _response(raw)
    assert status == 408 and json.loads(answer)["error"]["code"] == "request_timeout"
    await stream.aclose()
    assert db_rows(d, "SELECT id FROM messages") == []
    assert db_rows(d, "SELECT id FROM file_attachments") == []
    blobs = d.config.data_dir / "blobs"
    # The cleanup is shielded and finishes right after the cancel; allow it a moment.
    with trio.fail_after(10):
        while blobs.exists() and [p for p in blobs.rglob("*") if p.is_file()]:
            await trio.sleep(0.1)
    d.stop.set()


async def test_gateway_silent_before_upgrade_and_after_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, ws_handshake_timeout_s=2.0, gateway_identify_timeout_s=2.0)
    # TCP connected, upgrade never completed (half a request head): closed without an answer.
    stream = await trio.open_tcp_stream(d.addresses.host, d.addresses.gateway_port)
    await stream.send_all(b"GET /gateway HTTP/1.1\r\nHost: x\r\n")
    start = trio.current_time()
    with trio.fail_after(20):
        assert await wait_closed(stream) == b""
    assert 1.8 <= trio.current_time() - start <= 15
    await stream.aclose()
    # Upgraded, never identifies: 4003 after the identify timeout.
    async with gateway(d) as (ws, _):
        start = trio.current_time()
        assert await close_code(ws, timeout=20) == 4003
        assert 1.5 <= trio.current_time() - start <= 15
    d.stop.set()


async def test_http_client_sees_nothing_wrong_with_normal_use(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Short timeouts do not disturb a client that behaves: keep-alive reuse across requests."""
    d = await start_daemon(nursery, tmp_path, http_header_timeout_s=1.0, http_body_timeout_s=1.0)
    async with httpx.AsyncClient(base_url=d.rest, timeout=10) as client:
        for _ in range(5):
            assert (await client.get("/healthz")).status_code == 200
            await trio.sleep(0.3)
        big = await client.post("/api/v1/auth/login", json={"username": "nobody", "password": "x" * 100})
        assert big.status_code == 401
    d.stop.set()


async def test_client_that_stops_reading_a_response_is_disconnected(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    d = await start_daemon(nursery, tmp_path, http_body_timeout_s=2.0)
    async with d.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        guild = await api.guild(owner)
        channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
        sent = await client.post(
            f"/api/v1/channels/{channel}/messages/upload",
            headers=owner.h,
            files=[("file", ("big.png", PNG + b"\x00" * 8_000_000, "image/png"))],
        )
        assert sent.status_code == 201, sent.text
        attachment = sent.json()["attachments"][0]["id"]
        baseline = open_connections((await client.get("/metrics")).text, "rest")
        # A tiny receive window and no reads: the 8 MB download stalls in the server's writes.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect((d.addresses.host, d.addresses.rest_port))
        raw.sendall(
            f"GET /api/v1/attachments/{attachment} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {owner.token}\r\n\r\n".encode()
        )
        try:
            with trio.fail_after(10):
                while open_connections((await client.get("/metrics")).text, "rest") < baseline + 1:
                    await trio.sleep(0.1)
            start = trio.current_time()
            # Its slot is given back once a write made no progress for the body timeout.
            with trio.fail_after(30):
                while open_connections((await client.get("/metrics")).text, "rest") > baseline:
                    await trio.sleep(0.2)
            assert trio.current_time() - start >= 1.0
        finally:
            raw.close()
    d.stop.set()
