"""End-to-end encryption over real sockets (protocol.md section 5), on SQLite and PostgreSQL.

Real Olm/Megolm clients (the vodozemac bindings) publish and claim keys through REST, exchange a
Megolm room key in an Olm pre-key message and then Megolm-encrypted messages in a DM, and read
them back from the gateway; afterwards the database holds none of the plaintexts. Also: bad key
input, 404s, the key_claim rate limit, and the guild setting that allows encrypted messages.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import trio
import vodozemac
from trio_websocket import WebSocketConnection

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User, assert_missing, assert_status, gd
from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event
from vox.protocol.permissions import Permission

__all__ = ["gd"]

# Events that interleave with what these tests look at (their own tests cover them).
NOISE = ("dm_create", "member_join", "channel_create")


class Device:
    """One client device: a vodozemac Olm account and what it published."""

    def __init__(self, user: User, device_id: str, one_time_keys: int) -> None:
        self.user = user
        self.device_id = device_id
        self.account = vodozemac.Account()
        self.account.generate_fallback_key()
        self.account.generate_one_time_keys(one_time_keys)

    @property
    def identity_key(self) -> str:
        return self.account.curve25519_key.to_base64()

    @property
    def signing_key(self) -> str:
        return self.account.ed25519_key.to_base64()

    def upload_body(self) -> dict[str, Any]:
        # The signed prekey is the account's fallback key, signed (its base64 text) with the
        # account's Ed25519 key: what a claimer falls back to once one-time keys run out.
        ((_, fallback),) = self.account.fallback_key.items()
        prekey = fallback.to_base64()
        body = {
            "device_id": self.device_id,
            "identity_key": self.identity_key,
            "signing_key": self.signing_key,
            "signed_prekey": {"key": prekey, "signature": self.account.sign(prekey.encode()).to_base64()},
            "one_time_keys": [
                {"key_id": key_id, "key": key.to_base64()}
                for key_id, key in self.account.one_time_keys.items()
            ],
        }
        return body

    async def publish(self, api: Api) -> dict[str, Any]:
        body = self.upload_body()
        result: dict[str, Any] = await api.ok(self.user, "POST", "/keys/upload", body)
        self.account.mark_keys_as_published()
        return body | result


def olm_session_to(me: Device, claimed: dict[str, Any]) -> vodozemac.Session:
    """An outbound Olm session to a claimed device: its one-time key, else its signed prekey
    after checking the signature against the device's signing key."""
    identity = vodozemac.Curve25519PublicKey.from_base64(claimed["identity_key"])
    if claimed["one_time_key"] is not None:
        key = claimed["one_time_key"]["key"]
    else:
        prekey = claimed["signed_prekey"]
        signer = vodozemac.Ed25519PublicKey.from_base64(claimed["signing_key"])
        signer.verify_signature(
            prekey["key"].encode(), vodozemac.Ed25519Signature.from_base64(prekey["signature"])
        )
        key = prekey["key"]
    return me.account.create_outbound_session(identity, vodozemac.Curve25519PublicKey.from_base64(key))


def olm_content(message: vodozemac.AnyOlmMessage) -> tuple[str, str]:
    kind, ciphertext = message.to_parts()
    return base64.b64encode(ciphertext).decode(), f"olm:{kind}"


async def send(api: Api, who: User, channel_id: str, content: str, nonce: str) -> dict[str, Any]:
    body = {"content": content, "encrypted": True, "nonce": nonce}
    message: dict[str, Any] = await api.ok(who, "POST", f"/channels/{channel_id}/messages", body, 201)
    assert message["encrypted"] is True and message["content"] == content
    assert message["mentions"] == [] and message["mention_type"] is None
    return message


async def receive(ws: WebSocketConnection, message_id: str) -> dict[str, Any]:
    d = await event(ws, "message_new", skip=NOISE)
    assert d["id"] == message_id and d["encrypted"] is True
    return d


async def device_patch(ws: WebSocketConnection, device: Device) -> None:
    """The next ``patch device_keys`` for ``device``. A user hears their own changes (and a
    friend's, or a co-member's in several guilds) more than once: once per topic that reaches
    them; repeats of earlier patches are skipped."""
    expected = {
        "entity_type": "device_keys",
        "entity_id": device.user.id,
        "diff": {
            "device_id": device.device_id,
            "identity_key": device.identity_key,
            "signing_key": device.signing_key,
        },
    }
    while True:
        d = await event(ws, "patch", skip=NOISE)
        if d == expected:
            return
        assert d["entity_type"] == "device_keys" and d["entity_id"] != device.user.id, d


def database_bytes(daemon: Daemon) -> bytes:
    """What SQLite holds on disk: the database file and its write-ahead log."""
    database = Path(daemon.config.resolved_database_url.removeprefix("sqlite:///"))
    assert database.exists()
    data = database.read_bytes()
    wal = database.with_name(database.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    return data


def postgres_message_rows(daemon: Daemon) -> list[str]:
    """Every messages row as PostgreSQL prints it (all columns, search_vector included)."""
    with psycopg.connect(daemon.config.database_url) as conn:
        return [str(row[0]) for row in conn.execute("SELECT m::text FROM messages m").fetchall()]


async def test_olm_and_megolm_through_the_server(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        alice, bob, carol = [await api.user(n) for n in ("alice", "bob", "carol")]
        guild = await api.guild(alice)
        for user in (bob, carol):
            await api.join(alice, user, guild["id"])
        alice_dev = Device(alice, "alice-laptop", one_time_keys=1)
        bob_dev = Device(bob, "bob-phone", one_time_keys=3)
        carol_dev = Device(carol, "carol_desktop", one_time_keys=0)

        async with gateway(gd, alice.token) as (alice_ws, _), gateway(gd, bob.token) as (bob_ws, _):
            # Publishing keys tells co-members (and one's own devices) which keys are current.
            published = await alice_dev.publish(api)
            assert published["remaining"] == 1
            await device_patch(bob_ws, alice_dev)
            await device_patch(alice_ws, alice_dev)
            await bob_dev.publish(api)
            await carol_dev.publish(api)
            await device_patch(alice_ws, bob_dev)
            await device_patch(alice_ws, carol_dev)

            listed = await api.ok(bob, "GET", f"/keys/{alice.id}")
            assert listed == {
                "devices": [
                    {
                        "device_id": "alice-laptop",
                        "identity_key": alice_dev.identity_key,
                        "signing_key": alice_dev.signing_key,
                    }
                ]
            }

            # Bob claims Alice's only one-time key; Carol, later, gets the signed prekey.
            (claimed,) = (await api.ok(bob, "POST", "/keys/claim", {"user_id": alice.id}))["devices"]
            assert claimed["one_time_key"] == published["one_time_keys"][0]
            assert claimed["signed_prekey"] == published["signed_prekey"]
            (fallback,) = (
                await api.ok(carol, "POST", "/keys/claim", {"user_id": alice.id, "device_id": "alice-laptop"})
            )["devices"]
            assert fallback["one_time_key"] is None
            assert await api.ok(alice, "GET", "/keys/count?device_id=alice-laptop") == {"remaining": 0}

            # Bob: an Olm session to Alice's device carries a new Megolm session's key.
            olm = olm_session_to(bob_dev, claimed)
            megolm = vodozemac.GroupSession()
            room_key = json.dumps(
                {"session_id": megolm.session_id, "session_key": megolm.session_key.to_base64()}
            )
            dm = await api.ok(bob, "POST", "/dms", {"recipients": [alice.id]}, 201)
            content, nonce = olm_content(olm.encrypt(room_key.encode()))
            key_message = await send(api, bob, dm["id"], content, nonce)

            # Alice: the pre-key message opens an inbound Olm session, which yields the room key.
            got = await receive(alice_ws, key_message["id"])
            kind = int(got["nonce"].split(":")[1])
            pre_key = vodozemac.AnyOlmMessage.from_parts(kind, base64.b64decode(got["content"])).to_pre_key()
            assert pre_key is not None
            bob_identity = (await api.ok(alice, "GET", f"/keys/{bob.id}"))["devices"][0]["identity_key"]
            _, plaintext = alice_dev.account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(bob_identity), pre_key
            )
            shared = json.loads(plaintext)
            inbound = vodozemac.InboundGroupSession(vodozemac.SessionKey(shared["session_key"]))
            assert inbound.session_id == megolm.session_id

            # Megolm messages in the DM, readable by Alice alone.
            secrets = [f"meet at the {place} {uuid.uuid4().hex}" for place in ("docks", "mill", "old bridge")]
            sent = []
            for secret in secrets:
                ciphertext = megolm.encrypt(secret.encode()).to_base64()
                sent.append(await send(api, bob, dm["id"], ciphertext, f"megolm:{megolm.session_id}"))
            for index, (secret, message) in enumerate(zip(secrets, sent, strict=True)):
                got = await receive(alice_ws, message["id"])
                decrypted = inbound.decrypt(vodozemac.MegolmMessage.from_base64(got["content"]))
                assert (decrypted.plaintext.decode(), decrypted.message_index) == (secret, index)

            # Carol falls back to the signed prekey (its signature checked) and still gets through.
            carol_olm = olm_session_to(carol_dev, fallback)
            carol_secret = f"carol's secret {uuid.uuid4().hex}"
            carol_dm = await api.ok(carol, "POST", "/dms", {"recipients": [alice.id]}, 201)
            content, nonce = olm_content(carol_olm.encrypt(carol_secret.encode()))
            carol_message = await send(api, carol, carol_dm["id"], content, nonce)
            got = await receive(alice_ws, carol_message["id"])
            pre_key = vodozemac.AnyOlmMessage.from_parts(0, base64.b64decode(got["content"])).to_pre_key()
            assert pre_key is not None
            _, plaintext = alice_dev.account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(carol_dev.identity_key), pre_key
            )
            assert plaintext.decode() == carol_secret

        # History serves the ciphertext as it was sent.
        history = await api.ok(alice, "GET", f"/channels/{dm['id']}/messages?after={key_message['id']}")
        assert [m["content"] for m in history] == [m["content"] for m in sent]

    # The server never saw a plaintext: not in any row, index or log page it wrote.
    plaintexts = [*secrets, carol_secret, shared["session_key"]]
    if gd.config.database_url.startswith("postgresql"):
        rows = postgres_message_rows(gd)
        assert len(rows) == 5
        assert any(sent[0]["content"] in row for row in rows)  # looking in the right place
        for secret in plaintexts:
            assert not any(secret in row for row in rows)
    else:
        stored = database_bytes(gd)
        assert sent[0]["content"].encode() in stored  # looking in the right place
        for secret in plaintexts:
            assert secret.encode() not in stored


async def test_bad_key_input_stores_nothing(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        alice, bob = await api.user("alice"), await api.user("bob")
        dev = Device(alice, "laptop", one_time_keys=3)
        good = dev.upload_body()
        key = good["identity_key"]
        cases: list[tuple[dict[str, Any], str]] = [
            ({**good, "identity_key": "not base64!"}, "identity_key"),
            ({**good, "identity_key": key + "=="}, "identity_key"),
            # Both alphabets at once (url-safe "-" and standard "+"), whatever the key's letters.
            ({**good, "identity_key": "-" + key[1:-1] + "+"}, "identity_key"),
            ({**good, "signing_key": "A" * 257}, "signing_key"),
            ({**good, "signing_key": 42}, "signing_key"),
            ({**good, "signed_prekey": {"key": key, "signature": "B" * 513}}, "signed_prekey.signature"),
            ({**good, "signed_prekey": {"key": key}}, "signed_prekey.signature"),
            ({**good, "device_id": "../etc"}, "device_id"),
            ({**good, "device_id": ""}, "device_id"),
            ({k: v for k, v in good.items() if k != "device_id"}, "device_id"),
            (
                {**good, "one_time_keys": [{"key_id": "a", "key": key}, {"key_id": "a", "key": key}]},
                "one_time_keys",
            ),
            ({**good, "one_time_keys": [{"key_id": "a", "key": "%%%"}]}, "one_time_keys"),
            ({**good, "one_time_keys": [{"key_id": "x" * 65, "key": key}]}, "one_time_keys"),
            (
                {**good, "one_time_keys": [{"key_id": f"k{i}", "key": key} for i in range(101)]},
                "one_time_keys",
            ),
        ]
        for body, field in cases:
            error = assert_status(
                await api.call(alice, "POST", "/keys/upload", body), 400, "validation_error"
            )
            assert field in error["fields"], (field, error)
        assert await api.ok(bob, "GET", f"/keys/{alice.id}") == {"devices": []}
        assert_status(await api.call(alice, "GET", "/keys/count?device_id=laptop"), 404, "not_found")

        # Stored keys: a repeated key id or one over the cap (100 per device) refuses the upload.
        assert (await api.ok(alice, "POST", "/keys/upload", good))["remaining"] == 3
        repeat = {**good, "signing_key": key, "one_time_keys": good["one_time_keys"][:1]}
        error = assert_status(await api.call(alice, "POST", "/keys/upload", repeat), 400, "validation_error")
        assert "one_time_keys" in error["fields"]
        filler = [{"key_id": f"f{i}", "key": key} for i in range(98)]
        error = assert_status(
            await api.call(alice, "POST", "/keys/upload", {**good, "one_time_keys": filler}),
            400,
            "validation_error",
        )
        assert "one_time_keys" in error["fields"]
        assert await api.ok(alice, "GET", "/keys/count?device_id=laptop") == {"remaining": 3}
        listed = (await api.ok(bob, "GET", f"/keys/{alice.id}"))["devices"]
        assert [d["signing_key"] for d in listed] == [good["signing_key"]]  # the refused change too
        ok = {**good, "one_time_keys": filler[:97]}
        assert await api.ok(alice, "POST", "/keys/upload", ok) == {"remaining": 100}

        # Unknown users and devices, and requests that are not even well-formed.
        for user_id in (str(uuid.uuid4()), "nobody"):
            assert_status(await api.call(bob, "GET", f"/keys/{user_id}"), 404, "not_found")
            assert_status(await api.call(bob, "POST", "/keys/claim", {"user_id": user_id}), 404, "not_found")
        claim = {"user_id": alice.id, "device_id": "phone"}
        assert_status(await api.call(bob, "POST", "/keys/claim", claim), 404, "not_found")
        for body, field in [
            ({}, "user_id"),
            ({"user_id": 7}, "user_id"),
            ({"user_id": alice.id, "device_id": "a b"}, "device_id"),
        ]:
            error = assert_status(await api.call(bob, "POST", "/keys/claim", body), 400, "validation_error")
            assert field in error["fields"], error
        error = assert_status(await api.call(alice, "GET", "/keys/count"), 400, "validation_error")
        assert "device_id" in error["fields"]
        assert_status(await client.get(f"/api/v1/keys/{alice.id}"), 401, "unauthorized")
        assert await api.ok(alice, "GET", "/keys/count?device_id=laptop") == {"remaining": 100}


async def test_new_identity_key_replaces_one_time_keys(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        alice, bob = await api.user("alice"), await api.user("bob")
        old = Device(alice, "laptop", one_time_keys=5)
        await old.publish(api)
        new = Device(alice, "laptop", one_time_keys=2)
        body = new.upload_body()
        body["one_time_keys"] = [*body["one_time_keys"], {"key_id": "extra", "key": body["identity_key"]}]
        async with gateway(gd, alice.token) as (ws, _):
            assert (await api.ok(alice, "POST", "/keys/upload", body))["remaining"] == 3
            await device_patch(ws, new)
        claims = [
            (await api.ok(bob, "POST", "/keys/claim", {"user_id": alice.id}))["devices"][0] for _ in range(4)
        ]
        assert {c["identity_key"] for c in claims} == {new.identity_key}
        handed = {c["one_time_key"]["key"] for c in claims if c["one_time_key"] is not None}
        assert handed == {k["key"] for k in body["one_time_keys"]}  # none of the old identity's keys
        assert claims[-1]["one_time_key"] is None


async def test_key_claims_are_rate_limited(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, rate_limits="key_claim=3/60")
    async with d.http() as client:
        api = Api(client)
        alice, bob = await api.user("alice"), await api.user("bob")
        await Device(alice, "laptop", one_time_keys=5).publish(api)
        for _ in range(3):
            await api.ok(bob, "POST", "/keys/claim", {"user_id": alice.id})
        limited = await api.call(bob, "POST", "/keys/claim", {"user_id": alice.id})
        error = assert_status(limited, 429, "rate_limited")
        assert error["retry_after_ms"] > 0 and int(limited.headers["Retry-After"]) >= 1
        # Refused claims took nothing; other claimers have buckets of their own.
        assert await api.ok(alice, "GET", "/keys/count?device_id=laptop") == {"remaining": 2}
        await api.ok(alice, "POST", "/keys/claim", {"user_id": alice.id})
    d.stop.set()


async def test_guild_security_settings_govern_encrypted_messages(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        guild = await api.guild(owner)
        gid = guild["id"]
        await api.join(owner, member, gid)
        general = next(c["id"] for c in guild["channels"] if c["channel_type"] == "text")
        assert guild["security_settings"] == {"allow_encrypted_messages": False}
        sealed = {"content": "Y2lwaGVydGV4dA", "encrypted": True, "nonce": "n"}

        error = assert_status(
            await api.call(member, "POST", f"/channels/{general}/messages", sealed), 400, "validation_error"
        )
        assert "encrypted" in error["fields"]
        assert await api.ok(member, "GET", f"/channels/{general}/messages") == []
        # DMs always allow them.
        dm = await api.ok(member, "POST", "/dms", {"recipients": [owner.id]}, 201)
        await api.ok(member, "POST", f"/channels/{dm['id']}/messages", sealed, 201)

        # Only MANAGE_GUILD changes the settings; unknown settings and wrong types are refused.
        allow = {"security_settings": {"allow_encrypted_messages": True}}
        assert_missing(await api.call(member, "PATCH", f"/guilds/{gid}", allow), Permission.MANAGE_GUILD)
        for bad in (
            {"security_settings": {"allow_encrypted_messages": True, "e2ee_only": True}},
            {"security_settings": {"allow_encrypted_messages": "yes"}},
            {"security_settings": None},
            {"security_settings": []},
        ):
            error = assert_status(
                await api.call(owner, "PATCH", f"/guilds/{gid}", bad), 400, "validation_error"
            )
            fields = error["fields"]
            assert fields and all(f.startswith("security_settings") for f in fields), (bad, error)
        assert (await api.ok(owner, "GET", f"/guilds/{gid}"))["security_settings"] == {
            "allow_encrypted_messages": False
        }

        async with gateway(gd, member.token) as (ws, _):
            updated = await api.ok(owner, "PATCH", f"/guilds/{gid}", allow)
            assert updated["security_settings"] == {"allow_encrypted_messages": True}
            d = await event(ws, "guild_update")
            assert d["security_settings"] == {"allow_encrypted_messages": True}
        # A PATCH that leaves the settings out keeps them.
        renamed = await api.ok(owner, "PATCH", f"/guilds/{gid}", {"name": "Renamed"})
        assert renamed["security_settings"] == {"allow_encrypted_messages": True}
        assert (await api.ok(member, "GET", "/guilds"))[0]["security_settings"] == {
            "allow_encrypted_messages": True
        }

        message = await api.ok(member, "POST", f"/channels/{general}/messages", sealed, 201)
        assert message["encrypted"] is True
        # Never found by search, whatever it says.
        assert (await api.ok(owner, "GET", f"/guilds/{gid}/search?q=Y2lwaGVydGV4dA"))["results"] == []

        await api.ok(
            owner, "PATCH", f"/guilds/{gid}", {"security_settings": {"allow_encrypted_messages": False}}
        )
        assert_status(
            await api.call(member, "POST", f"/channels/{general}/messages", sealed), 400, "validation_error"
        )
        # Editing stored ciphertext is refused as well once the guild stops allowing it.
        assert_status(
            await api.call(member, "PATCH", f"/messages/{message['id']}", {"content": "bmV3"}),
            400,
            "validation_error",
        )


async def raw_frame(ws: WebSocketConnection, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The next frame whatever its kind (control frames have no seq), skipping ``skip`` types."""
    with trio.fail_after(5):
        while True:
            frame: dict[str, Any] = json.loads(await ws.get_message())
            if frame["type"] not in (*skip, "presence_update"):
                return frame


async def test_mls_relay_over_the_gateway(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        alice, bob, carol = [await api.user(n) for n in ("alice", "bob", "carol")]
        guild = await api.guild(alice)
        await api.join(alice, bob, guild["id"])
        general = next(c["id"] for c in guild["channels"] if c["channel_type"] == "text")
        payload = base64.b64encode(b"mls welcome bytes").decode()
        async with (
            gateway(gd, alice.token) as (alice_ws, _),
            gateway(gd, bob.token) as (bob_ws, _),
            gateway(gd, carol.token) as (carol_ws, _),
        ):
            relay = {"group_id": general, "recipients": [bob.id], "kind": "welcome", "payload": payload}
            await alice_ws.send_message(json.dumps({"type": "mls_relay", "d": relay}))
            d = await event(bob_ws, "mls_message", skip=NOISE)
            assert d == {"group_id": general, "sender_id": alice.id, "kind": "welcome", "payload": payload}

            # Without recipients: every other member who can view the channel, not the sender.
            commit = {"group_id": general, "kind": "commit", "payload": payload}
            await bob_ws.send_message(json.dumps({"type": "mls_relay", "d": commit}))
            d = await event(alice_ws, "mls_message", skip=NOISE)
            assert (d["sender_id"], d["kind"]) == (bob.id, "commit")

            # Carol shares no channel with Alice: refused with an error frame, the connection stays.
            stray = {"group_id": general, "recipients": [carol.id], "kind": "application", "payload": payload}
            await alice_ws.send_message(json.dumps({"type": "mls_relay", "d": stray}))
            error = await raw_frame(alice_ws, skip=NOISE)
            assert error["type"] == "error" and error["seq"] is None, error
            assert error["d"]["request"] == "mls_relay" and error["d"]["group_id"] == general
            assert error["d"]["error"]["code"] == "validation_error"
            await alice_ws.send_message(json.dumps({"type": "heartbeat"}))
            assert (await raw_frame(alice_ws, skip=NOISE))["type"] == "heartbeat_ack"
            # Anything relayed to Carol would be queued ahead of her heartbeat_ack by now.
            await carol_ws.send_message(json.dumps({"type": "heartbeat"}))
            assert (await raw_frame(carol_ws, skip=NOISE))["type"] == "heartbeat_ack"
            # The sender's own echo never came back either: Bob's commit was not for him.
            await bob_ws.send_message(json.dumps({"type": "heartbeat"}))
            assert (await raw_frame(bob_ws, skip=NOISE))["type"] == "heartbeat_ack"
