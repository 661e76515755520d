"""The web client's HTTP side: the page and its modules with their security headers, no way out
of the shipped files, and the presence snapshot the member list starts from."""

from __future__ import annotations

import json

from trio_websocket import open_websocket_url

from tests.e2e.conftest import Daemon
from tests.e2e.helpers import bearer, user_with_token
from vox.api.web import WEB_ROOT


async def test_page_and_modules_carry_a_strict_policy(daemon: Daemon) -> None:
    async with daemon.http() as client:
        page = await client.get("/")
        module = await client.get("/web/js/main.js")
        style = await client.get("/web/app.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/js/main.js">' in page.text
    assert module.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    for response in (page, module, style):
        csp = dict(p.strip().split(" ", 1) for p in response.headers["content-security-policy"].split(";"))
        assert csp["default-src"] == "'none'"
        assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
        assert csp["connect-src"] == f"'self' {daemon.gateway}"
        assert csp["frame-ancestors"] == "'none'"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    # The web client's policy is its own: API answers get the strict one for data (no scripts,
    # no framing; vox.transports.http_headers).
    async with daemon.http() as client:
        api = await client.get("/api/v1/gateway")
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_no_inline_script_or_style_in_the_page() -> None:
    html = (WEB_ROOT / "index.html").read_text()
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    for script in (WEB_ROOT / "js").glob("*.js"):
        text = script.read_text()
        assert ".innerHTML" not in text and "eval(" not in text, script.name


async def test_only_shipped_files_are_served(daemon: Daemon) -> None:
    async with daemon.http() as client:
        for path in (
            "/web/../pyproject.toml",
            "/web/%2e%2e/api/web.py",
            "/web/js/..%2fapp.css",
            "/web/nope.js",
            "/web/js/api.py",
            "/web/a/b/c.js",
            "/web/.hidden.js",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"


async def test_presence_snapshot_of_a_guild(daemon: Daemon) -> None:
    async with daemon.http() as client:
        alice_id, alice = await user_with_token(client, "alice")
        bob_id, bob = await user_with_token(client, "bob")
        guild = (await client.post("/api/v1/guilds", json={"name": "G"}, headers=bearer(alice))).json()
        invite = (
            await client.post(f"/api/v1/guilds/{guild['id']}/invites", json={}, headers=bearer(alice))
        ).json()
        await client.post(f"/api/v1/invites/{invite['code']}", headers=bearer(bob))
        stranger = (await user_with_token(client, "carol"))[1]

        async with open_websocket_url(daemon.gateway) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": bob}}))
            assert json.loads(await ws.get_message())["type"] == "ready"
            snapshot = await client.get(f"/api/v1/guilds/{guild['id']}/presences", headers=bearer(alice))
        hidden = await client.get(f"/api/v1/guilds/{guild['id']}/presences", headers=bearer(stranger))
    assert snapshot.status_code == 200
    statuses = {p["user_id"]: p["status"] for p in snapshot.json()}
    assert statuses == {alice_id: "offline", bob_id: "online"}
    assert hidden.status_code == 404
