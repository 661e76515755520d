"""Edits, deletions, reactions, typing and attachments in federated DMs, between two daemons on
loopback (docs/federation.md, "Edits, deletions and reactions", "Typing", "Attachments").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection

from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event
from tests.federation.fed_helpers import envelope, post_signed_inbox
from tests.federation.pair import A, Account, B, account, b_database, error_of, rows, start_pair, stop
from vox import datadir

__all__ = ["b_database"]

NOISE = ("dm_create",)
DELIVERY_S = 20.0
THUMBS = "\U0001f44d"


async def next_event(ws: WebSocketConnection, type_: str, timeout: float = DELIVERY_S) -> dict[str, Any]:
    return await event(ws, type_, timeout, skip=NOISE)


async def nothing_more(ws: WebSocketConnection, seconds: float, *, ignore: tuple[str, ...] = ()) -> None:
    """No event (but presence and ``ignore``) arrives within ``seconds``."""
    with trio.move_on_after(seconds):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] not in {"presence_update", "rich_presence_update", *NOISE, *ignore}:
                raise AssertionError(f"unexpected event: {frame}")


async def exchange(
    alice: Account, bob: Account, alice_ws: WebSocketConnection, bob_ws: WebSocketConnection
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Alice opens the DM and writes; Bob answers. Each message as its writer's server and as the
    other server know it: (alice's, alice's at b, bob's, bob's at a)."""
    dm = await alice.ok("POST", "/dms", {"recipients": ["bob@b.test"]}, 201)
    sent = await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": "first draft"}, 201)
    assert (await next_event(alice_ws, "message_new"))["id"] == sent["id"]
    at_b = await next_event(bob_ws, "message_new")
    assert at_b["content"] == "first draft" and at_b["origin"] == A
    reply = await bob.ok("POST", f"/channels/{at_b['channel_id']}/messages", {"content": "bob here"}, 201)
    assert (await next_event(bob_ws, "message_new"))["id"] == reply["id"]
    at_a = await next_event(alice_ws, "message_new")
    assert at_a["content"] == "bob here" and at_a["origin"] == B
    return sent, at_b, reply, at_a


async def test_edits_and_deletes_both_ways(
    nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]
) -> None:
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        async with (
            gateway(a.daemon, alice.token) as (alice_ws, _),
            gateway(b.daemon, bob.token) as (bob_ws, _),
        ):
            sent, at_b, reply, at_a = await exchange(alice, bob, alice_ws, bob_ws)

            # Alice edits: Bob's server applies it to its own copy, with its own timestamp.
            await alice.ok("PATCH", f"/messages/{sent['id']}", {"content": "second draft"})
            assert (await next_event(alice_ws, "message_edit"))["content"] == "second draft"
            edited = await next_event(bob_ws, "message_edit")
            assert edited["id"] == at_b["id"] and edited["channel_id"] == at_b["channel_id"]
            assert edited["content"] == "second draft" and edited["origin"] == A
            assert edited["edited_at"] is not None
            assert edited["author"]["username"] == "alice@a.test"

            # Bob edits his answer; it reaches Alice the same way.
            await bob.ok("PATCH", f"/messages/{reply['id']}", {"content": "bob here, edited"})
            assert (await next_event(bob_ws, "message_edit"))["id"] == reply["id"]
            back = await next_event(alice_ws, "message_edit")
            assert (back["id"], back["content"], back["origin"]) == (at_a["id"], "bob here, edited", B)

            # Nobody edits or deletes the other side's message, relayed or not.
            refused = await bob.call("PATCH", f"/messages/{at_b['id']}", {"content": "bob's version"})
            assert refused.status_code == 403, refused.text

            # Alice deletes hers: gone on both servers.
            await alice.ok("DELETE", f"/messages/{sent['id']}", status=204)
            assert (await next_event(alice_ws, "message_delete"))["id"] == sent["id"]
            gone = await next_event(bob_ws, "message_delete")
            assert gone == {"id": at_b["id"], "channel_id": at_b["channel_id"], "guild_id": None}
            history_b = await bob.ok("GET", f"/channels/{at_b['channel_id']}/messages")
            assert [m["content"] for m in history_b] == ["bob here, edited"]

            # Bob deletes his.
            await bob.ok("DELETE", f"/messages/{reply['id']}", status=204)
            assert (await next_event(bob_ws, "message_delete"))["id"] == reply["id"]
            assert (await next_event(alice_ws, "message_delete"))["id"] == at_a["id"]
            assert await alice.ok("GET", f"/channels/{at_a['channel_id']}/messages") == []

        stored = rows(
            b, "SELECT id, content, deleted_at IS NOT NULL FROM messages WHERE remote_origin = ?", (A,)
        )
        assert stored == [(at_b["id"], "", 1)] or stored == [(at_b["id"], "", True)]
        # Every relay was delivered and acknowledged.
        with trio.fail_after(DELIVERY_S):
            while rows(a, "SELECT 1 FROM federation_outbox") or rows(b, "SELECT 1 FROM federation_outbox"):
                await trio.sleep(0.2)
    await stop(a, b)


async def test_encrypted_edit_carries_ciphertext(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        async with gateway(b.daemon, bob.token) as (bob_ws, _):
            dm = await alice.ok("POST", "/dms", {"recipients": ["bob@b.test"]}, 201)
            body = {"content": "b2xkIGNpcGhlcnRleHQ", "encrypted": True, "nonce": "bm9uY2U"}
            sent = await alice.ok("POST", f"/channels/{dm['id']}/messages", body, 201)
            got = await next_event(bob_ws, "message_new")
            assert (got["content"], got["encrypted"]) == (body["content"], True)
            await alice.ok("PATCH", f"/messages/{sent['id']}", {"content": "bmV3IGNpcGhlcnRleHQ"})
            edited = await next_event(bob_ws, "message_edit")
            assert (edited["id"], edited["content"], edited["encrypted"]) == (
                got["id"],
                "bmV3IGNpcGhlcnRleHQ",
                True,
            )
            assert edited["nonce"] == "bm9uY2U"
    await stop(a, b)


async def test_a_peer_cannot_change_what_its_users_did_not_write(
    nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]
) -> None:
    """a.test's relays name bob's own message, an unknown id and a DM its user is not in: each
    is acknowledged and dropped, and nothing changes on b.test."""
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    a_key = datadir.prepare(tmp_path / "a" / "data").federation_key
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        async with (
            gateway(a.daemon, alice.token) as (alice_ws, _),
            gateway(b.daemon, bob.token) as (bob_ws, _),
        ):
            sent, at_b, reply, _ = await exchange(alice, bob, alice_ws, bob_ws)

            async def deliver(outbox_id: int, kind: str, payload: dict[str, Any]) -> httpx.Response:
                return await post_signed_inbox(cb, a_key, A, B, envelope(outbox_id, kind, **payload))

            forged = [
                # Bob's own message, by b.test's id for it.
                ("dm_edit", {"message_id": reply["id"], "content": "forged"}),
                ("dm_delete", {"message_id": reply["id"]}),
                # Alice's message by b.test's id (a.test knows it only by its own).
                ("dm_edit", {"message_id": at_b["id"], "content": "forged"}),
                ("dm_delete", {"message_id": "0190c0de-0000-7000-8000-000000000000"}),
                # A reaction by someone of a.test who is not in the DM.
                (
                    "dm_reaction",
                    {
                        "user": {"id": "m", "username": "mallory"},
                        "message": {"origin": B, "id": reply["id"]},
                        "emoji": THUMBS,
                        "add": True,
                    },
                ),
            ]
            for n, (kind, payload) in enumerate(forged):
                answered = await deliver(90_000 + n, kind, payload)
                assert answered.status_code == 200, answered.text
            await nothing_more(bob_ws, 2.0)

            history = await bob.ok("GET", f"/channels/{at_b['channel_id']}/messages")
            assert [(m["content"], m["edited_at"], m["reactions"]) for m in history] == [
                ("bob here", None, []),
                ("first draft", None, []),
            ]

            # The genuine edit, by a.test's id, still applies.
            await alice.ok("PATCH", f"/messages/{sent['id']}", {"content": "genuine"})
            assert (await next_event(bob_ws, "message_edit"))["content"] == "genuine"
    await stop(a, b)


async def test_reactions_both_ways(nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]) -> None:
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        async with (
            gateway(a.daemon, alice.token) as (alice_ws, _),
            gateway(b.daemon, bob.token) as (bob_ws, _),
        ):
            sent, at_b, reply, at_a = await exchange(alice, bob, alice_ws, bob_ws)
            bob_at_a = at_a["author"]["id"]
            alice_at_b = at_b["author"]["id"]

            # Bob reacts to Alice's message (relayed to him): it lands on her original.
            await bob.ok("PUT", f"/messages/{at_b['id']}/reactions/{THUMBS}", status=204)
            assert (await next_event(bob_ws, "reaction_add"))["message_id"] == at_b["id"]
            got = await next_event(alice_ws, "reaction_add")
            assert got == {
                "message_id": sent["id"],
                "channel_id": sent["channel_id"],
                "guild_id": None,
                "user_id": bob_at_a,
                "emoji": THUMBS,
            }

            # Alice reacts to Bob's message (relayed to her): it lands on his original.
            await alice.ok("PUT", f"/messages/{at_a['id']}/reactions/{THUMBS}", status=204)
            assert (await next_event(alice_ws, "reaction_add"))["message_id"] == at_a["id"]
            got = await next_event(bob_ws, "reaction_add")
            assert (got["message_id"], got["user_id"], got["emoji"]) == (reply["id"], alice_at_b, THUMBS)

            # Alice reacts to her own message: Bob's copy gets it.
            await alice.ok("PUT", f"/messages/{sent['id']}/reactions/{THUMBS}", status=204)
            await next_event(alice_ws, "reaction_add")
            got = await next_event(bob_ws, "reaction_add")
            assert (got["message_id"], got["user_id"]) == (at_b["id"], alice_at_b)

            # Removal travels too.
            await bob.ok("DELETE", f"/messages/{at_b['id']}/reactions/{THUMBS}", status=204)
            await next_event(bob_ws, "reaction_remove")
            got = await next_event(alice_ws, "reaction_remove")
            assert (got["message_id"], got["user_id"], got["emoji"]) == (sent["id"], bob_at_a, THUMBS)

        mine_at_a = await alice.ok("GET", f"/channels/{sent['channel_id']}/messages")
        assert [(m["id"], m["reactions"]) for m in mine_at_a] == [
            (at_a["id"], [{"emoji": THUMBS, "count": 1, "me": True}]),
            (sent["id"], [{"emoji": THUMBS, "count": 1, "me": True}]),
        ]
        mine_at_b = await bob.ok("GET", f"/channels/{at_b['channel_id']}/messages")
        assert [(m["id"], m["reactions"]) for m in mine_at_b] == [
            (reply["id"], [{"emoji": THUMBS, "count": 1, "me": False}]),
            (at_b["id"], [{"emoji": THUMBS, "count": 1, "me": False}]),
        ]
    await stop(a, b)


async def subscribe(ws: WebSocketConnection, channel_id: str) -> None:
    await ws.send_message(json.dumps({"type": "subscribe", "d": {"channel_id": channel_id}}))


async def test_typing_is_relayed_and_never_queued(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A typing start reaches the other server's gateway and stops there after 10 s like local
    typing; while the peer is down it is dropped, not queued for later."""
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        async with gateway(a.daemon, alice.token) as (alice_ws, _):
            async with gateway(b.daemon, bob.token) as (bob_ws, _):
                sent, at_b, _, _ = await exchange(alice, bob, alice_ws, bob_ws)
                alice_at_b = at_b["author"]["id"]
                await subscribe(bob_ws, at_b["channel_id"])
                await trio.sleep(0.5)  # the subscription has no answer to wait for
                await typing(alice_ws, sent["channel_id"])
                started = await next_event(bob_ws, "typing_start")
                assert started == {"channel_id": at_b["channel_id"], "user_id": alice_at_b}
                started_at = trio.current_time()
                # Not refreshed: it stops on b.test like local typing, after about 10 s.
                stopped = await next_event(bob_ws, "typing_stop", timeout=30.0)
                assert stopped == started
                assert 8.0 <= trio.current_time() - started_at <= 25.0

            await b.stop()
            # Past the relay's once-per-5-s window: this one is attempted, fails and is dropped.
            await typing(alice_ws, sent["channel_id"])
            await trio.sleep(2.0)
            assert rows(a, "SELECT kind FROM federation_outbox") == []
            await b.restart(nursery)
    async with b.http() as cb:
        bob.client = cb
        async with gateway(b.daemon, bob.token) as (bob_ws, _):
            await subscribe(bob_ws, at_b["channel_id"])
            await nothing_more(bob_ws, 4.0)
    assert rows(a, "SELECT kind FROM federation_outbox") == []
    await stop(a, b)


async def typing(ws: WebSocketConnection, channel_id: str) -> None:
    await ws.send_message(json.dumps({"type": "typing", "d": {"channel_id": channel_id}}))


async def test_attachments_do_not_cross_servers(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        await account(b, cb, "bob")
        dm = await alice.ok("POST", "/dms", {"recipients": ["bob@b.test"]}, 201)
        refused = await ca.post(
            f"/api/v1/channels/{dm['id']}/messages/upload",
            headers=alice.h,
            files={"file": ("notes.txt", b"hello", "text/plain")},
            data={"content": "see attached"},
        )
        assert refused.status_code == 400, refused.text
        error = error_of(refused)
        assert error["code"] == "validation_error"
        assert error["message"] == "attachments do not cross servers yet"
        assert rows(a, "SELECT COUNT(*) FROM messages") == [(0,)]
        assert rows(a, "SELECT COUNT(*) FROM file_attachments") == [(0,)]
        assert rows(a, "SELECT COUNT(*) FROM federation_outbox") == [(0,)]
        # Text still goes through.
        await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": "no file then"}, 201)
    await stop(a, b)
