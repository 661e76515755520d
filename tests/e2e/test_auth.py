"""Accounts and sessions over real sockets (protocol.md section 2)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import jwt
import pyotp
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.helpers import PASSWORD, bearer, db_execute, db_rows, login, register, user_with_token


async def test_register_login_refresh_logout(daemon: Daemon) -> None:
    async with daemon.http() as client:
        user_id = await register(client, "Alice", email="alice@example.org")
        tokens = await login(client, "alice")  # usernames match case-insensitively
        assert tokens["token_type"] == "Bearer"
        assert tokens["expires_in"] == 900
        assert tokens["user_id"] == user_id
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert set(claims) >= {"sub", "sid", "iat", "exp", "jti"}
        assert claims["exp"] - claims["iat"] == 900
        assert jwt.get_unverified_header(tokens["access_token"])["alg"] == "EdDSA"

        me = (await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))).json()
        assert me["id"] == user_id
        assert me["username"] == "Alice"
        assert me["email"] == "alice@example.org"
        assert me["mfa_enabled"] is False

        refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200
        new = refreshed.json()
        assert new["refresh_token"] != tokens["refresh_token"]
        assert (await client.get("/api/v1/users/@me", headers=bearer(new["access_token"]))).status_code == 200

        assert (
            await client.post("/api/v1/auth/logout", headers=bearer(new["access_token"]))
        ).status_code == 204
        after = await client.get("/api/v1/users/@me", headers=bearer(new["access_token"]))
        assert after.status_code == 401
        assert after.json()["error"]["code"] == "unauthorized"
        again = await client.post("/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
        assert again.status_code == 401
    # refresh tokens are stored hashed, never in clear
    stored = db_rows(daemon, "SELECT refresh_hash FROM sessions")
    assert stored and all(new["refresh_token"] not in row[0] for row in stored)


async def test_refresh_reuse_revokes_session(daemon: Daemon) -> None:
    async with daemon.http() as client:
        await register(client, "bob")
        first = await login(client, "bob")
        second = (
            await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        ).json()
        third = (
            await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
        ).json()
        # a token rotated two generations ago is still recognised as reuse
        reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert reuse.status_code == 401
        # the whole session is gone: the newest refresh token and the access token stop working
        latest = await client.post("/api/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
        assert latest.status_code == 401
        me = await client.get("/api/v1/users/@me", headers=bearer(third["access_token"]))
        assert me.status_code == 401
        # another session of the same user is untouched
        other = await login(client, "bob")
        assert (
            await client.get("/api/v1/users/@me", headers=bearer(other["access_token"]))
        ).status_code == 200


def _daemon_key(daemon: Daemon) -> Ed25519PrivateKey:
    pem = (daemon.config.data_dir / "keys" / "jwt_ed25519.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


async def test_bad_tokens_are_refused(daemon: Daemon) -> None:
    async with daemon.http() as client:
        user_id = await register(client, "carol")
        tokens = await login(client, "carol")
        good = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        key = _daemon_key(daemon)
        now = int(time.time())
        expired = jwt.encode({**good, "iat": now - 1000, "exp": now - 10}, key, algorithm="EdDSA")
        foreign = jwt.encode(good, Ed25519PrivateKey.generate(), algorithm="EdDSA")
        header, _, sig = tokens["access_token"].split(".")
        other_claims = jwt.encode(
            {**good, "sub": "someone-else"}, Ed25519PrivateKey.generate(), algorithm="EdDSA"
        )
        tampered = ".".join([header, other_claims.split(".")[1], sig])
        no_sid = jwt.encode({k: v for k, v in good.items() if k != "sid"}, key, algorithm="EdDSA")
        hs256 = jwt.encode(good, "secret-of-32-bytes-long-enough!!", algorithm="HS256")
        cases = {
            "expired": (bearer(expired), "token_expired"),
            "foreign key": (bearer(foreign), "unauthorized"),
            "tampered": (bearer(tampered), "unauthorized"),
            "missing sid": (bearer(no_sid), "unauthorized"),
            "wrong alg": (bearer(hs256), "unauthorized"),
            "garbage": (bearer("not.a.jwt"), "unauthorized"),
            "no scheme": ({"Authorization": tokens["access_token"]}, "unauthorized"),
            "basic": ({"Authorization": "Basic dXNlcjpwYXNz"}, "unauthorized"),
            "missing": ({}, "unauthorized"),
        }
        for name, (headers, code) in cases.items():
            response = await client.get("/api/v1/users/@me", headers=headers)
            assert response.status_code == 401, name
            assert response.json()["error"]["code"] == code, name
        # and a user that a valid token names but who has been disabled is refused too
        db_execute(daemon, "UPDATE users SET disabled = 1 WHERE id = ?", (user_id,))
        response = await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))
        assert response.status_code == 401


async def test_sessions_list_and_revoke(daemon: Daemon) -> None:
    async with daemon.http() as client:
        await register(client, "dave")
        a = await login(client, "dave")
        b = await login(client, "dave")
        listed = (await client.get("/api/v1/auth/sessions", headers=bearer(a["access_token"]))).json()
        assert len(listed) == 2
        assert sorted(s["current"] for s in listed) == [False, True]
        assert all(s["ip"] == "127.0.0.1" and s["user_agent"].startswith("python-httpx") for s in listed)
        assert all(s["created_at"].endswith("Z") for s in listed)
        other = next(s["id"] for s in listed if not s["current"])
        assert (
            await client.delete(f"/api/v1/auth/sessions/{other}", headers=bearer(a["access_token"]))
        ).status_code == 204
        assert (await client.get("/api/v1/users/@me", headers=bearer(b["access_token"]))).status_code == 401
        missing = await client.delete(f"/api/v1/auth/sessions/{other}", headers=bearer(a["access_token"]))
        assert missing.status_code == 404
        # someone else's session cannot be revoked (and is reported as not found)
        await register(client, "eve")
        eve = await login(client, "eve")
        eve_sid = jwt.decode(eve["access_token"], options={"verify_signature": False})["sid"]
        assert (
            await client.delete(f"/api/v1/auth/sessions/{eve_sid}", headers=bearer(a["access_token"]))
        ).status_code == 404
        assert (await client.get("/api/v1/users/@me", headers=bearer(eve["access_token"]))).status_code == 200


def _code(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


async def test_mfa_flow(daemon: Daemon) -> None:
    async with daemon.http() as client:
        _, token = await user_with_token(client, "frank")
        setup = (await client.post("/api/v1/auth/mfa/setup", headers=bearer(token))).json()
        secret = setup["secret"]
        assert setup["otpauth_uri"].startswith("otpauth://totp/")
        # not active until enabled
        assert "access_token" in await login(client, "frank")
        wrong = await client.post("/api/v1/auth/mfa/enable", headers=bearer(token), json={"code": "000000"})
        assert wrong.status_code == 400
        ok = await client.post("/api/v1/auth/mfa/enable", headers=bearer(token), json={"code": _code(secret)})
        assert ok.status_code == 204
        assert (await client.get("/api/v1/users/@me", headers=bearer(token))).json()["mfa_enabled"] is True

        step = await login(client, "frank")
        assert step["mfa_required"] is True and "access_token" not in step
        bad = await client.post(
            "/api/v1/auth/mfa/verify", json={"mfa_token": step["mfa_token"], "code": "123456"}
        )
        assert bad.status_code == 401
        code = _code(secret, +1)  # the next step: the current one was spent enabling MFA
        good = await client.post(
            "/api/v1/auth/mfa/verify", json={"mfa_token": step["mfa_token"], "code": code}
        )
        assert good.status_code == 200, good.text
        assert "access_token" in good.json()
        # the mfa_token is single use
        used = await client.post(
            "/api/v1/auth/mfa/verify", json={"mfa_token": step["mfa_token"], "code": code}
        )
        assert used.status_code == 401
        # the same code cannot be replayed within its window
        again = await login(client, "frank")
        replay = await client.post(
            "/api/v1/auth/mfa/verify", json={"mfa_token": again["mfa_token"], "code": code}
        )
        assert replay.status_code == 401
    # the TOTP secret is stored encrypted
    stored = db_rows(daemon, "SELECT mfa_secret_enc FROM users WHERE username = 'frank'")[0][0]
    assert secret not in stored and stored.startswith("v1.")


async def test_mfa_disable(daemon: Daemon) -> None:
    async with daemon.http() as client:
        _, token = await user_with_token(client, "grace")
        secret = (await client.post("/api/v1/auth/mfa/setup", headers=bearer(token))).json()["secret"]
        assert (
            await client.post(
                "/api/v1/auth/mfa/enable", headers=bearer(token), json={"code": _code(secret, -1)}
            )
        ).status_code == 204
        assert (await client.post("/api/v1/auth/mfa/setup", headers=bearer(token))).status_code == 409
        assert (
            await client.post("/api/v1/auth/mfa/disable", headers=bearer(token), json={"code": "999999"})
        ).status_code == 400
        assert (
            await client.post("/api/v1/auth/mfa/disable", headers=bearer(token), json={"code": _code(secret)})
        ).status_code == 204
        assert "access_token" in await login(client, "grace")


async def test_first_user_is_admin_and_usernames_unique(daemon: Daemon) -> None:
    async with daemon.http() as client:
        first, first_token = await user_with_token(client, "root_user")
        _, second_token = await user_with_token(client, "member")
        assert (await client.get("/api/v1/users/@me", headers=bearer(first_token))).json()["is_admin"] is True
        assert (await client.get("/api/v1/users/@me", headers=bearer(second_token))).json()[
            "is_admin"
        ] is False
        dup = await client.post("/api/v1/auth/register", json={"username": "MEMBER", "password": PASSWORD})
        assert dup.status_code == 409
        assert dup.json()["error"]["code"] == "conflict"
        public = (await client.get(f"/api/v1/users/{first}", headers=bearer(second_token))).json()
        assert public["id"] == first and public["is_admin"] is True
        assert "email" not in public and "mfa_enabled" not in public
        missing = await client.get(
            "/api/v1/users/00000000-0000-0000-0000-000000000000", headers=bearer(second_token)
        )
        assert missing.status_code == 404
        patched = await client.patch(
            "/api/v1/users/@me", headers=bearer(second_token), json={"display_name": "Mem"}
        )
        assert patched.status_code == 200 and patched.json()["display_name"] == "Mem"
        cleared = await client.patch(
            "/api/v1/users/@me", headers=bearer(second_token), json={"display_name": None}
        )
        assert cleared.json()["display_name"] is None
    assert len(db_rows(daemon, "SELECT user_id FROM system_admins")) == 1


async def test_registration_policies(nursery: trio.Nursery, tmp_path: Path) -> None:
    closed = await start_daemon(nursery, tmp_path / "closed", registration_policy="closed")
    async with closed.http() as client:
        await register(client, "bootstrap_admin")  # the very first account is always allowed
        response = await client.post("/api/v1/auth/register", json={"username": "zed", "password": PASSWORD})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "registration_closed"
    assert db_rows(closed, "SELECT COUNT(*) FROM users") == [(1,)]
    closed.stop.set()

    invite = await start_daemon(nursery, tmp_path / "invite", registration_policy="invite_only")
    async with invite.http() as client:
        await register(client, "first_admin")
        no_code = await client.post("/api/v1/auth/register", json={"username": "yan", "password": PASSWORD})
        assert no_code.status_code == 403 and no_code.json()["error"]["code"] == "registration_closed"
        bad_code = await client.post(
            "/api/v1/auth/register", json={"username": "yan", "password": PASSWORD, "invite_code": "nope"}
        )
        assert bad_code.status_code == 400
        assert "invite_code" in bad_code.json()["error"]["fields"]
        assert db_rows(invite, "SELECT COUNT(*) FROM users") == [(1,)]
        # an admin-made invite (written straight to the database: guilds arrive with issue 4)
        now = int(time.time() * 1000)
        db_execute(
            invite,
            "INSERT INTO users (id, username, username_lower, created_at) VALUES ('o', 'owner', 'owner', ?)",
            (now,),
        )
        db_execute(
            invite, "INSERT INTO guilds (id, name, owner_id, created_at) VALUES ('g', 'G', 'o', ?)", (now,)
        )
        db_execute(
            invite,
            "INSERT INTO invites (code, guild_id, inviter_id, max_uses, uses, created_at)"
            " VALUES ('abc', 'g', 'o', 1, 0, ?)",
            (now,),
        )
        user_id = await register(client, "yan", invite_code="abc")
        assert db_rows(invite, "SELECT uses FROM invites WHERE code = 'abc'") == [(1,)]
        assert db_rows(invite, "SELECT user_id FROM guild_members WHERE guild_id = 'g'") == [(user_id,)]
        used_up = await client.post(
            "/api/v1/auth/register", json={"username": "yin", "password": PASSWORD, "invite_code": "abc"}
        )
        assert used_up.status_code == 400
    invite.stop.set()


BAD_BODIES = [
    ("/api/v1/auth/register", b"{not json", "body"),
    ("/api/v1/auth/register", b"[]", "body"),
    ("/api/v1/auth/register", b'{"password": "long enough pw"}', "username"),
    ("/api/v1/auth/register", b'{"username": 5, "password": "long enough pw"}', "username"),
    ("/api/v1/auth/register", b'{"username": "a", "password": "long enough pw"}', "username"),
    (
        "/api/v1/auth/register",
        b'{"username": "' + b"x" * 33 + b'", "password": "long enough pw"}',
        "username",
    ),
    ("/api/v1/auth/register", b'{"username": "bad name", "password": "long enough pw"}', "username"),
    ("/api/v1/auth/register", b'{"username": "../etc", "password": "long enough pw"}', "username"),
    ("/api/v1/auth/register", b'{"username": "okname", "password": "short"}', "password"),
    ("/api/v1/auth/register", b'{"username": "okname", "password": "' + b"p" * 129 + b'"}', "password"),
    (
        "/api/v1/auth/register",
        b'{"username": "okname", "password": "long enough pw", "email": "nope"}',
        "email",
    ),
    ("/api/v1/auth/register", b'{"username": "okname", "password": null}', "password"),
    ("/api/v1/auth/login", b'{"username": "okname"}', "password"),
    ("/api/v1/auth/login", b'{"username": ["x"], "password": "p"}', "username"),
    ("/api/v1/auth/refresh", b"{}", "refresh_token"),
    ("/api/v1/auth/refresh", b'{"refresh_token": 123}', "refresh_token"),
    ("/api/v1/auth/mfa/verify", b'{"mfa_token": "x"}', "code"),
]


@pytest.mark.parametrize(("path", "raw", "field"), BAD_BODIES)
async def test_bad_input_is_400_and_writes_nothing(daemon: Daemon, path: str, raw: bytes, field: str) -> None:
    async with daemon.http() as client:
        response = await client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error
    assert db_rows(daemon, "SELECT COUNT(*) FROM users") == [(0,)]
    assert db_rows(daemon, "SELECT COUNT(*) FROM sessions") == [(0,)]


async def test_wrong_content_type_and_oversized(daemon: Daemon) -> None:
    async with daemon.http() as client:
        form = await client.post("/api/v1/auth/register", data={"username": "x", "password": "y"})
        assert form.status_code == 415
        assert form.json()["error"]["code"] == "unsupported_media_type"
        huge = b'{"username": "okname", "password": "' + b"p" * 2_000_000 + b'"}'
        big = await client.post(
            "/api/v1/auth/register", content=huge, headers={"content-type": "application/json"}
        )
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "payload_too_large"
        _, token = await user_with_token(client, "henry")
        patch = await client.patch(
            "/api/v1/users/@me", headers=bearer(token), json={"display_name": "x" * 33}
        )
        assert patch.status_code == 400 and "display_name" in patch.json()["error"]["fields"]
        blank = await client.patch("/api/v1/users/@me", headers=bearer(token), json={"display_name": "   "})
        assert blank.status_code == 400
        wrong_type = await client.patch("/api/v1/users/@me", headers=bearer(token), json={"avatar": 7})
        assert wrong_type.status_code == 400
    assert db_rows(daemon, "SELECT display_name, avatar FROM users WHERE username = 'henry'") == [
        (None, None)
    ]


async def test_rate_limit_429_and_recovery(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, rate_limits="auth=3/1.5")
    async with d.http() as client:
        statuses = []
        for _ in range(4):
            r = await client.post("/api/v1/auth/login", json={"username": "nobody", "password": "whatever1"})
            statuses.append(r.status_code)
        assert statuses == [401, 401, 401, 429]
        assert r.json()["error"]["code"] == "rate_limited"
        assert r.json()["error"]["retry_after_ms"] > 0
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Limit"] == "3"
        assert r.headers["X-RateLimit-Remaining"] == "0"
        assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time())
        await trio.sleep(0.6)
        recovered = await client.post(
            "/api/v1/auth/login", json={"username": "nobody", "password": "whatever1"}
        )
        assert recovered.status_code == 401
        assert recovered.headers["X-RateLimit-Limit"] == "3"
    d.stop.set()


async def test_failed_logins_per_username_are_limited(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, rate_limits="login_failures=3/300")
    async with d.http() as client:
        await register(client, "target")
        for _ in range(3):
            r = await client.post(
                "/api/v1/auth/login", json={"username": "TARGET", "password": "wrong-guess"}
            )
            assert r.status_code == 401
        # even the right password is refused while the username's failure budget is spent
        blocked = await client.post("/api/v1/auth/login", json={"username": "target", "password": PASSWORD})
        assert blocked.status_code == 429
        # other usernames are unaffected
        await register(client, "bystander")
        assert "access_token" in await login(client, "bystander")
    d.stop.set()


async def test_rate_limits_shared_across_daemons_with_redis(
    nursery: trio.Nursery, tmp_path: Path, redis_url: str
) -> None:
    prefix = f"vox:test:{uuid.uuid4().hex}:"
    one = await start_daemon(
        nursery, tmp_path / "one", redis_url=redis_url, redis_prefix=prefix, rate_limits="auth=4/60"
    )
    two = await start_daemon(
        nursery, tmp_path / "two", redis_url=redis_url, redis_prefix=prefix, rate_limits="auth=4/60"
    )
    statuses = []
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(6):
            target = (one if i % 2 == 0 else two).rest
            r = await client.post(
                f"{target}/api/v1/auth/login", json={"username": "nobody", "password": "whatever1"}
            )
            statuses.append(r.status_code)
    assert statuses == [401, 401, 401, 401, 429, 429]
    one.stop.set()
    two.stop.set()


async def test_argon2_parameters_upgraded_on_login(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path)
    async with d.http() as client:
        await register(client, "ivan")
    assert "t=2" in db_rows(d, "SELECT password_hash FROM users")[0][0]
    d.stop.set()
    await d.done.wait()
    stronger = await start_daemon(nursery, tmp_path, argon2_time_cost=3)
    async with stronger.http() as client:
        assert "access_token" in await login(client, "ivan")
    stored = db_rows(stronger, "SELECT password_hash FROM users")[0][0]
    assert stored.startswith("$argon2id$") and "t=3" in stored
    stronger.stop.set()
