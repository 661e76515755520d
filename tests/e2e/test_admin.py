"""Server administration over real sockets (protocol.md section 10): elevation, user disabling,
settings, guilds, the audit log, ``admin_subscribe`` on the gateway, and the admin CLI."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User, assert_status, gd  # noqa: F401
from tests.e2e.helpers import PASSWORD, bearer, close_code, gateway, login, next_frame, register


async def admin_user(client: httpx.AsyncClient, name: str = "root") -> User:
    user_id = await register(client, name)
    token = str((await login(client, name))["access_token"])
    return User(user_id, token, name)


async def elevate(client: httpx.AsyncClient, who: User, **body: Any) -> httpx.Response:
    return await client.post("/api/v1/admin/elevate", json={"password": PASSWORD, **body}, headers=who.h)


ADMIN_FRAMES = frozenset({"admin_event", "admin_subscribed", "error", "heartbeat_ack"})


async def admin_frame(ws: Any, type_: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame of ``type_``, skipping other traffic (presence, guild events); any other
    admin-related frame arriving first fails the test."""
    with trio.fail_after(timeout):
        while True:
            frame = await next_frame(ws, timeout)
            if frame["type"] == type_:
                return frame
            assert frame["type"] not in ADMIN_FRAMES, frame


async def test_elevation_is_required_and_expires(nursery: trio.Nursery, tmp_path: Path) -> None:
    daemon = await start_daemon(nursery, tmp_path, admin_elevation_s=1.5)
    try:
        async with daemon.http() as client:
            root = await admin_user(client)
            bob = await admin_user(client, "bob")
            # not an admin: forbidden, elevated or not
            assert_status(await client.get("/api/v1/admin/users", headers=bob.h), 403, "forbidden")
            assert_status(await elevate(client, bob), 403, "forbidden")
            # an admin without elevation
            for method, path in (
                ("GET", "/users"),
                ("POST", f"/users/{bob.id}/disable"),
                ("GET", "/guilds"),
                ("GET", "/settings"),
                ("PATCH", "/settings"),
                ("GET", "/oidc-providers"),
                ("POST", "/oidc-providers"),
                ("DELETE", "/oidc-providers/x"),
                ("GET", "/audit-log"),
            ):
                response = await client.request(method, "/api/v1/admin" + path, headers=root.h, json={})
                error = assert_status(response, 403, "elevation_required")
                assert "elevate" in error["message"]
            # no token at all
            assert_status(await client.get("/api/v1/admin/users"), 401, "unauthorized")
            # wrong password
            wrong = await client.post("/api/v1/admin/elevate", json={"password": "nope-nope"}, headers=root.h)
            assert_status(wrong, 403, "invalid_credentials")
            assert_status(
                await client.post("/api/v1/admin/elevate", json={}, headers=root.h), 400, "validation_error"
            )

            granted = await elevate(client, root)
            assert granted.status_code == 200
            assert granted.json()["elevated_until"].endswith("Z")
            users = await client.get("/api/v1/admin/users", headers=root.h)
            assert users.status_code == 200
            assert [u["username"] for u in users.json()] == ["root", "bob"]
            assert users.json()[0]["is_admin"] is True and users.json()[1]["disabled"] is False

            found = await client.get("/api/v1/admin/users?q=BO&limit=10", headers=root.h)
            assert [u["username"] for u in found.json()] == ["bob"]
            assert (await client.get("/api/v1/admin/users?q=_", headers=root.h)).json() == []
            after = await client.get(f"/api/v1/admin/users?after={root.id}", headers=root.h)
            assert [u["username"] for u in after.json()] == ["bob"]
            # elevation belongs to the login session, not to the account
            other = str((await login(client, "root"))["access_token"])
            assert_status(
                await client.get("/api/v1/admin/users", headers=bearer(other)), 403, "elevation_required"
            )

            # admin_subscribe streams until the elevation lapses, then stops
            assert (await elevate(client, root)).status_code == 200
            async with gateway(daemon, root.token) as (ws, _):
                await ws.send_message(json.dumps({"type": "admin_subscribe"}))
                await admin_frame(ws, "admin_subscribed")
                await register(client, "carol")
                assert (await admin_frame(ws, "admin_event"))["d"]["kind"] == "user_registered"
                await trio.sleep(1.7)
                assert_status(
                    await client.get("/api/v1/admin/users", headers=root.h), 403, "elevation_required"
                )
                await register(client, "dave")
                await ws.send_message(json.dumps({"type": "heartbeat"}))
                await admin_frame(ws, "heartbeat_ack")  # no admin_event before it
    finally:
        daemon.stop.set()
        with trio.fail_after(15):
            await daemon.done.wait()


async def test_elevation_with_mfa(daemon: Daemon) -> None:
    async with daemon.http() as client:
        root = await admin_user(client)
        secret = (await client.post("/api/v1/auth/mfa/setup", headers=root.h)).json()["secret"]
        totp = pyotp.TOTP(secret)
        enabled = await client.post("/api/v1/auth/mfa/enable", json={"code": totp.now()}, headers=root.h)
        assert enabled.status_code == 204
        assert_status(await elevate(client, root), 401, "mfa_required")
        assert_status(await elevate(client, root, code="000000"), 403, "invalid_credentials")
        # the current step was used by enable: the next one is accepted
        code = totp.at(time.time() + 30)
        assert (await elevate(client, root, code=code)).status_code == 200
        assert (await client.get("/api/v1/admin/settings", headers=root.h)).status_code == 200


async def test_disable_ends_gateway_connection_and_is_audited(gd: Daemon) -> None:  # noqa: F811
    async with gd.http() as client:
        root = await admin_user(client)
        assert (await elevate(client, root)).status_code == 200
        eve_id = await register(client, "eve")
        eve = await login(client, "eve")
        async with gateway(gd, eve["access_token"]) as (ws, ready):
            assert ready is not None and ready["type"] == "ready"
            response = await client.post(f"/api/v1/admin/users/{eve_id}/disable", headers=root.h)
            assert response.status_code == 200, response.text
            assert response.json()["disabled"] is True
            assert await close_code(ws, timeout=10) == 4004
        assert_status(
            await client.get("/api/v1/users/@me", headers=bearer(eve["access_token"])), 401, "unauthorized"
        )
        refused = await client.post("/api/v1/auth/login", json={"username": "eve", "password": PASSWORD})
        assert_status(refused, 403, "forbidden")
        refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": eve["refresh_token"]})
        assert refresh.status_code == 401
        # nobody disables themselves
        self_disable = await client.post(f"/api/v1/admin/users/{root.id}/disable", headers=root.h)
        assert_status(self_disable, 400, "validation_error")
        assert_status(await client.post("/api/v1/admin/users/nope/disable", headers=root.h), 404, "not_found")

        enabled = await client.post(f"/api/v1/admin/users/{eve_id}/enable", headers=root.h)
        assert enabled.status_code == 200 and enabled.json()["disabled"] is False
        assert (await login(client, "eve"))["user_id"] == eve_id

        log = (await client.get("/api/v1/admin/audit-log", headers=root.h)).json()
        actions = [e["action"] for e in log]
        assert actions[:3] == ["user_enable", "user_disable", "admin_elevate"]
        disable = log[1]
        assert disable["actor_id"] == root.id
        assert disable["target_type"] == "user" and disable["target_id"] == eve_id
        assert disable["ip"] == "127.0.0.1"
        assert disable["created_at"].endswith("Z")
        assert disable["details"] == {"sessions_revoked": 1}
        only = (await client.get("/api/v1/admin/audit-log?action=user_disable", headers=root.h)).json()
        assert [e["id"] for e in only] == [disable["id"]]
        page = (
            await client.get(f"/api/v1/admin/audit-log?limit=1&before={log[0]['id']}", headers=root.h)
        ).json()
        assert [e["id"] for e in page] == [disable["id"]]
        assert_status(
            await client.get("/api/v1/admin/audit-log?limit=0", headers=root.h), 400, "validation_error"
        )


async def test_settings_and_guilds(daemon: Daemon) -> None:
    async with daemon.http() as client:
        api = Api(client)
        root = await admin_user(client)
        assert (await elevate(client, root)).status_code == 200
        settings = (await client.get("/api/v1/admin/settings", headers=root.h)).json()
        assert settings["registration_policy"] == "open"
        assert settings["limits"]["max_guilds"] == 0
        bad = await client.patch(
            "/api/v1/admin/settings", json={"registration_policy": "maybe"}, headers=root.h
        )
        assert_status(bad, 400, "validation_error")
        changed = await client.patch(
            "/api/v1/admin/settings", json={"registration_policy": "closed"}, headers=root.h
        )
        assert changed.status_code == 200 and changed.json()["registration_policy"] == "closed"
        refused = await client.post("/api/v1/auth/register", json={"username": "late", "password": PASSWORD})
        assert_status(refused, 403, "registration_closed")
        await client.patch("/api/v1/admin/settings", json={"registration_policy": "open"}, headers=root.h)

        guild = await api.guild(root, "Hall")
        listed = (await client.get("/api/v1/admin/guilds", headers=root.h)).json()
        assert listed == [
            {
                "id": guild["id"],
                "name": "Hall",
                "owner_id": root.id,
                "icon": None,
                "member_count": 1,
                "created_at": listed[0]["created_at"],
            }
        ]
        assert (await client.get(f"/api/v1/admin/guilds?after={guild['id']}", headers=root.h)).json() == []
        log = (await client.get("/api/v1/admin/audit-log?action=settings_update", headers=root.h)).json()
        assert [e["details"] for e in log] == [
            {"registration_policy": "open"},
            {"registration_policy": "closed"},
        ]


async def test_settings_show_the_transport_limits(nursery: trio.Nursery, tmp_path: Path) -> None:
    daemon = await start_daemon(
        nursery,
        tmp_path,
        max_connections=321,
        max_connections_per_ip=17,
        http_header_timeout_s=7.5,
        ws_handshake_timeout_s=4.0,
        gateway_queue_frames=99,
        gateway_queue_bytes=123_456,
        cors_origins="https://b.example https://a.example",
        sqlite_synchronous="normal",
    )
    try:
        async with daemon.http() as client:
            root = await admin_user(client)
            assert (await elevate(client, root)).status_code == 200
            settings = (await client.get("/api/v1/admin/settings", headers=root.h)).json()
    finally:
        daemon.stop.set()
    limits = settings["limits"]
    assert limits["max_connections"] == 321 and limits["max_connections_per_ip"] == 17
    assert limits["http_header_timeout_s"] == 7.5 and limits["ws_handshake_timeout_s"] == 4.0
    assert limits["http_body_timeout_s"] == daemon.config.http_body_timeout_s
    assert limits["http_keepalive_timeout_s"] == daemon.config.http_keepalive_timeout_s
    assert limits["gateway_identify_timeout_s"] == daemon.config.gateway_identify_timeout_s
    assert limits["gateway_queue_frames"] == 99 and limits["gateway_queue_bytes"] == 123_456
    assert settings["transport"] == {"tls": False, "cors_origins": ["https://a.example", "https://b.example"]}
    assert settings["storage"] == {"sqlite_synchronous": "normal"}
    # Read-only: no key file path or content, no secret is part of the answer.
    text = json.dumps(settings)
    assert "tls_cert" not in text and "tls_key" not in text and "secret" not in text


async def test_settings_say_tls_is_on(nursery: trio.Nursery, tmp_path: Path) -> None:
    daemon = await start_daemon(nursery, tmp_path, tls_self_signed=True)
    try:
        verify = ssl.create_default_context(cafile=str(daemon.config.data_dir / "keys" / "tls_cert.pem"))
        async with httpx.AsyncClient(base_url=daemon.rest, verify=verify, timeout=10) as client:
            root = await admin_user(client)
            assert (await elevate(client, root)).status_code == 200
            settings = (await client.get("/api/v1/admin/settings", headers=root.h)).json()
    finally:
        daemon.stop.set()
    assert settings["transport"]["tls"] is True
    assert str(daemon.config.data_dir) not in json.dumps(settings)


async def test_admin_events_reach_elevated_admins(gd: Daemon) -> None:  # noqa: F811
    async with gd.http() as client:
        api = Api(client)
        root = await admin_user(client)
        async with gateway(gd, root.token) as (ws, _):
            # not elevated yet: refused with an error frame, the connection stays
            await ws.send_message(json.dumps({"type": "admin_subscribe"}))
            refused = await admin_frame(ws, "error")
            assert refused["d"]["request"] == "admin_subscribe"
            assert refused["d"]["error"]["code"] == "elevation_required"

            assert (await elevate(client, root)).status_code == 200
            await ws.send_message(json.dumps({"type": "admin_subscribe"}))
            subscribed = await admin_frame(ws, "admin_subscribed")
            assert subscribed["d"]["elevated_until"].endswith("Z")

            mallory = await api.user("mallory")
            event = await admin_frame(ws, "admin_event")
            assert isinstance(event["seq"], int)
            assert event["d"]["kind"] == "user_registered"
            assert event["d"]["target_id"] == mallory.id
            assert event["d"]["details"]["username"] == "mallory"

            guild = await api.guild(root, "Hall")
            await api.join(root, mallory, guild["id"])
            ban = await client.put(
                f"/api/v1/guilds/{guild['id']}/bans/{mallory.id}", json={"reason": "spam"}, headers=root.h
            )
            assert ban.status_code == 204
            event = await admin_frame(ws, "admin_event")
            assert event["d"]["kind"] == "guild_ban"
            assert event["d"]["actor_id"] == root.id
            assert event["d"]["details"] == {"guild_id": guild["id"], "reason": "spam"}

            created = await client.post(
                "/api/v1/admin/oidc-providers",
                json={
                    "slug": "corp",
                    "display_name": "Corp",
                    "issuer_url": "https://idp.example.org",
                    "client_id": "vox",
                    "client_secret": "do-not-leak-me",
                },
                headers=root.h,
            )
            assert created.status_code == 201
            event = await admin_frame(ws, "admin_event")
            assert event["d"]["kind"] == "oidc_provider_created"
            assert event["d"]["details"] == {"slug": "corp", "enabled": True}
            assert "do-not-leak-me" not in json.dumps(event)

            await client.post(f"/api/v1/admin/users/{mallory.id}/disable", headers=root.h)
            event = await admin_frame(ws, "admin_event")
            assert event["d"]["kind"] == "user_disabled"


async def test_non_admin_cannot_subscribe(daemon: Daemon) -> None:
    async with daemon.http() as client:
        await admin_user(client)
        bob = await admin_user(client, "bob")
        async with gateway(daemon, bob.token) as (ws, _):
            await ws.send_message(json.dumps({"type": "admin_subscribe"}))
            refused = await admin_frame(ws, "error")
            assert refused["d"]["error"]["code"] == "forbidden"


# -- the command line ---------------------------------------------------------------------------
def _vox(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vox", "admin", *args, "--data-dir", str(tmp_path / "data")],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def cli_daemon(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[Path, Any]]:
    """Runs the CLI first (nothing listens yet), then lets the test start a daemon on its data."""
    started: list[Daemon] = []

    async def start() -> Daemon:
        d = await start_daemon(nursery, tmp_path)
        started.append(d)
        return d

    yield tmp_path, start
    for d in started:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


async def test_cli_create_admin_and_reset_password(cli_daemon: tuple[Path, Any]) -> None:
    tmp_path, start = cli_daemon
    created = await trio.to_thread.run_sync(lambda: _vox(tmp_path, "create-admin", "Boss"))
    assert created.returncode == 0, created.stderr
    password = created.stdout.strip()
    assert len(password) >= 20 and "\n" not in password
    assert "created" in created.stderr and password not in created.stderr

    daemon = await start()
    async with daemon.http() as client:
        tokens = await login(client, "boss", password)
        me = (await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))).json()
        assert me["is_admin"] is True and me["username"] == "Boss"
        # the next registration is not the first: not an admin
        other = await register(client, "carol")
        assert other != me["id"]

        # reset while the daemon runs: the old session ends, the new password works
        reset = await trio.to_thread.run_sync(
            lambda: _vox(
                tmp_path, "reset-password", "boss", "--password-stdin", stdin="a brand new passphrase\n"
            )
        )
        assert reset.returncode == 0, reset.stderr
        assert reset.stdout == ""  # read from stdin: nothing to print
        assert "1 session(s)" in reset.stderr
        assert (
            await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))
        ).status_code == 401
        assert (
            await client.post("/api/v1/auth/login", json={"username": "boss", "password": password})
        ).status_code == 401
        await login(client, "boss", "a brand new passphrase")

        # promoting an existing account keeps its password
        promoted = await trio.to_thread.run_sync(lambda: _vox(tmp_path, "create-admin", "carol"))
        assert promoted.returncode == 0 and promoted.stdout == ""
        carol = await login(client, "carol")
        carol_me = (await client.get("/api/v1/users/@me", headers=bearer(carol["access_token"]))).json()
        assert carol_me["is_admin"] is True

        admin = str((await login(client, "boss", "a brand new passphrase"))["access_token"])
        await client.post(
            "/api/v1/admin/elevate", json={"password": "a brand new passphrase"}, headers=bearer(admin)
        )
        log = (await client.get("/api/v1/admin/audit-log", headers=bearer(admin))).json()
        cli_entries = [e for e in log if e["details"].get("via") == "cli"]
        assert [e["action"] for e in cli_entries] == ["admin_create", "password_reset", "admin_create"]
        assert all(e["actor_id"] is None and e["ip"] is None for e in cli_entries)

    for args, stdin in (
        (("reset-password", "nobody"), None),
        (("create-admin", "no way"), None),
        (("reset-password", "boss", "--password-stdin"), "short\n"),
    ):
        failed = await trio.to_thread.run_sync(lambda a=args, s=stdin: _vox(tmp_path, *a, stdin=s))
        assert failed.returncode == 2, (args, failed.stderr)
        assert failed.stdout == "" and failed.stderr.startswith("vox: ")
