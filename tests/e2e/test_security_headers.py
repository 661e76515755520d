"""Security headers on every REST answer (success, errors, the web client, file downloads), HSTS
only over TLS, and CORS: off by default, exact origins when configured."""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api
from tests.e2e.helpers import bearer, user_with_token

ORIGIN = "https://chat.example.org"
OTHER = "https://evil.example.net"


async def _stop(d: Daemon) -> None:
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


@pytest.fixture
async def plain(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, tmp_path)
    yield d
    await _stop(d)


@pytest.fixture
async def cors(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, tmp_path, cors_origins=f"{ORIGIN}, http://127.0.0.1:5173")
    yield d
    await _stop(d)


def assert_security_headers(response: httpx.Response, *, hsts: bool) -> None:
    h = response.headers
    assert h["X-Content-Type-Options"] == "nosniff", (response.url, dict(h))
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Frame-Options"] == "DENY"
    csp = h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert len(h.get_list("Content-Security-Policy")) == 1
    if hsts:
        assert h["Strict-Transport-Security"] == "max-age=31536000"
    else:
        assert "Strict-Transport-Security" not in h


def assert_no_cors(response: httpx.Response) -> None:
    leaked = [k for k in response.headers if k.lower().startswith("access-control-")]
    assert leaked == [], leaked


async def _answers(http: httpx.AsyncClient) -> dict[int | str, httpx.Response]:
    """One answer of each kind: 200, 201, 401, 404, 405, 413, the web client page and a file."""
    api = Api(http)
    owner = await api.user("owner")
    guild = await api.guild(owner)
    channel = await api.channel(owner, guild["id"], "files")
    upload = await http.post(
        f"/api/v1/channels/{channel['id']}/messages/upload",
        headers=owner.h,
        files=[("file", ("notes.txt", b"hello\n", "text/plain"))],
    )
    assert upload.status_code == 201, upload.text
    file = await http.get(upload.json()["attachments"][0]["url"], headers=owner.h)
    huge = b'{"username": "okname", "password": "' + b"p" * 2_000_000 + b'"}'
    answers: dict[int | str, httpx.Response] = {
        200: await http.get("/api/v1/users/@me", headers=owner.h),
        201: upload,
        401: await http.get("/api/v1/users/@me"),
        404: await http.get("/api/v1/no/such/route"),
        405: await http.delete("/healthz"),
        413: await http.post(
            "/api/v1/auth/register", content=huge, headers={"content-type": "application/json"}
        ),
        "web": await http.get("/"),
        "file": file,
    }
    for expected, response in answers.items():
        if isinstance(expected, int):
            assert response.status_code == expected, (expected, response.text)
        else:
            assert response.status_code == 200
    return answers


async def test_headers_on_every_answer_over_plaintext(plain: Daemon) -> None:
    async with plain.http() as http:
        answers = await _answers(http)
    for response in answers.values():
        assert_security_headers(response, hsts=False)
        assert_no_cors(response)
    # API answers are data, nothing to run or frame.
    assert answers[404].headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert answers[404].json()["error"]["code"] == "not_found"
    # The web client keeps its own policy (scripts from this origin, the gateway to connect to).
    web_csp = answers["web"].headers["Content-Security-Policy"]
    assert "script-src 'self'" in web_csp and f"connect-src 'self' {plain.gateway}" in web_csp
    # Downloads keep their sandbox, and gain frame-ancestors.
    file_csp = answers["file"].headers["Content-Security-Policy"]
    assert "sandbox" in file_csp and file_csp.endswith("frame-ancestors 'none'")


async def test_hsts_only_with_tls(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, tls_self_signed=True, hsts_max_age_s=31_536_000)
    try:
        trust = ssl.create_default_context(cafile=str(d.config.data_dir / "keys" / "tls_cert.pem"))
        async with httpx.AsyncClient(base_url=d.rest, verify=trust, timeout=20) as http:
            answers = await _answers(http)
        for response in answers.values():
            assert_security_headers(response, hsts=True)
    finally:
        await _stop(d)


async def test_hsts_max_age_is_configurable(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, tls_self_signed=True, hsts_max_age_s=600)
    try:
        trust = ssl.create_default_context(cafile=str(d.config.data_dir / "keys" / "tls_cert.pem"))
        async with httpx.AsyncClient(base_url=d.rest, verify=trust, timeout=10) as http:
            r = await http.get("/healthz")
        assert r.headers["Strict-Transport-Security"] == "max-age=600"
    finally:
        await _stop(d)


async def test_gateway_rejects_carry_the_headers(plain: Daemon) -> None:
    base = plain.gateway.replace("ws://", "http://").removesuffix("/gateway")
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            base + "/elsewhere",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
    assert r.status_code == 404
    assert_security_headers(r, hsts=False)


async def test_cors_off_by_default(plain: Daemon) -> None:
    async with plain.http() as http:
        _uid, token = await user_with_token(http, "nocors")
        simple = await http.get("/api/v1/users/@me", headers={**bearer(token), "Origin": ORIGIN})
        assert simple.status_code == 200
        assert_no_cors(simple)
        preflight = await http.options(
            "/api/v1/users/@me",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
    # The normal error shape: OPTIONS is a method no route takes.
    assert preflight.status_code == 405, preflight.text
    assert preflight.json()["error"]["code"] == "method_not_allowed"
    assert_no_cors(preflight)
    assert_security_headers(preflight, hsts=False)


async def test_cors_for_configured_origins(cors: Daemon) -> None:
    async with cors.http() as http:
        _uid, token = await user_with_token(http, "withcors")
        preflight = await http.options(
            "/api/v1/users/@me",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204 and preflight.content == b""
        h = preflight.headers
        assert h["Access-Control-Allow-Origin"] == ORIGIN
        assert "PATCH" in h["Access-Control-Allow-Methods"]
        assert h["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert int(h["Access-Control-Max-Age"]) > 0
        assert "Origin" in h["Vary"]
        assert "Access-Control-Allow-Credentials" not in h
        assert_security_headers(preflight, hsts=False)

        simple = await http.get("/api/v1/users/@me", headers={**bearer(token), "Origin": ORIGIN})
        assert simple.status_code == 200
        assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "X-RateLimit-Remaining" in simple.headers["Access-Control-Expose-Headers"]
        assert "Origin" in simple.headers["Vary"]
        # The other listed origin, on an error answer.
        local = "http://127.0.0.1:5173"
        error = await http.get("/api/v1/users/@me", headers={"Origin": local})
        assert error.status_code == 401 and error.headers["Access-Control-Allow-Origin"] == local

        # An origin not listed: no CORS header at all, and its preflight is not answered.
        other = await http.get("/api/v1/users/@me", headers={**bearer(token), "Origin": OTHER})
        assert other.status_code == 200
        assert_no_cors(other)
        other_preflight = await http.options(
            "/api/v1/users/@me", headers={"Origin": OTHER, "Access-Control-Request-Method": "GET"}
        )
        assert other_preflight.status_code == 405
        assert_no_cors(other_preflight)
        # Same-origin and non-browser requests (no Origin) are unchanged.
        assert_no_cors(await http.get("/healthz"))


async def test_cors_any_origin(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, cors_origins="*")
    try:
        async with d.http() as http:
            r = await http.get("/healthz", headers={"Origin": OTHER})
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            pre = await http.options(
                "/api/v1/auth/login", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"}
            )
            assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Credentials" not in pre.headers
    finally:
        await _stop(d)


def _preflights_counted(metrics_text: str) -> float:
    found = re.search(
        r'^vox_http_requests_total\{method="OPTIONS",route="preflight",status="204"\} (\S+)$',
        metrics_text,
        re.M,
    )
    return 0.0 if found is None else float(found.group(1))


async def test_preflights_are_logged_and_counted_once(cors: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vox.access")
    path = "/api/v1/guilds/preflighted"
    async with cors.http() as http:
        before = _preflights_counted((await http.get("/metrics")).text)
        pre = await http.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 204
        with trio.fail_after(10):
            while (after := _preflights_counted((await http.get("/metrics")).text)) == before:
                await trio.sleep(0.05)
    assert after == before + 1
    lines = [
        r for r in caplog.records if r.name == "vox.access" and getattr(r, "fields", {}).get("path") == path
    ]
    assert len(lines) == 1, [r.__dict__.get("fields") for r in lines]
    assert lines[0].fields["method"] == "OPTIONS" and lines[0].fields["status"] == 204  # type: ignore[attr-defined]


async def test_no_server_banner(plain: Daemon, nursery: trio.Nursery, tmp_path: Path) -> None:
    async with plain.http() as http:
        for r in (await http.get("/healthz"), await http.get("/api/v1/nothing-here")):
            assert "server" not in r.headers, dict(r.headers)
    d = await start_daemon(nursery, tmp_path / "tls", tls_self_signed=True)
    try:
        verify = ssl.create_default_context(cafile=str(d.config.data_dir / "keys" / "tls_cert.pem"))
        for http2 in (False, True):
            async with httpx.AsyncClient(base_url=d.rest, verify=verify, http2=http2, timeout=10) as http:
                r = await http.get("/healthz")
                assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                assert r.status_code == 200 and "server" not in r.headers, dict(r.headers)
    finally:
        await _stop(d)
