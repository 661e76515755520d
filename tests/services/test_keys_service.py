"""KeyService rules (protocol.md section 5) on SQLite and PostgreSQL with the in-process broker:
input checks that store nothing, 404s, the key_claim rate limit, and who hears ``patch
device_keys`` when a device's keys change."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.services.broker_helpers import decoded, drain
from tests.storage.helpers import NOW, add_user
from vox.ephemeral import open_ephemeral
from vox.errors import NotFound, RateLimited, ValidationError
from vox.pubsub import Broker, open_broker
from vox.services.keys import KeyService, is_base64
from vox.services.ratelimit import DEFAULT_LIMITS, Limit, RateLimiter
from vox.storage import Conn, Engine, Store, open_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with open_engine(database_url) as engine:
        await engine.migrate()
        yield engine


@dataclass
class Setup:
    store: Store
    broker: Broker
    service: KeyService
    users: dict[str, str]
    guild_id: str


@pytest.fixture
async def setup(engine: Engine) -> AsyncIterator[Setup]:
    """ann and bob share a guild; cat is ann's friend; dan knows nobody."""

    def fn(c: Conn) -> tuple[dict[str, str], str]:
        users = {name: add_user(c, name) for name in ("ann", "bob", "cat", "dan")}
        guild_id = str(uuid.uuid4())
        c.execute(
            "INSERT INTO guilds (id, name, owner_id, created_at) VALUES (:id, 'g', :o, :now)",
            {"id": guild_id, "o": users["ann"], "now": NOW},
        )
        for name in ("ann", "bob"):
            c.execute(
                "INSERT INTO guild_members (guild_id, user_id, joined_at) VALUES (:g, :u, :now)",
                {"g": guild_id, "u": users[name], "now": NOW},
            )
        c.execute(
            "INSERT INTO friendships (id, requester_id, addressee_id, status, created_at, accepted_at)"
            " VALUES (:id, :a, :b, 'accepted', :now, :now)",
            {"id": str(uuid.uuid4()), "a": users["cat"], "b": users["ann"], "now": NOW},
        )
        return users, guild_id

    users, guild_id = await engine.write(fn)
    store = Store(engine)
    async with open_broker(None) as broker, open_ephemeral(None) as ephemeral:
        limits = {**DEFAULT_LIMITS, "key_claim": Limit(5, 60.0)}
        service = KeyService(
            store.keys, store.accounts, broker, RateLimiter(ephemeral, limits), max_one_time_keys=10
        )
        yield Setup(store, broker, service, users, guild_id)


def b64(n: int = 32) -> str:
    return base64.b64encode(os.urandom(n)).decode().rstrip("=")


def device(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device_id": "laptop",
        "identity_key": b64(),
        "signing_key": b64(),
        "signed_prekey": (b64(), b64(64)),
        "one_time_keys": [(f"AAAA{i}", b64()) for i in range(3)],
    }
    body.update(changes)
    return body


async def nothing_stored(s: Setup, user: str) -> None:
    assert await s.service.devices(user) == {"devices": []}
    count = await s.store.engine.read(lambda c: c.fetchval("SELECT COUNT(*) FROM one_time_keys"))
    assert int(count) == 0


def test_base64_rules() -> None:
    raw = os.urandom(32)
    for good in (
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        "AAAA",
        "AAA",
    ):
        assert is_base64(good), good
    # Empty, wrong alphabets, mixed alphabets, whitespace, broken padding, impossible lengths
    # and non-canonical trailing bits.
    for bad in (
        "",
        "====",
        "A",
        "AA=",
        "AAA==",
        "Zg=",
        "Zg===",
        "a+b_",
        "ab cd",
        "Zm9v\n",
        "AB",
        "Zh==",
        "é",
    ):
        assert not is_base64(bad), bad


async def test_bad_uploads_store_nothing(setup: Setup) -> None:
    s, ann = setup, setup.users["ann"]
    cases: list[tuple[dict[str, Any], str]] = [
        (device(device_id=""), "device_id"),
        (device(device_id="has space"), "device_id"),
        (device(device_id="x" * 65), "device_id"),
        (device(identity_key="not base64!"), "identity_key"),
        (device(identity_key=b64() + "=="), "identity_key"),  # 32 bytes take one "="
        (device(signing_key="A" * 260), "signing_key"),
        (device(signed_prekey=(b64(), "sig with spaces")), "signed_prekey.signature"),
        (device(signed_prekey=(b64(), "A" * 516)), "signed_prekey.signature"),
        (device(signed_prekey=("%%%", b64())), "signed_prekey.key"),
        (device(one_time_keys=[("k1", b64()), ("k1", b64())]), "one_time_keys"),
        (device(one_time_keys=[("bad id", b64())]), "one_time_keys"),
        (device(one_time_keys=[("k1", "###")]), "one_time_keys"),
        (device(one_time_keys=[(f"k{i}", b64()) for i in range(101)]), "one_time_keys"),
        (device(one_time_keys=[(f"k{i}", b64()) for i in range(11)]), "one_time_keys"),  # cap 10
    ]
    for body, field in cases:
        with pytest.raises(ValidationError) as err:
            await s.service.upload(ann, **body)
        assert field in err.value.body()["error"]["fields"], (body, err.value.body())
        await nothing_stored(s, ann)


async def test_duplicate_and_cap_against_stored_keys(setup: Setup) -> None:
    s, ann = setup, setup.users["ann"]
    body = device()
    assert await s.service.upload(ann, **body) == {"remaining": 3}
    before = await s.service.devices(ann)
    with pytest.raises(ValidationError, match="already uploaded"):
        await s.service.upload(ann, **{**body, "signing_key": b64(), "one_time_keys": [("AAAA1", b64())]})
    with pytest.raises(ValidationError, match="too many"):
        await s.service.upload(ann, **{**body, "one_time_keys": [(f"B{i}", b64()) for i in range(8)]})
    assert await s.service.devices(ann) == before
    assert await s.service.count(ann, "laptop") == {"remaining": 3}
    more = [(f"B{i}", b64()) for i in range(7)]
    assert await s.service.upload(ann, **{**body, "one_time_keys": more}) == {"remaining": 10}


async def test_not_found_and_counts(setup: Setup) -> None:
    s, ann, bob = setup, setup.users["ann"], setup.users["bob"]
    with pytest.raises(NotFound):
        await s.service.count(ann, "laptop")
    await s.service.upload(ann, **device())
    assert await s.service.count(ann, "laptop") == {"remaining": 3}
    with pytest.raises(NotFound):
        await s.service.count(bob, "laptop")  # only one's own devices
    for unknown in (str(uuid.uuid4()), "not-a-user", "x" * 100):
        with pytest.raises(NotFound):
            await s.service.devices(unknown)
        with pytest.raises(NotFound):
            await s.service.claim(bob, unknown)
    with pytest.raises(NotFound):
        await s.service.claim(bob, ann, "phone")
    assert await s.service.count(ann, "laptop") == {"remaining": 3}  # nothing was claimed


async def test_claims_then_fallback_and_rate_limit(setup: Setup) -> None:
    s, ann, bob = setup, setup.users["ann"], setup.users["bob"]
    body = device()
    await s.service.upload(ann, **body)
    seen = set()
    for _ in range(3):
        (got,) = (await s.service.claim(bob, ann))["devices"]
        seen.add(got["one_time_key"]["key_id"])
    assert seen == {"AAAA0", "AAAA1", "AAAA2"}
    (last,) = (await s.service.claim(bob, ann, "laptop"))["devices"]
    key, signature = body["signed_prekey"]
    assert last == {
        "device_id": "laptop",
        "identity_key": body["identity_key"],
        "signing_key": body["signing_key"],
        "signed_prekey": {"key": key, "signature": signature},
        "one_time_key": None,
    }
    # key_claim is 5 per 60 s here, per claimer: bob's sixth claim is refused, ann's first is not.
    await s.service.claim(bob, ann)
    with pytest.raises(RateLimited):
        await s.service.claim(bob, ann)
    await s.service.claim(ann, ann)


async def test_key_changes_reach_contacts_and_own_devices(setup: Setup) -> None:
    s, users = setup, setup.users
    ann = users["ann"]
    topics = [f"user:{users[n]}" for n in ("ann", "bob", "cat", "dan")] + [f"guild:{s.guild_id}"]
    async with s.broker.subscribe(topics) as sub:
        body = device()
        await s.service.upload(ann, **body)
        got = await drain(sub)
        # Co-members through the guild, the friend and ann's own devices; never dan.
        assert sorted(m.topic for m in got) == sorted(
            [f"guild:{s.guild_id}", f"user:{users['cat']}", f"user:{ann}"]
        )
        diff = {
            "device_id": "laptop",
            "identity_key": body["identity_key"],
            "signing_key": body["signing_key"],
        }
        for m in got:
            assert decoded(m) == ("patch", {"entity_type": "device_keys", "entity_id": ann, "diff": diff})

        # More one-time keys alone change nothing anyone needs to hear about.
        await s.service.upload(ann, **{**body, "signed_prekey": None, "one_time_keys": [("C1", b64())]})
        assert await drain(sub) == []

        # A new identity key replaces the device: announced, and the old one-time keys are gone.
        new_identity = b64()
        replaced = {**body, "identity_key": new_identity, "one_time_keys": [("D1", b64())]}
        assert await s.service.upload(ann, **replaced) == {"remaining": 1}
        got = await drain(sub)
        assert len(got) == 3
        assert all(decoded(m)[1]["diff"]["identity_key"] == new_identity for m in got)
