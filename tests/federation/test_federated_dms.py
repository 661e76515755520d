"""Federated DMs between two daemons on loopback (docs/federation.md, "Federated DMs, guests and
presence"): a DM opened with ``bob@b.test``, messages both ways with live gateway delivery,
messages rebuilt with the receiver's own ids and timestamps and tagged with their origin, an
Olm/Megolm exchange across the servers (keys claimed through the home server), and a relay
whose sender-supplied ids and fields are ignored.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio
import vodozemac

from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event
from tests.federation.dns_server import DnsServer
from tests.federation.fed_helpers import post_signed_inbox
from tests.federation.pair import A, Account, B, account, b_database, error_of, rows, start_pair, stop
from vox import datadir

__all__ = ["b_database"]

NOISE = ("dm_create",)
DELIVERY_S = 20.0


async def message_event(ws: Any, timeout: float = DELIVERY_S) -> dict[str, Any]:
    return await event(ws, "message_new", timeout, skip=NOISE)


async def open_dm(sender: Account, address: str) -> dict[str, Any]:
    dm: dict[str, Any] = await sender.ok("POST", "/dms", {"recipients": [address]}, 201)
    return dm


async def test_dm_both_ways_with_live_delivery(
    nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]
) -> None:
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")

        # The profile comes from bob's home server; the id is a.test's own for him.
        profile = await alice.ok("GET", "/federation/profiles/bob@b.test")
        assert profile["username"] == "bob@b.test" and profile["home_domain"] == B
        assert profile["id"] != bob.id and profile["is_admin"] is False
        missing = await alice.call("GET", "/federation/profiles/nobody@b.test")
        assert missing.status_code == 404, missing.text

        async with (
            gateway(a.daemon, alice.token) as (alice_ws, _),
            gateway(b.daemon, bob.token) as (bob_ws, _),
        ):
            dm = await open_dm(alice, "bob@b.test")
            assert sorted(r["username"] for r in dm["recipients"]) == ["alice", "bob@b.test"]
            # Opening it again reuses the 1:1 DM.
            again = await alice.ok("POST", "/dms", {"recipients": ["bob@b.test"]})
            assert again["id"] == dm["id"]

            sent = await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": "hello bob"}, 201)
            assert sent["origin"] is None
            mine = await message_event(alice_ws)
            assert mine["id"] == sent["id"]

            # Bob's server rebuilds it: its own id and channel, the sender as alice@a.test.
            before_ms = int(time.time() * 1000)
            got = await message_event(bob_ws)
            assert got["content"] == "hello bob" and got["origin"] == A
            assert got["author"]["username"] == "alice@a.test"
            assert got["id"] != sent["id"] and got["channel_id"] != dm["id"]
            bob_dms = await bob.ok("GET", "/dms")
            assert [d["id"] for d in bob_dms] == [got["channel_id"]]
            assert sorted(r["username"] for r in bob_dms[0]["recipients"]) == ["alice@a.test", "bob"]
            stored = rows(b, "SELECT id, remote_origin, remote_id, created_at FROM messages")
            assert stored == [(got["id"], A, sent["id"], stored[0][3])]
            assert before_ms - 5_000 <= stored[0][3] <= before_ms + 5_000

            # Bob answers in his DM; it reaches alice's gateway the same way.
            reply = await bob.ok(
                "POST", f"/channels/{got['channel_id']}/messages", {"content": "hi alice, from b"}, 201
            )
            assert (await message_event(bob_ws))["id"] == reply["id"]
            back = await message_event(alice_ws)
            assert back["content"] == "hi alice, from b" and back["origin"] == B
            assert back["channel_id"] == dm["id"] and back["id"] != reply["id"]
            assert back["author"]["id"] == profile["id"]

        # History on both sides, oldest last, in each server's own ids.
        history_a = await alice.ok("GET", f"/channels/{dm['id']}/messages")
        assert [(m["content"], m["origin"]) for m in history_a] == [
            ("hi alice, from b", B),
            ("hello bob", None),
        ]
        history_b = await bob.ok("GET", f"/channels/{got['channel_id']}/messages")
        assert [(m["content"], m["origin"]) for m in history_b] == [
            ("hi alice, from b", None),
            ("hello bob", A),
        ]
    await stop(a, b)


async def test_dms_wait_in_the_outbox_while_the_peer_is_down(nursery: trio.Nursery, tmp_path: Path) -> None:
    """b.test goes down; alice keeps writing; when it returns every message arrives, once and in
    order, and b.test's ids follow that order."""
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        dm = await open_dm(alice, "bob@b.test")
        texts = [f"message {i}" for i in range(6)]
        await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": texts[0]}, 201)
        with trio.fail_after(DELIVERY_S):
            while not await bob.ok("GET", "/dms"):
                await trio.sleep(0.1)

        await b.stop()
        for text in texts[1:]:
            await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": text}, 201)
        # Queued, and tried at least once against the closed port.
        with trio.fail_after(DELIVERY_S):
            while not rows(a, "SELECT 1 FROM federation_outbox WHERE attempts > 0"):
                await trio.sleep(0.2)
        assert rows(a, "SELECT COUNT(*) FROM federation_outbox WHERE kind = 'dm_message'") == [(5,)]

        await b.restart(nursery)
    async with b.http() as cb:
        bob.client = cb
        with trio.fail_after(DELIVERY_S * 2):
            while rows(a, "SELECT 1 FROM federation_outbox WHERE kind = 'dm_message'"):
                await trio.sleep(0.2)
        (bob_dm,) = await bob.ok("GET", "/dms")
        history = await bob.ok("GET", f"/channels/{bob_dm['id']}/messages?limit=100")
        assert [m["content"] for m in reversed(history)] == texts
        assert all(m["origin"] == A for m in history)
        stored = rows(b, "SELECT id, content FROM messages ORDER BY id")
        assert [content for _, content in stored] == texts
    await stop(a, b)


async def test_dm_both_ways_through_dns_discovery(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The same exchange with no static peers: each server finds the other's address (SRV) and
    key (TXT) through the test nameserver."""
    dns = DnsServer()
    await nursery.start(dns.serve)
    a, b = await start_pair(nursery, tmp_path, dns=dns)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        async with (
            gateway(a.daemon, alice.token) as (alice_ws, _),
            gateway(b.daemon, bob.token) as (bob_ws, _),
        ):
            dm = await open_dm(alice, "bob@b.test")
            await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": "found you by DNS"}, 201)
            got = await message_event(bob_ws)
            assert (got["content"], got["origin"]) == ("found you by DNS", A)
            await bob.ok("POST", f"/channels/{got['channel_id']}/messages", {"content": "and back"}, 201)
            mine = await message_event(alice_ws)
            assert mine["origin"] is None  # alice's own message, echoed first
            back = await message_event(alice_ws)
            assert (back["content"], back["origin"], back["channel_id"]) == ("and back", B, dm["id"])
    # Both servers asked the nameserver for the other's service and key records.
    for domain in (A, B):
        assert (f"_vox._tcp.{domain}", "SRV") in dns.queries
        assert (f"_vox-key.{domain}", "TXT") in dns.queries
    await stop(a, b)


async def test_relay_ids_and_sender_domain_come_from_the_receiver(
    nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]
) -> None:
    """A peer chooses no ids on our side: a relay's message id is kept only as remote_id (a
    redelivery of it lands once), and its sender is always a user of the signing server."""
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    a_key = datadir.prepare(tmp_path / "a" / "data").federation_key
    async with b.http() as cb:
        bob = await account(b, cb, "bob")
        chosen_id = str(uuid.uuid4())

        async def deliver(outbox_id: int, sender: dict[str, Any], message_id: str) -> httpx.Response:
            envelope = {
                "id": outbox_id,
                "kind": "dm_message",
                "payload": {
                    "sender": sender,
                    "recipient": "bob",
                    "message": {"id": message_id, "content": f"relay {outbox_id}", "encrypted": False},
                },
            }
            return await post_signed_inbox(cb, a_key, A, B, json.dumps(envelope).encode())

        async with gateway(b.daemon, bob.token) as (bob_ws, _):
            # The sender claims to be someone of c.test: the name is kept, the domain is the signer's.
            claimed = {"id": "x", "username": "mallory", "display_name": "Mallory of C"}
            assert (await deliver(10_001, claimed, chosen_id)).status_code == 200
            got = await message_event(bob_ws)
            assert got["id"] != chosen_id and got["origin"] == A
            assert got["author"]["username"] == "mallory@a.test"
            # The same message again under another outbox id: nothing new is stored or sent.
            assert (await deliver(10_002, claimed, chosen_id)).status_code == 200
            with trio.move_on_after(1.0):
                extra = await message_event(bob_ws, timeout=1.0)
                raise AssertionError(f"a redelivered relay was delivered again: {extra}")
        stored = rows(b, "SELECT id, remote_id, content FROM messages")
        assert stored == [(got["id"], chosen_id, "relay 10001")]
        assert rows(b, "SELECT COUNT(*) FROM users WHERE home_domain = ?", (A,)) == [(1,)]

        # A sender name that is not a username is dropped (acknowledged, never stored).
        bad = {"id": "y", "username": "eve@b.test"}
        assert (await deliver(10_003, bad, str(uuid.uuid4()))).status_code == 200
        assert rows(b, "SELECT COUNT(*) FROM messages") == [(1,)]
        assert rows(b, "SELECT username FROM users WHERE home_domain IS NOT NULL") == [("mallory@a.test",)]
    await stop(a, b)


async def test_dm_rules_for_remote_recipients(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        carol = await account(a, ca, "carol")
        await account(b, cb, "bob")
        group = await alice.call("POST", "/dms", {"recipients": ["bob@b.test", carol.id]})
        assert group.status_code == 400, group.text
        bad = await alice.call("POST", "/dms", {"recipients": ["bob@not a domain"]})
        assert bad.status_code == 400 and error_of(bad)["code"] == "validation_error"
        unknown = await alice.call("POST", "/dms", {"recipients": ["nobody@b.test"]})
        assert unknown.status_code == 404, unknown.text
        # A peer that is not configured and has no DNS records cannot be reached.
        nowhere = await alice.call("POST", "/dms", {"recipients": ["bob@c.invalid"]})
        assert nowhere.status_code in (502, 404), nowhere.text
        # An address on this very server names the local user, under the local contact rule.
        stranger = await alice.call("POST", "/dms", {"recipients": ["carol@a.test"]})
        assert stranger.status_code == 403 and error_of(stranger)["user_ids"] == [carol.id]
        guild = await alice.ok("POST", "/guilds", {"name": "Home"}, 201)
        invite = await alice.ok("POST", f"/guilds/{guild['id']}/invites", {}, 201)
        await carol.ok("POST", f"/invites/{invite['code']}")
        local = await alice.ok("POST", "/dms", {"recipients": ["carol@a.test"]}, 201)
        assert sorted(r["id"] for r in local["recipients"]) == sorted([alice.id, carol.id])
    await stop(a, b)


class Device:
    """One vodozemac Olm account and the keys it published."""

    def __init__(self, owner: Account, device_id: str) -> None:
        self.owner = owner
        self.device_id = device_id
        self.account = vodozemac.Account()
        self.account.generate_fallback_key()
        self.account.generate_one_time_keys(2)

    async def publish(self) -> None:
        ((_, fallback),) = self.account.fallback_key.items()
        prekey = fallback.to_base64()
        body = {
            "device_id": self.device_id,
            "identity_key": self.account.curve25519_key.to_base64(),
            "signing_key": self.account.ed25519_key.to_base64(),
            "signed_prekey": {"key": prekey, "signature": self.account.sign(prekey.encode()).to_base64()},
            "one_time_keys": [
                {"key_id": k, "key": v.to_base64()} for k, v in self.account.one_time_keys.items()
            ],
        }
        await self.owner.ok("POST", "/keys/upload", body)
        self.account.mark_keys_as_published()


def olm_parts(message: vodozemac.AnyOlmMessage) -> tuple[str, str]:
    kind, ciphertext = message.to_parts()
    return base64.b64encode(ciphertext).decode(), f"olm:{kind}"


async def test_e2ee_exchange_across_servers(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        alice_dev, bob_dev = Device(alice, "alice-laptop"), Device(bob, "bob-phone")
        await alice_dev.publish()
        await bob_dev.publish()
        bob_here = await alice.ok("GET", "/federation/profiles/bob@b.test")

        # Alice claims bob's keys at a.test, which asks b.test: one one-time key is used up there.
        (claimed,) = (await alice.ok("POST", "/keys/claim", {"user_id": bob_here["id"]}))["devices"]
        assert claimed["device_id"] == "bob-phone"
        assert claimed["identity_key"] == bob_dev.account.curve25519_key.to_base64()
        assert claimed["one_time_key"] is not None
        assert await bob.ok("GET", "/keys/count?device_id=bob-phone") == {"remaining": 1}
        # By address too, and for a device that does not exist: 404 from the home server.
        by_address = await alice.ok(
            "POST", "/keys/claim", {"user_id": "bob@b.test", "device_id": "bob-phone"}
        )
        assert by_address["devices"][0]["device_id"] == "bob-phone"
        nodevice = await alice.call("POST", "/keys/claim", {"user_id": bob_here["id"], "device_id": "nope"})
        assert nodevice.status_code == 404, nodevice.text

        olm = alice_dev.account.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(claimed["identity_key"]),
            vodozemac.Curve25519PublicKey.from_base64(claimed["one_time_key"]["key"]),
        )
        megolm = vodozemac.GroupSession()
        room_key = json.dumps(
            {"session_id": megolm.session_id, "session_key": megolm.session_key.to_base64()}
        )
        dm = await open_dm(alice, "bob@b.test")
        secret = f"the cellar key is under the {uuid.uuid4().hex}"

        async with (
            gateway(b.daemon, bob.token) as (bob_ws, _),
            gateway(a.daemon, alice.token) as (alice_ws, _),
        ):
            content, nonce = olm_parts(olm.encrypt(room_key.encode()))
            body = {"content": content, "encrypted": True, "nonce": nonce}
            await alice.ok("POST", f"/channels/{dm['id']}/messages", body, 201)
            megolm_text = megolm.encrypt(secret.encode()).to_base64()
            body = {"content": megolm_text, "encrypted": True, "nonce": f"megolm:{megolm.session_id}"}
            await alice.ok("POST", f"/channels/{dm['id']}/messages", body, 201)

            key_message = await message_event(bob_ws)
            assert key_message["encrypted"] is True and key_message["content"] == content
            assert key_message["origin"] == A
            # Bob learns alice's identity key from her device list, which b.test asks of a.test.
            alice_there = key_message["author"]["id"]
            listed = await bob.ok("GET", f"/keys/{alice_there}")
            assert listed == await bob.ok("GET", "/keys/alice@a.test")
            (alice_keys,) = listed["devices"]
            assert alice_keys == {
                "device_id": "alice-laptop",
                "identity_key": alice_dev.account.curve25519_key.to_base64(),
                "signing_key": alice_dev.account.ed25519_key.to_base64(),
            }
            kind = int(key_message["nonce"].split(":")[1])
            pre_key = vodozemac.AnyOlmMessage.from_parts(
                kind, base64.b64decode(key_message["content"])
            ).to_pre_key()
            assert pre_key is not None
            inbound_olm, plaintext = bob_dev.account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(alice_keys["identity_key"]), pre_key
            )
            shared = json.loads(plaintext)
            inbound = vodozemac.InboundGroupSession(vodozemac.SessionKey(shared["session_key"]))
            encrypted = await message_event(bob_ws)
            decrypted = inbound.decrypt(vodozemac.MegolmMessage.from_base64(encrypted["content"]))
            assert decrypted.plaintext.decode() == secret

            # Bob answers over his inbound Olm session; alice decrypts it on a.test.
            answer = f"found it {uuid.uuid4().hex}"
            content, nonce = olm_parts(inbound_olm.encrypt(answer.encode()))
            await bob.ok(
                "POST",
                f"/channels/{encrypted['channel_id']}/messages",
                {"content": content, "encrypted": True, "nonce": nonce},
                201,
            )
            # Alice's gateway first echoes her own two messages.
            own = [await message_event(alice_ws) for _ in range(2)]
            assert [m["origin"] for m in own] == [None, None]
            got = await message_event(alice_ws)
            assert got["encrypted"] is True and got["origin"] == B
            kind = int(got["nonce"].split(":")[1])
            reply = vodozemac.AnyOlmMessage.from_parts(kind, base64.b64decode(got["content"]))
            assert olm.decrypt(reply).decode() == answer

    # Neither server ever held a plaintext.
    for server in (a, b):
        stored = (server.daemon.config.data_dir / "vox.db").read_bytes()
        wal = server.daemon.config.data_dir / "vox.db-wal"
        if wal.exists():
            stored += wal.read_bytes()
        for plaintext in (secret, answer, shared["session_key"]):
            assert plaintext.encode() not in stored
        # Looking in the right place: both hold the ciphertext (a as sent, b as relayed).
        assert megolm_text.encode() in stored
    await stop(a, b)
