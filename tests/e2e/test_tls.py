"""TLS end to end: REST (HTTP/1.1 and h2), the gateway (wss) and QUIC media of one daemon started
with ``tls_self_signed``, each client trusting the generated certificate (no verification skipped);
plaintext sent to a TLS port fails cleanly and the daemon keeps serving."""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import urllib.request
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, voice_room
from tests.e2e.helpers import user_with_token
from tests.process import ready_urls, spawn_vox
from vox.transports import http_writes
from vox.transports.quic_client import open_media_client
from vox.transports.tls import fingerprint


def cert_path(d: Daemon) -> Path:
    return d.config.data_dir / "keys" / "tls_cert.pem"


def trusting(d: Daemon) -> ssl.SSLContext:
    """A client context that trusts exactly the daemon's self-signed certificate."""
    return ssl.create_default_context(cafile=str(cert_path(d)))


@pytest.fixture
async def tls_daemon(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, tmp_path, tls_self_signed=True)
    yield d
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


async def test_addresses_are_https_and_wss(tls_daemon: Daemon) -> None:
    a = tls_daemon.addresses
    assert a.rest_url.startswith("https://127.0.0.1:")
    assert a.gateway_url.startswith("wss://127.0.0.1:") and a.gateway_url.endswith("/gateway")
    assert a.ready_line().startswith(f"vox: ready rest={a.rest_url} gateway={a.gateway_url}")
    async with httpx.AsyncClient(base_url=a.rest_url, verify=trusting(tls_daemon), timeout=10) as http:
        # The web client connects to the URL this names: wss when TLS is on.
        r = await http.get("/api/v1/gateway")
        assert r.status_code == 200, r.text
        assert r.json()["url"] == a.gateway_url


@pytest.mark.parametrize("http2", [False, True])
async def test_rest_over_tls(tls_daemon: Daemon, http2: bool) -> None:
    async with httpx.AsyncClient(
        base_url=tls_daemon.rest, verify=trusting(tls_daemon), http2=http2, timeout=10
    ) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        # A whole exchange over the one connection: register, log in, read the profile back.
        _user_id, token = await user_with_token(http, "alice" if http2 else "bob")
        me = await http.get("/api/v1/users/@me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["username"] == ("alice" if http2 else "bob")
        assert me.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        # A body larger than one TLS record goes out whole through the coalescing writer.
        big = await http.get("/")
        assert big.status_code == 200 and len(big.content) > 0
        assert big.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize("http2", [False, True])
async def test_large_download_over_tls(tls_daemon: Daemon, http2: bool) -> None:
    # Larger than the write coalescer's flush size (vox.transports.http_writes), so the body goes
    # out through both of its paths, over TLS records and (h2) frames.
    assert http_writes.FLUSH_BYTES < 300_000
    blob = os.urandom(150_000).hex().encode()  # text: binary data of no known type is refused
    async with httpx.AsyncClient(
        base_url=tls_daemon.rest, verify=trusting(tls_daemon), http2=http2, timeout=20
    ) as http:
        api = Api(http)
        owner = await api.user("uploader")
        guild = await api.guild(owner)
        channel = await api.channel(owner, guild["id"], "files")
        sent = await http.post(
            f"/api/v1/channels/{channel['id']}/messages/upload",
            headers=owner.h,
            files=[("file", ("blob.txt", blob, "text/plain"))],
        )
        assert sent.status_code == 201, sent.text
        url = sent.json()["attachments"][0]["url"]
        for _ in range(3):  # the same connection, several times
            got = await http.get(url, headers=owner.h)
            assert got.status_code == 200 and got.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert got.content == blob


async def test_rest_rejects_a_client_that_does_not_trust_the_certificate(tls_daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=tls_daemon.rest, timeout=10) as http:
        with pytest.raises(httpx.ConnectError) as err:
            await http.get("/healthz")
    causes: list[BaseException] = []
    exc: BaseException | None = err.value
    while exc is not None and len(causes) < 10:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(c, ssl.SSLCertVerificationError) for c in causes), causes


async def test_wss_gateway_identifies(tls_daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=tls_daemon.rest, verify=trusting(tls_daemon), timeout=10) as http:
        user_id, token = await user_with_token(http, "carol")
    async with open_websocket_url(
        tls_daemon.gateway, ssl_context=trusting(tls_daemon), subprotocols=["vox.v1"]
    ) as ws:
        with trio.fail_after(10):
            hello = json.loads(await ws.get_message())
            assert hello["type"] == "hello"
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
            ready = json.loads(await ws.get_message())
        assert ready["type"] == "ready", ready
        assert ready["d"]["user_id"] == user_id


async def test_quic_media_uses_the_tls_certificate(tls_daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=tls_daemon.rest, verify=trusting(tls_daemon), timeout=10) as http:
        users, _guild, channel = await voice_room(Api(http), 1)
    owner = users[0]
    async with open_websocket_url(
        tls_daemon.gateway, ssl_context=trusting(tls_daemon), subprotocols=["vox.v1"]
    ) as ws:
        with trio.fail_after(10):
            await ws.get_message()  # hello
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": owner.token}}))
            assert json.loads(await ws.get_message())["type"] == "ready"
            await ws.send_message(
                json.dumps({"type": "voice_join", "d": {"channel_id": channel["id"], "transport": "quic"}})
            )
            while True:
                frame = json.loads(await ws.get_message())
                if frame["type"] == "voice_media_session":
                    session = frame["d"]
                    break
        # The client verifies the server certificate against the generated one: the handshake
        # only completes because QUIC serves the same certificate as REST and the gateway.
        async with open_media_client(session["media_url"], verify=str(cert_path(tls_daemon))) as media:
            with trio.fail_after(10):
                await media.authenticate(session["media_token"])


async def test_plaintext_to_tls_ports_fails_cleanly(
    tls_daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vox.tls")
    plain_rest = tls_daemon.rest.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain_rest, timeout=10) as http:
        # Closed at once, not after a timeout.
        with trio.fail_after(5), pytest.raises(httpx.TransportError):
            await http.get("/healthz")
    # A ws:// upgrade request to the wss:// port: the daemon closes the connection at once (the
    # client reads the end of the stream, or a reset) instead of holding it until a timeout.
    # Raw bytes, as trio-websocket's client waits forever for an upgrade answer on a closed socket.
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", tls_daemon.addresses.gateway_port)
        await stream.send_all(
            b"GET /gateway HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            answer = await stream.receive_some()
        except trio.BrokenResourceError:
            answer = b""
        await stream.aclose()
    assert answer == b"", answer
    failures = [r for r in caplog.records if r.getMessage() == "tls handshake failed"]
    with trio.fail_after(5):
        while len(failures) < 2:
            await trio.sleep(0.05)
            failures = [r for r in caplog.records if r.getMessage() == "tls handshake failed"]
    listeners = {getattr(r, "fields", {}).get("listener") for r in failures}
    assert listeners == {"rest", "gateway"}
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in failures)
    # No traceback anywhere: nothing logged at error level by any logger.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Both listeners keep serving TLS clients.
    async with httpx.AsyncClient(base_url=tls_daemon.rest, verify=trusting(tls_daemon), timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with open_websocket_url(
        tls_daemon.gateway, ssl_context=trusting(tls_daemon), subprotocols=["vox.v1"]
    ) as ws:
        with trio.fail_after(10):
            assert json.loads(await ws.get_message())["type"] == "hello"


def _old_tls_context(d: Daemon) -> ssl.SSLContext | None:
    """A client limited to TLS 1.1, or None when the local OpenSSL cannot even try."""
    context = trusting(d)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated is the point here
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        # OpenSSL 3 refuses TLS < 1.2 at its default security level.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    return context


async def test_tls_1_1_is_refused_and_1_3_negotiated(
    tls_daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vox.tls")
    host, port = "127.0.0.1", tls_daemon.addresses.rest_port
    modern = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=trusting(tls_daemon))
    try:
        await modern.do_handshake()
        assert modern.version() == "TLSv1.3"
        assert modern.selected_alpn_protocol() is None  # this client offered none
    finally:
        await modern.aclose()
    context = _old_tls_context(tls_daemon)
    if context is None:
        pytest.skip("the local OpenSSL cannot make a TLS 1.1 client")
    old = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
    with pytest.raises(trio.BrokenResourceError):
        await old.do_handshake()
    await old.aclose()
    # Refused by the server for its version (not by this client's own OpenSSL settings).
    reasons = [getattr(r, "fields", {}).get("reason", "") for r in caplog.records if r.name == "vox.tls"]
    assert any("PROTOCOL" in reason or "VERSION" in reason for reason in reasons), reasons


async def test_alpn_per_listener(tls_daemon: Daemon) -> None:
    context = trusting(tls_daemon)
    context.set_alpn_protocols(["h2", "http/1.1"])
    a = tls_daemon.addresses
    for port, expected in ((a.rest_port, "h2"), (a.gateway_port, "http/1.1")):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
        try:
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == expected
        finally:
            await stream.aclose()


async def test_self_signed_certificate_is_reused(nursery: trio.Nursery, tmp_path: Path) -> None:
    first = await start_daemon(nursery, tmp_path, tls_self_signed=True)
    pem = cert_path(first).read_bytes()
    first.stop.set()
    with trio.fail_after(15):
        await first.done.wait()
    second = await start_daemon(nursery, tmp_path, tls_self_signed=True)
    try:
        assert fingerprint(cert_path(second).read_bytes()) == fingerprint(pem)
    finally:
        second.stop.set()
        with trio.fail_after(15):
            await second.done.wait()


async def test_plaintext_daemon_stays_http(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path)
    try:
        assert d.rest.startswith("http://") and d.gateway.startswith("ws://")
        assert not (d.config.data_dir / "keys" / "tls_cert.pem").exists()
    finally:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


def test_serve_flag_prints_https_and_wss(tmp_path: Path) -> None:
    proc = spawn_vox("--data-dir", str(tmp_path / "data"), "--tls-self-signed")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().strip()
        urls = ready_urls(line)
        assert urls is not None, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert urls["rest"].startswith("https://127.0.0.1:")
        assert urls["gateway"].startswith("wss://127.0.0.1:")
        pem = (tmp_path / "data" / "keys" / "tls_cert.pem").read_bytes()
        trust = ssl.create_default_context(cafile=str(tmp_path / "data" / "keys" / "tls_cert.pem"))
        with urllib.request.urlopen(urls["rest"] + "/healthz", timeout=5, context=trust) as response:
            assert response.status == 200
            assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        logs = proc.stderr.read()
        # The fingerprint a client pins is in the log.
        assert f"sha256={fingerprint(pem)}" in logs, logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_mismatched_pair(tmp_path: Path) -> None:
    from vox.transports.tls import generate_self_signed

    cert_a, _key_a = generate_self_signed(("localhost",), "a")
    _cert_b, key_b = generate_self_signed(("localhost",), "b")
    (tmp_path / "a.crt").write_bytes(cert_a)
    (tmp_path / "b.key").write_bytes(key_b)
    env = {**os.environ, "VOX_TLS_CERT": str(tmp_path / "a.crt"), "VOX_TLS_KEY": str(tmp_path / "b.key")}
    proc = spawn_vox("--data-dir", str(tmp_path / "data"), env=env)
    try:
        assert proc.wait(timeout=30) == 2
        assert proc.stderr is not None
        assert "invalid configuration: config key 'tls_key'" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
