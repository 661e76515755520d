"""Vouchers and guests (docs/federation.md, "Federated DMs, guests and presence"): alice@a.test
gets a voucher from her home server, signs in on b.test as a guest with it, joins a guild there
with an invite and chats over REST and the gateway; replayed, mis-addressed, expired and forged
vouchers are refused, and the guest never reaches an admin route.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.conftest import start_daemon
from tests.e2e.helpers import db_execute, db_rows, gateway
from tests.e2e.media_helpers import Inbox, datagram
from tests.e2e.media_helpers import gateway as media_gateway
from tests.e2e.social_helpers import event
from tests.federation.pair import A, Account, B, Server, account, b_database, error_of, rows, start_pair, stop
from vox import datadir
from vox.protocol.federation import issue_voucher, new_voucher_payload
from vox.transports.quic_client import open_media_client

__all__ = ["b_database"]

ADMIN_ROUTES = (
    ("POST", "/admin/elevate", {"password": "correct horse battery"}),
    ("GET", "/admin/users", None),
    ("POST", "/admin/users/00000000-0000-0000-0000-000000000000/disable", None),
    ("POST", "/admin/users/00000000-0000-0000-0000-000000000000/enable", None),
    ("GET", "/admin/guilds", None),
    ("GET", "/admin/settings", None),
    ("PATCH", "/admin/settings", {"registration_policy": "open"}),
    ("GET", "/admin/oidc-providers", None),
    (
        "POST",
        "/admin/oidc-providers",
        {"slug": "x", "display_name": "X", "issuer_url": "https://x.example", "client_id": "x"},
    ),
    ("PATCH", "/admin/oidc-providers/x", {"enabled": False}),
    ("DELETE", "/admin/oidc-providers/x", None),
    ("GET", "/admin/audit-log", None),
)


async def voucher_for(user: Account, audience: str) -> str:
    answer = await user.ok("POST", "/federation/vouchers", {"audience": audience})
    assert answer["audience"] == audience and answer["address"] == user.address
    assert 0 < answer["expires_in"] <= 60
    return str(answer["voucher"])


async def redeem(client: httpx.AsyncClient, voucher: str) -> httpx.Response:
    return await client.post("/api/v1/auth/federated", json={"voucher": voucher})


def refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    error = error_of(response)
    assert (error["code"], error["reason"]) == ("federation_unauthorized", reason), error


async def guest(server: Server, client: httpx.AsyncClient, voucher: str) -> Account:
    response = await redeem(client, voucher)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    me = await client.get("/api/v1/users/@me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["id"] == tokens["user_id"]
    return Account(server, client, tokens["user_id"], me.json()["username"], tokens["access_token"])


async def test_guest_joins_a_guild_and_chats(
    nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]
) -> None:
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        carol = await account(b, cb, "carol")
        guild = await carol.ok("POST", "/guilds", {"name": "B community"}, 201)
        channel = next(
            c for c in await carol.ok("GET", f"/guilds/{guild['id']}/channels") if c["channel_type"] == "text"
        )
        invite = await carol.ok("POST", f"/guilds/{guild['id']}/invites", {}, 201)

        # b.test already knows alice's profile from a lookup; her guest sign-in keeps it.
        await alice.ok("PATCH", "/users/@me", {"display_name": "Alice A."})
        known = await carol.ok("GET", "/federation/profiles/alice@a.test")
        visitor = await guest(b, cb, await voucher_for(alice, B))
        assert visitor.name == "alice@a.test" and visitor.id == known["id"] != alice.id
        assert (await carol.ok("GET", f"/users/{visitor.id}"))["display_name"] == "Alice A."
        me = await visitor.ok("GET", "/users/@me")
        assert me["is_admin"] is False
        # The guest identity has no password on b.test: no local sign-in as alice@a.test.
        login = await cb.post(
            "/api/v1/auth/login", json={"username": "alice@a.test", "password": "guess-me-1"}
        )
        assert login.status_code == 401, login.text

        await visitor.ok("POST", f"/invites/{invite['code']}")
        async with (
            gateway(b.daemon, carol.token) as (carol_ws, _),
            gateway(b.daemon, visitor.token) as (
                alice_ws,
                ready,
            ),
        ):
            assert ready is not None and ready["type"] == "ready"
            sent = await visitor.ok(
                "POST", f"/channels/{channel['id']}/messages", {"content": "hi from a.test"}, 201
            )
            assert sent["author"]["username"] == "alice@a.test" and sent["origin"] is None
            got = await event(carol_ws, "message_new", 10, skip=("member_join",))
            assert got["id"] == sent["id"]
            answer = await carol.ok(
                "POST", f"/channels/{channel['id']}/messages", {"content": "welcome!"}, 201
            )
            seen = await event(alice_ws, "message_new", 10, skip=("member_join",))
            if seen["id"] == sent["id"]:
                seen = await event(alice_ws, "message_new", 10)
            assert seen["id"] == answer["id"] and seen["content"] == "welcome!"

        # A second voucher signs in the same guest identity again (a new session).
        again = await guest(b, cb, await voucher_for(alice, B))
        assert again.id == visitor.id
        identity = rows(
            b, "SELECT home_domain, remote_user_id, password_hash FROM users WHERE id = ?", (visitor.id,)
        )
        assert identity == [(A, alice.id, None)]
    await stop(a, b)


async def test_bad_vouchers_are_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    a_key = datadir.prepare(tmp_path / "a" / "data").federation_key
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        voucher = await voucher_for(alice, B)
        assert (await redeem(cb, voucher)).status_code == 200
        refused(await redeem(cb, voucher), "replayed")

        # Addressed to another server.
        refused(await redeem(cb, await voucher_for(alice, "c.test")), "wrong_audience")
        # Expired (signed by a.test's real key, a minute and a half ago).
        now = int(time.time() * 1000)
        old = new_voucher_payload(issuer=A, audience=B, subject=alice.id, name="alice", now_ms=now - 90_000)
        refused(await redeem(cb, issue_voucher(a_key, old)), "expired")
        fresh = new_voucher_payload(issuer=A, audience=B, subject=alice.id, name="alice", now_ms=now)
        # Forged: a key that is not a.test's, and a.test's signature over other claims.
        refused(await redeem(cb, issue_voucher(Ed25519PrivateKey.generate(), fresh)), "bad_signature")
        genuine = issue_voucher(a_key, fresh)
        body, _, signature = genuine.partition(".")
        other = issue_voucher(a_key, {**fresh, "name": "mallory"}).partition(".")[0]
        refused(await redeem(cb, f"{other}.{signature}"), "bad_signature")
        # The genuine one still works once: the refusals above did not burn it.
        assert (await redeem(cb, f"{body}.{signature}")).status_code == 200
        garbage = await redeem(cb, "not-a-voucher")
        assert garbage.status_code == 401, garbage.text
        # Only this server's own users get vouchers; none for itself.
        bad = await alice.call("POST", "/federation/vouchers", {"audience": A})
        assert bad.status_code == 400, bad.text
        assert db_rows(b.daemon, "SELECT COUNT(*) FROM sessions") == [(2,)]
    await stop(a, b)


async def test_guest_is_refused_on_admin_routes(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        # The guest signs in on b.test before anyone registered there, then b.test's first
        # local account still becomes its admin.
        visitor = await guest(b, cb, await voucher_for(alice, B))
        owner = await account(b, cb, "owner")
        assert (await owner.ok("GET", "/users/@me"))["is_admin"] is True
        assert (await owner.call("GET", "/admin/users")).status_code == 403  # not elevated yet
        # Even listed in system_admins, a guest is no admin: every admin route answers 403.
        db_execute(b.daemon, "INSERT INTO system_admins (user_id, created_at) VALUES (?, 0)", (visitor.id,))
        for method, path, body in ADMIN_ROUTES:
            response = await visitor.call(method, path, body)
            # "forbidden": refused as a non-admin, not merely for want of elevation.
            assert response.status_code == 403, (method, path, response.status_code, response.text)
            assert error_of(response)["code"] == "forbidden", (method, path, response.text)
        # Guests cannot vouch for anyone: their home server does that.
        relay = await visitor.call("POST", "/federation/vouchers", {"audience": A})
        assert relay.status_code == 403, relay.text
        # And they cannot open DMs with users of other servers from here.
        dm = await visitor.call("POST", "/dms", {"recipients": ["alice@a.test"]})
        assert dm.status_code == 403, dm.text
        # Nor found guilds here; joining the ones they are invited to is what they came for.
        founded = await visitor.call("POST", "/guilds", {"name": "Visitors"})
        assert founded.status_code == 403, founded.text
        assert error_of(founded)["code"] == "forbidden"
        assert (await owner.call("POST", "/guilds", {"name": "Locals"})).status_code == 201
    await stop(a, b)


async def test_closed_policy_and_disabled_federation(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path, b={"federation_policy": "closed"})
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        response = await redeem(cb, await voucher_for(alice, B))
        assert response.status_code == 403 and error_of(response)["code"] == "federation_forbidden"
    await stop(a, b)
    async with trio.open_nursery() as inner:
        plain = await start_daemon(inner, tmp_path / "plain")
        async with plain.http() as client:
            off = await client.post("/api/v1/auth/federated", json={"voucher": "x.y"})
            assert off.status_code == 404 and error_of(off)["code"] == "federation_disabled"
            lookup = await client.get("/api/v1/federation/users/alice")
            assert lookup.status_code == 404 and error_of(lookup)["code"] == "federation_disabled"
        plain.stop.set()


async def test_guest_joins_voice(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A guest talks in a voice channel of the guild they joined, over b.test's QUIC media
    transport, like any member."""
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        carol = await account(b, cb, "carol")
        guild = await carol.ok("POST", "/guilds", {"name": "B voice"}, 201)
        body = {"name": "Lounge", "channel_type": "voice"}
        voice = await carol.ok("POST", f"/guilds/{guild['id']}/channels", body, 201)
        invite = await carol.ok("POST", f"/guilds/{guild['id']}/invites", {}, 201)
        visitor = await guest(b, cb, await voucher_for(alice, B))
        await visitor.ok("POST", f"/invites/{invite['code']}")
        async with (
            media_gateway(b.daemon, visitor.token, "alice@a.test") as gw_alice,
            media_gateway(b.daemon, carol.token, "carol") as gw_carol,
        ):
            session = await gw_alice.join_quic(voice["id"])
            carol_session = await gw_carol.join_quic(voice["id"])
            assert session["channel_id"] == voice["id"] and session["room_id"] == carol_session["room_id"]
            heard = Inbox()
            async with (
                open_media_client(session["media_url"]) as alice_media,
                open_media_client(carol_session["media_url"]) as carol_media,
            ):
                carol_media.on_datagram = heard
                with trio.fail_after(10):
                    await alice_media.authenticate(session["media_token"])
                    await carol_media.authenticate(carol_session["media_token"])
                # The guest speaks; carol hears it, byte for byte.
                sent = [datagram(session, seq) for seq in range(20)]
                for data in sent:
                    alice_media.send(data)
                await alice_media.flush()
                with trio.move_on_after(5):
                    await heard.wait_count(len(sent))
                assert heard.datagrams and set(heard.datagrams) <= set(sent)
    await stop(a, b)
