"""Single sign-on through a real (in-test) OpenID Connect provider, over real sockets
(protocol.md section 2, "SSO (OIDC)").

The "browser" is an httpx client that follows each redirect by hand: daemon authorize -> the
provider's authorize -> the daemon's callback -> the client's loopback redirect_uri (a real
listener that records the tokens it is handed).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import gd  # noqa: F401  (the daemon on SQLite and on PostgreSQL + Redis)
from tests.e2e.helpers import PASSWORD, bearer, db_execute, db_rows, login, register
from tests.e2e.oidc_provider import Provider, Receiver, serve_provider

TIMEOUT = 20


@pytest.fixture
def provider() -> Any:
    p = Provider()
    with serve_provider(p):
        yield p


@pytest.fixture
def receiver() -> Any:
    with Receiver() as r:
        yield r


async def elevated_admin(client: httpx.AsyncClient, name: str = "root") -> str:
    """Register the first account (the system admin), log in and elevate; its access token."""
    await register(client, name)
    token = str((await login(client, name))["access_token"])
    response = await client.post("/api/v1/admin/elevate", json={"password": PASSWORD}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return token


async def add_provider(
    client: httpx.AsyncClient, token: str, provider: Provider, slug: str = "test", **extra: Any
) -> dict[str, Any]:
    body = {
        "slug": slug,
        "display_name": "Test IdP",
        "icon_hint": "key",
        "issuer_url": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        **extra,
    }
    response = await client.post("/api/v1/admin/oidc-providers", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def start_flow(client: httpx.AsyncClient, slug: str, redirect_uri: str) -> str:
    """GET authorize; the provider authorize URL it redirects to."""
    response = await client.get(f"/api/v1/auth/oidc/authorize/{slug}", params={"redirect_uri": redirect_uri})
    assert response.status_code == 302, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.headers["location"]


async def at_provider(idp_url: str) -> str:
    """The browser at the provider: the callback URL it is sent back to."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as browser:
        response = await browser.get(idp_url)
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def at_callback(callback_url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as browser:
        return await browser.get(callback_url)


async def deliver(location: str, receiver: Receiver) -> dict[str, str]:
    """Follow the daemon's last redirect to the client's loopback listener; what it received."""
    assert location.startswith(receiver.url + "?"), location
    before = len(receiver.received)
    async with httpx.AsyncClient(timeout=TIMEOUT) as browser:
        assert (await browser.get(location)).status_code == 200
    assert len(receiver.received) == before + 1
    return receiver.received[-1]


async def sign_in(client: httpx.AsyncClient, receiver: Receiver, slug: str = "test") -> dict[str, str]:
    idp_url = await start_flow(client, slug, receiver.url)
    callback = await at_callback(await at_provider(idp_url))
    assert callback.status_code == 302, callback.text
    return await deliver(callback.headers["location"], receiver)


async def test_full_flow_signs_in_and_creates_user(
    gd: Daemon,  # noqa: F811
    provider: Provider,
    receiver: Receiver,
) -> None:
    with trio.fail_after(60):
        async with gd.http() as client:
            admin = await elevated_admin(client)
            created = await add_provider(client, admin, provider)
            assert created["has_client_secret"] is True and "client_secret" not in created

            listed = (await client.get("/api/v1/auth/oidc/providers")).json()
            assert listed == [{"slug": "test", "display_name": "Test IdP", "icon_hint": "key"}]

            idp_url = await start_flow(client, "test", receiver.url)
            parts = urlsplit(idp_url)
            assert f"{parts.scheme}://{parts.netloc}" == provider.issuer
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            assert query["code_challenge_method"] == "S256"
            assert query["redirect_uri"] == gd.rest + "/api/v1/auth/oidc/callback"
            assert len(query["state"]) >= 43  # 32 random bytes, base64url
            assert query["nonce"]

            provider.user = {
                "sub": "abc-123",
                "preferred_username": "Alice Wonder",
                "name": "Alice W.",
                "email": "alice@idp.example",
                "email_verified": True,
            }
            callback_url = await at_provider(idp_url)
            callback = await at_callback(callback_url)
            assert callback.status_code == 302
            assert callback.headers["referrer-policy"] == "no-referrer"
            tokens = await deliver(callback.headers["location"], receiver)
            assert set(tokens) >= {"access_token", "refresh_token", "user_id", "expires_in"}
            me = await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 200, me.text
            body = me.json()
            assert body["id"] == tokens["user_id"]
            assert body["username"] == "Alice_Wonder"
            assert body["display_name"] == "Alice W."
            assert body["email"] == "alice@idp.example"
            assert body["is_admin"] is False  # the first account (root) is the admin
            assert provider.errors == []
            # the refresh token works like any other
            refreshed = await client.post(
                "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert refreshed.status_code == 200

            # the same subject signs in to the same account
            again = await sign_in(client, receiver)
            assert again["user_id"] == tokens["user_id"]

            # another subject wanting the same name gets a deduplicated one
            provider.user = {"sub": "zzz-999", "preferred_username": "alice_wonder"}
            other = await sign_in(client, receiver)
            assert other["user_id"] != tokens["user_id"]
            other_me = (await client.get("/api/v1/users/@me", headers=bearer(other["access_token"]))).json()
            assert other_me["username"] == "alice_wonder2"
            assert other_me["email"] is None

            # the state is single use: replaying the callback is refused
            replay = await at_callback(callback_url)
            assert replay.status_code == 400
            assert replay.json()["error"]["code"] == "oidc_state_invalid"


async def test_first_oidc_user_becomes_admin(daemon: Daemon, provider: Provider, receiver: Receiver) -> None:
    # A public client (PKCE only, no secret), configured straight in the database: nobody exists
    # yet who could use the admin API.
    provider.client_secret = None
    db_execute(
        daemon,
        "INSERT INTO oidc_providers (id, slug, display_name, issuer_url, client_id, enabled, created_at)"
        " VALUES (?, 'pub', 'Public', ?, ?, 1, 0)",
        (str(uuid.uuid4()), provider.issuer, provider.client_id),
    )
    with trio.fail_after(30):
        async with daemon.http() as client:
            provider.user = {"sub": "first", "email": "ops@example.org"}
            tokens = await sign_in(client, receiver, "pub")
            me = (await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))).json()
            assert me["is_admin"] is True
            assert me["username"] == "ops"  # from the email's local part (not verified: not copied)
            assert me["email"] is None
            # an SSO account has no password: password login fails like a wrong password
            response = await client.post(
                "/api/v1/auth/login", json={"username": "ops", "password": "whatever1"}
            )
            assert response.status_code == 401


@pytest.fixture
async def sso(nursery: trio.Nursery, tmp_path: Path, provider: Provider) -> AsyncIterator[tuple[Daemon, str]]:
    """A daemon with the test provider configured; yields (daemon, elevated admin token)."""
    d = await start_daemon(nursery, tmp_path, oidc_flow_ttl_s=2.0, rate_limits="auth=1000/60")
    async with d.http() as client:
        token = await elevated_admin(client)
        await add_provider(client, token, provider)
    yield d, token
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


async def _error_for(client: httpx.AsyncClient, receiver: Receiver) -> dict[str, str]:
    """Run a flow whose sign-in fails after the state was accepted: the error the client gets."""
    return await sign_in(client, receiver)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ({"nonce": "not-the-nonce"}, "oidc_token_invalid"),
        ({"aud": "someone-else"}, "oidc_token_invalid"),
        ({"iss": "http://127.0.0.1:1"}, "oidc_token_invalid"),
        ({"other_key": True}, "oidc_token_invalid"),
        ({"exp": 1_000_000}, "oidc_token_invalid"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "oidc_token_invalid"),
    ],
)
async def test_bad_id_tokens_are_refused(
    sso: tuple[Daemon, str], provider: Provider, receiver: Receiver, tamper: dict[str, Any], expected: str
) -> None:
    daemon, _ = sso
    provider.tamper = tamper
    with trio.fail_after(30):
        async with daemon.http() as client:
            result = await _error_for(client, receiver)
    assert result["error"] == expected
    assert "access_token" not in result
    rows = daemon_users(daemon)
    assert rows == 1  # only the admin: nobody was created


def daemon_users(daemon: Daemon) -> int:
    return int(db_rows(daemon, "SELECT COUNT(*) FROM users")[0][0])


async def test_tampered_expired_and_unknown_state(sso: tuple[Daemon, str], receiver: Receiver) -> None:
    daemon, _ = sso
    with trio.fail_after(30):
        async with daemon.http() as client:
            callback_url = await at_provider(await start_flow(client, "test", receiver.url))
            parts = urlsplit(callback_url)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            flipped = query["state"][:-1] + ("A" if query["state"][-1] != "A" else "B")
            tampered = await client.get(
                "/api/v1/auth/oidc/callback", params={"code": query["code"], "state": flipped}
            )
            assert tampered.status_code == 400
            assert tampered.json()["error"]["code"] == "oidc_state_invalid"
            missing = await client.get("/api/v1/auth/oidc/callback", params={"code": "x"})
            assert missing.status_code == 400
            assert missing.json()["error"]["code"] == "oidc_state_invalid"

            # the untampered one still works once (a wrong guess does not burn the real state)...
            ok = await at_callback(callback_url)
            assert ok.status_code == 302 and "access_token=" in ok.headers["location"]

            # ... and a flow older than oidc_flow_ttl_s (2 s here) is gone
            late = await at_provider(await start_flow(client, "test", receiver.url))
            await trio.sleep(2.5)
            expired = await at_callback(late)
            assert expired.status_code == 400
            assert expired.json()["error"]["code"] == "oidc_state_invalid"
    assert receiver.received == []


@pytest.mark.parametrize(
    "uri",
    [
        "http://evil.example/callback",
        "https://127.0.0.1:8000/callback",
        "http://localhost:8000/callback",
        "http://127.0.0.1/callback",
        "http://127.0.0.1.evil.example:80/callback",
        "http://127.0.0.1:80@evil.example/callback",
        "http://user@127.0.0.1:8000/callback",
        "http://127.0.0.1:8000/callback#fragment",
        "javascript:alert(1)",
        "//127.0.0.1:8000/callback",
        "",
    ],
)
async def test_non_loopback_redirect_uri_is_refused(sso: tuple[Daemon, str], uri: str) -> None:
    daemon, _ = sso
    async with daemon.http() as client:
        response = await client.get("/api/v1/auth/oidc/authorize/test", params={"redirect_uri": uri})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert "redirect_uri" in response.json()["error"]["fields"]


async def test_configured_redirect_uri_and_ipv6_loopback(
    nursery: trio.Nursery, tmp_path: Path, provider: Provider
) -> None:
    d = await start_daemon(nursery, tmp_path, oidc_redirect_uris="https://app.example.org/sso/done")
    try:
        async with d.http() as client:
            token = await elevated_admin(client)
            await add_provider(client, token, provider)
            for uri in (
                "https://app.example.org/sso/done",
                "http://[::1]:4567/cb",
                "http://127.0.0.1:1/x?y=1",
            ):
                await start_flow(client, "test", uri)
            refused = await client.get(
                "/api/v1/auth/oidc/authorize/test",
                params={"redirect_uri": "https://app.example.org/sso/other"},
            )
            assert refused.status_code == 400
    finally:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


async def test_disabled_provider(sso: tuple[Daemon, str], provider: Provider, receiver: Receiver) -> None:
    daemon, admin = sso
    with trio.fail_after(30):
        async with daemon.http() as client:
            # disabled between authorize and callback: the flow fails at the callback
            callback_url = await at_provider(await start_flow(client, "test", receiver.url))
            patch = await client.patch(
                "/api/v1/admin/oidc-providers/test", json={"enabled": False}, headers=bearer(admin)
            )
            assert patch.status_code == 200 and patch.json()["enabled"] is False
            response = await at_callback(callback_url)
            assert response.status_code == 302
            assert (await deliver(response.headers["location"], receiver))[
                "error"
            ] == "oidc_provider_disabled"
            # and it is neither listed nor usable
            assert (await client.get("/api/v1/auth/oidc/providers")).json() == []
            refused = await client.get(
                "/api/v1/auth/oidc/authorize/test", params={"redirect_uri": receiver.url}
            )
            assert refused.status_code == 404
            unknown = await client.get(
                "/api/v1/auth/oidc/authorize/nope", params={"redirect_uri": receiver.url}
            )
            assert unknown.status_code == 404


async def test_provider_refusal_and_disabled_account(
    sso: tuple[Daemon, str], provider: Provider, receiver: Receiver
) -> None:
    daemon, admin = sso
    with trio.fail_after(30):
        async with daemon.http() as client:
            provider.deny = True
            assert (await sign_in(client, receiver))["error"] == "access_denied"
            provider.deny = False
            provider.user = {"sub": "to-disable", "preferred_username": "mallory"}
            tokens = await sign_in(client, receiver)
            disable = await client.post(
                f"/api/v1/admin/users/{tokens['user_id']}/disable", headers=bearer(admin)
            )
            assert disable.status_code == 200
            assert (await sign_in(client, receiver))["error"] == "account_disabled"
            me = await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 401


async def test_provider_admin_validation(sso: tuple[Daemon, str], provider: Provider) -> None:
    daemon, admin = sso
    async with daemon.http() as client:
        h = bearer(admin)
        base = {"slug": "x", "display_name": "X", "client_id": "c", "issuer_url": "https://idp.example.org"}
        for bad, field in (
            ({"issuer_url": "http://idp.example.org"}, "issuer_url"),
            ({"issuer_url": "https://idp.example.org/?a=1"}, "issuer_url"),
            ({"slug": "Bad Slug"}, "slug"),
            ({"scopes": "profile email"}, "scopes"),
            ({"client_id": ""}, "client_id"),
        ):
            response = await client.post("/api/v1/admin/oidc-providers", json={**base, **bad}, headers=h)
            assert response.status_code == 400, (bad, response.text)
            assert field in response.json()["error"]["fields"]
        duplicate = await client.post(
            "/api/v1/admin/oidc-providers", json={**base, "slug": "test"}, headers=h
        )
        assert duplicate.status_code == 409
        listed = (await client.get("/api/v1/admin/oidc-providers", headers=h)).json()
        assert [p["slug"] for p in listed] == ["test"]
        assert "client_secret_enc" not in listed[0] and "client_secret" not in listed[0]
        assert provider.client_secret is not None
        sealed = db_rows(daemon, "SELECT client_secret_enc FROM oidc_providers")[0][0]
        assert sealed.startswith("v1.") and provider.client_secret not in sealed
        assert (await client.delete("/api/v1/admin/oidc-providers/test", headers=h)).status_code == 204
        assert (await client.delete("/api/v1/admin/oidc-providers/test", headers=h)).status_code == 404
    # nor does the audit log show it
    stored = db_rows(daemon, "SELECT details FROM audit_log WHERE action LIKE 'oidc_provider_%'")
    assert stored and all(provider.client_secret not in row[0] for row in stored)


async def test_unreachable_or_mismatched_provider(sso: tuple[Daemon, str], provider: Provider) -> None:
    daemon, admin = sso
    async with daemon.http() as client:
        h = bearer(admin)
        dead = {"slug": "dead", "display_name": "Dead", "client_id": "c", "issuer_url": "http://127.0.0.1:1"}
        assert (await client.post("/api/v1/admin/oidc-providers", json=dead, headers=h)).status_code == 201
        response = await client.get(
            "/api/v1/auth/oidc/authorize/dead", params={"redirect_uri": "http://127.0.0.1:9/cb"}
        )
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "oidc_provider_unavailable"
        # a discovery document for another issuer (here: a trailing path the provider does not claim)
        other = {**dead, "slug": "other", "issuer_url": provider.issuer + "/realm"}
        assert (await client.post("/api/v1/admin/oidc-providers", json=other, headers=h)).status_code == 201
        response = await client.get(
            "/api/v1/auth/oidc/authorize/other", params={"redirect_uri": "http://127.0.0.1:9/cb"}
        )
        assert response.status_code == 502
