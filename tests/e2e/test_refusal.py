"""The REST answer over the connection limits (503 server_full) as clients see it: the security
headers of every other answer, HSTS under TLS, and a clean HTTP/2 response for an h2 client; and
failed TLS handshakes logged with the client address, rate-limited per address."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.test_limits import get_healthz, refused
from tests.e2e.test_slow_clients import wait_closed
from vox.transports.tls_failures import BURST

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


def trusting(d: Daemon) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(d.config.data_dir / "keys" / "tls_cert.pem"))


async def _stop(d: Daemon) -> None:
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


async def test_plaintext_refusal_carries_the_security_headers(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, max_connections_per_ip=1)
    try:
        held = await trio.open_tcp_stream(d.addresses.host, d.addresses.rest_port)
        assert (await get_healthz(held))[0] == 200
        extra = await trio.open_tcp_stream(d.addresses.host, d.addresses.rest_port)
        await extra.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(20):
            raw = await wait_closed(extra)
        await extra.aclose()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0] == "HTTP/1.1 503 Service Unavailable"
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        for name, value in SECURITY.items():
            assert headers.get(name) == value, (name, headers)
        assert "strict-transport-security" not in headers  # plaintext: never HSTS
        assert "server" not in headers
        assert headers["retry-after"] == "5" and headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        assert httpx.Response(503, content=body).json()["error"]["code"] == "server_full"
        await held.aclose()
    finally:
        await _stop(d)


async def _hold_tls(d: Daemon) -> trio.SSLStream[trio.SocketStream]:
    """One admitted TLS connection (handshake done, so the handshake timeout does not end it)."""
    stream = await trio.open_ssl_over_tcp_stream(
        d.addresses.host, d.addresses.rest_port, ssl_context=trusting(d), https_compatible=True
    )
    await stream.do_handshake()
    return stream


@pytest.mark.parametrize("http2", [False, True])
async def test_tls_refusal_for_http1_and_h2_clients(
    nursery: trio.Nursery, tmp_path: Path, http2: bool
) -> None:
    d = await start_daemon(nursery, tmp_path, tls_self_signed=True, max_connections_per_ip=1)
    try:
        held = await _hold_tls(d)
        async with httpx.AsyncClient(base_url=d.rest, verify=trusting(d), http2=http2, timeout=20) as http:
            # A clean HTTP answer in the client's protocol, not a protocol error.
            r = await http.get("/healthz")
        assert r.status_code == 503, r.text
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert r.json()["error"]["code"] == "server_full"
        for name, value in SECURITY.items():
            assert r.headers.get(name) == value, (name, dict(r.headers))
        assert r.headers["strict-transport-security"] == f"max-age={d.config.hsts_max_age_s}"
        assert r.headers["retry-after"] == "5"
        assert "server" not in r.headers
        await held.aclose()
        # The slot is free again once the server saw the close; the refusal was counted.
        with trio.fail_after(20):
            while True:
                async with httpx.AsyncClient(
                    base_url=d.rest, verify=trusting(d), http2=http2, timeout=10
                ) as http:
                    ok = await http.get("/metrics")
                if ok.status_code == 200:
                    break
                await trio.sleep(0.2)
        assert refused(ok.text, "rest", "per_ip") >= 1
    finally:
        await _stop(d)


async def test_h2_client_with_concurrent_requests_is_refused_cleanly(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    d = await start_daemon(nursery, tmp_path, tls_self_signed=True, max_connections_per_ip=1)
    try:
        held = await _hold_tls(d)
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=d.rest, verify=trusting(d), http2=True, timeout=20) as http:

            async def one() -> None:
                try:
                    statuses.append((await http.get("/healthz")).status_code)
                except httpx.TransportError:
                    statuses.append(0)

            async with trio.open_nursery() as requests:
                for _ in range(4):
                    requests.start_soon(one)
        # Every request ends: at least one is answered 503, none hangs or gets a 200.
        assert len(statuses) == 4 and 503 in statuses and 200 not in statuses, statuses
        await held.aclose()
    finally:
        await _stop(d)


async def test_handshake_failures_name_the_client_and_are_rate_limited(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vox.tls")
    d = await start_daemon(nursery, tmp_path, tls_self_signed=True)
    try:
        attempts = BURST + 5
        for port in (d.addresses.rest_port, d.addresses.gateway_port):
            for _ in range(attempts):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                with trio.fail_after(10):
                    await wait_closed(stream)
                await stream.aclose()

        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == "tls handshake failed"]

        with trio.fail_after(10):
            while len(failures()) < 2 * BURST:
                await trio.sleep(0.05)
        await trio.sleep(0.2)  # anything beyond the burst would have been logged by now
        lines = failures()
        by_listener = {
            name: [r for r in lines if r.fields["listener"] == name] for name in ("rest", "gateway")
        }  # type: ignore[attr-defined]
        for name, records in by_listener.items():
            # The flood of one address is held to the burst, not a line per attempt.
            assert len(records) == BURST, (name, [r.fields for r in records])  # type: ignore[attr-defined]
            for r in records:
                fields = r.fields  # type: ignore[attr-defined]
                assert fields["client"] == "127.0.0.1" and fields["reason"], fields
                assert r.levelno == logging.INFO and r.exc_info is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # The listener still serves TLS clients.
        async with httpx.AsyncClient(base_url=d.rest, verify=trusting(d), timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await _stop(d)
