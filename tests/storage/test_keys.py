"""Device and one-time keys in storage (protocol.md section 5), on SQLite and PostgreSQL: a claimed
key is handed out once however many claims race, refused uploads store nothing, the per-device
cap holds, and a new identity key drops the old one-time keys."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.storage.helpers import NOW, add_user
from vox.storage import Conn, Engine, open_engine
from vox.storage.keys import Claimed, DeviceKeys, DeviceUpload, DuplicateKeyIds, TooManyKeys

DEVICE = "laptop"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    # A pool as large as the number of racing claims' useful concurrency on PostgreSQL.
    async with open_engine(database_url, pool_size=25) as engine:
        await engine.migrate()
        yield engine


def b64() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


def upload(user_id: str, otks: list[tuple[str, str]], **changes: Any) -> DeviceUpload:
    fields: dict[str, Any] = {
        "user_id": user_id,
        "device_id": DEVICE,
        "identity_key": "identity",
        "signing_key": "signing",
        "signed_prekey": "prekey",
        "signed_prekey_signature": "signature",
        "one_time_keys": otks,
        "now": NOW,
    }
    fields.update(changes)
    return DeviceUpload(**fields)


def otks(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"k{i:03d}", b64()) for i in range(start, start + n)]


async def stored_keys(engine: Engine, user_id: str) -> list[tuple[str, str]]:
    rows = await engine.read(
        lambda c: c.fetchall(
            "SELECT key_id, key FROM one_time_keys WHERE user_id = :u ORDER BY key_id", {"u": user_id}
        )
    )
    return [(r["key_id"], r["key"]) for r in rows]


async def a_user(engine: Engine, name: str = "alice") -> str:
    def fn(c: Conn) -> str:
        return add_user(c, name)

    return await engine.write(fn)


async def test_fifty_concurrent_claims_share_twenty_keys(engine: Engine) -> None:
    keys = DeviceKeys(engine)
    user = await a_user(engine)
    published = otks(20)
    result = await keys.upload(upload(user, published), max_keys=100)
    assert result.remaining == 20 and result.changed

    claims: list[Claimed] = []

    async def claim() -> None:
        got = await keys.claim(user, DEVICE)
        assert got is not None and len(got) == 1
        claims.append(got[0])

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(claim)

    assert len(claims) == 50
    handed_out = [c.one_time_key for c in claims if c.one_time_key is not None]
    fallbacks = [c for c in claims if c.one_time_key is None]
    assert len(handed_out) == 20
    assert len({k["key_id"] for k in handed_out}) == 20  # no key went to two claimers
    assert sorted((k["key_id"], k["key"]) for k in handed_out) == sorted(published)
    assert len(fallbacks) == 30
    for c in claims:
        assert c.device["identity_key"] == "identity"
        assert (c.device["signed_prekey"], c.device["signed_prekey_signature"]) == ("prekey", "signature")
    assert await keys.count(user, DEVICE) == 0
    assert await stored_keys(engine, user) == []


async def test_claim_every_device_or_one(engine: Engine) -> None:
    keys = DeviceKeys(engine)
    user = await a_user(engine)
    await keys.upload(upload(user, otks(1)), max_keys=100)
    await keys.upload(
        upload(user, [], device_id="phone", signed_prekey=None, signed_prekey_signature=None), max_keys=100
    )

    both = await keys.claim(user, None)
    assert both is not None
    assert [(c.device["device_id"], c.one_time_key is not None) for c in both] == [
        ("laptop", True),
        ("phone", False),
    ]
    assert both[1].device["signed_prekey"] is None
    assert await keys.claim(user, "tablet") == []  # no such device
    assert await keys.claim(str(os.urandom(4).hex()), None) is None  # no such user
    other = await a_user(engine, "bob")
    assert await keys.claim(other, None) == []  # a user without devices


async def test_duplicate_key_ids_store_nothing(engine: Engine) -> None:
    keys = DeviceKeys(engine)
    user = await a_user(engine)
    first = otks(5)
    await keys.upload(upload(user, first), max_keys=100)

    # One id already stored: the whole upload is refused, the new keys and the new signing key
    # included.
    again = [*otks(3, start=10), ("k002", b64())]
    with pytest.raises(DuplicateKeyIds) as err:
        await keys.upload(upload(user, again, signing_key="new-signing"), max_keys=100)
    assert err.value.key_ids == ["k002"]
    assert await stored_keys(engine, user) == sorted(first)
    devices = await keys.devices(user)
    assert devices is not None and devices[0]["signing_key"] == "signing"

    # Key ids are per device: another device may use the same ones.
    await keys.upload(upload(user, first[:1], device_id="tablet"), max_keys=100)
    devices = await keys.devices(user)
    assert devices is not None and [d["device_id"] for d in devices] == ["laptop", "tablet"]


async def test_cap_on_stored_one_time_keys(engine: Engine) -> None:
    keys = DeviceKeys(engine)
    user = await a_user(engine)
    assert (await keys.upload(upload(user, otks(8)), max_keys=10)).remaining == 8
    with pytest.raises(TooManyKeys) as err:
        await keys.upload(upload(user, otks(3, start=8)), max_keys=10)
    assert (err.value.stored, err.value.adding, err.value.limit) == (8, 3, 10)
    assert await keys.count(user, DEVICE) == 8
    # A new device over the cap is not created at all.
    with pytest.raises(TooManyKeys):
        await keys.upload(upload(user, otks(11), device_id="phone"), max_keys=10)
    assert await keys.count(user, "phone") is None
    # Up to the cap is fine, and claiming makes room again.
    assert (await keys.upload(upload(user, otks(2, start=8)), max_keys=10)).remaining == 10
    await keys.claim(user, DEVICE)
    result = await keys.upload(upload(user, otks(1, start=20)), max_keys=10)
    assert result.remaining == 10 and not result.changed


async def test_new_identity_key_replaces_the_device(engine: Engine) -> None:
    keys = DeviceKeys(engine)
    user = await a_user(engine)
    await keys.upload(upload(user, otks(4)), max_keys=100)

    same = await keys.upload(upload(user, [], signed_prekey=None, signed_prekey_signature=None), max_keys=100)
    assert same.remaining == 4 and not same.changed  # omitting the prekey keeps it
    devices = await keys.devices(user)
    assert devices is not None and devices[0]["signed_prekey"] == "prekey"

    new_prekey = await keys.upload(
        upload(user, [], signed_prekey="prekey2", signed_prekey_signature="sig2"), max_keys=100
    )
    assert new_prekey.changed and not new_prekey.identity_replaced and new_prekey.remaining == 4

    fresh = otks(2, start=0)  # the same ids as before are fine: the old keys are gone
    replaced = await keys.upload(
        upload(user, fresh, identity_key="identity2", signed_prekey=None, signed_prekey_signature=None),
        max_keys=100,
    )
    assert replaced.changed and replaced.identity_replaced and replaced.remaining == 2
    assert await stored_keys(engine, user) == sorted(fresh)
    devices = await keys.devices(user)
    assert devices is not None
    # The prekey was signed for the old identity: it went with it.
    assert (devices[0]["identity_key"], devices[0]["signed_prekey"]) == ("identity2", None)
