"""Signing in through the web client: single sign-on with the server's OIDC provider (the
provider's button, the round trip, the tokens taken from the address bar, a reload staying
signed in), and a password login that asks for the TOTP code."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pyotp

from tests.browser.client import PASSWORD, close, expect, open_page
from tests.browser.conftest import Server
from tests.e2e.oidc_provider import Provider, serve_provider


def _register(client: httpx.Client, username: str) -> str:
    assert client.post("/api/v1/auth/register", json={"username": username, "password": PASSWORD}).is_success
    response = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    return str(response.json()["access_token"])


def test_single_sign_on_button(server: Server, browser: Any) -> None:
    provider = Provider(user={"sub": "sso-1", "preferred_username": "sam", "name": "Sam Sso"})
    with serve_provider(provider), httpx.Client(base_url=server.rest, timeout=10) as client:
        admin = {"Authorization": f"Bearer {_register(client, 'root')}"}  # the first account: admin
        assert client.post("/api/v1/admin/elevate", json={"password": PASSWORD}, headers=admin).is_success
        created = client.post(
            "/api/v1/admin/oidc-providers",
            headers=admin,
            json={
                "slug": "test",
                "display_name": "Test IdP",
                "issuer_url": provider.issuer,
                "client_id": provider.client_id,
                "client_secret": provider.client_secret,
            },
        )
        assert created.status_code == 201, created.text

        page = open_page(browser, server)
        try:
            page.get_by_role("link", name="Continue with Test IdP").click()
            expect(page.locator(".connection")).to_have_attribute("data-state", "online")
            expect(page.locator(".me-name")).to_have_text("Sam Sso")
            assert "access_token" not in page.url, page.url
            page.reload()
            expect(page.locator(".connection")).to_have_attribute("data-state", "online")
            expect(page.locator(".me-name")).to_have_text("Sam Sso")
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="Sign in to Vox")).to_be_visible()
        finally:
            close(page)
    assert not provider.errors, provider.errors


def test_password_sign_in_with_a_totp_code(server: Server, browser: Any) -> None:
    with httpx.Client(base_url=server.rest, timeout=10) as client:
        auth = {"Authorization": f"Bearer {_register(client, 'mfa.user')}"}
        secret = client.post("/api/v1/auth/mfa/setup", headers=auth).json()["secret"]
        totp = pyotp.TOTP(secret)
        assert client.post("/api/v1/auth/mfa/enable", headers=auth, json={"code": totp.now()}).is_success

    page = open_page(browser, server)
    try:
        form = page.get_by_role("form", name="Sign in")
        form.get_by_label("Username").fill("mfa.user")
        form.get_by_label("Password").fill("wrong password")
        form.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert").first).not_to_be_empty()
        form.get_by_label("Password").fill(PASSWORD)
        form.get_by_role("button", name="Sign in").click()
        code = page.get_by_role("form", name="Two-factor code")
        # The current step was spent enabling MFA; the next one is accepted too.
        code.get_by_label("Code").fill(totp.at(time.time() + 30))
        code.get_by_role("button", name="Verify").click()
        expect(page.locator(".connection")).to_have_attribute("data-state", "online")
        expect(page.locator(".me-name")).to_have_text("mfa.user")
    finally:
        close(page, allow=("401",))
