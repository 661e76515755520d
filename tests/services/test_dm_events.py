"""What DmService publishes for the gateway: one internal ``_dm_created`` per new DM, to each
recipient's ``user:{id}`` topic and nobody else's, encoded once; nothing when a 1:1 DM is reused.
Runs on SQLite and PostgreSQL with the in-process broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.services.broker_helpers import decoded, drain
from tests.storage.helpers import NOW, add_guild_with_channel, add_user
from vox.pubsub import open_broker
from vox.services.dms import DM_CREATED, DmService
from vox.storage import Conn, Engine, Store, open_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with open_engine(database_url) as engine:
        await engine.migrate()
        yield engine


@pytest.fixture
async def setup(engine: Engine) -> AsyncIterator[tuple[Store, dict[str, str]]]:
    def fn(c: Conn) -> dict[str, str]:
        users = {name: add_user(c, name) for name in ("ann", "bob", "cat", "dan")}
        guild_id, _ = add_guild_with_channel(c, users["ann"])
        for name in ("ann", "bob", "cat"):
            c.execute(
                "INSERT INTO guild_members (guild_id, user_id, joined_at) VALUES (:g, :u, :now)",
                {"g": guild_id, "u": users[name], "now": NOW},
            )
        return users

    yield Store(engine), await engine.write(fn)


async def test_new_dm_is_published_to_each_recipient_only(setup: tuple[Store, dict[str, str]]) -> None:
    store, users = setup
    async with open_broker(None) as broker:
        service = DmService(store.dms, broker)
        topics = [f"user:{users[n]}" for n in ("ann", "bob", "cat", "dan")]
        async with broker.subscribe(topics) as sub:
            dm, created = await service.open(users["ann"], [users["bob"]])
            assert created
            got = await drain(sub)
            assert sorted(m.topic for m in got) == sorted([f"user:{users['ann']}", f"user:{users['bob']}"])
            assert all(decoded(m) == (DM_CREATED, dm) for m in got)
            # Encoded once: every recipient receives the very same bytes.
            assert len({m.payload for m in got}) == 1

            again, created = await service.open(users["bob"], [users["ann"]])
            assert not created and again["id"] == dm["id"]
            assert await drain(sub) == []

            group, created = await service.open(users["ann"], [users["bob"], users["cat"]])
            assert created
            got = await drain(sub)
            assert sorted(m.topic for m in got) == sorted(f"user:{users[n]}" for n in ("ann", "bob", "cat"))
            assert {decoded(m)[1]["id"] for m in got} == {group["id"]}


async def test_concurrent_opens_of_one_pair_make_one_dm(setup: tuple[Store, dict[str, str]]) -> None:
    store, users = setup
    async with open_broker(None) as broker:
        service = DmService(store.dms, broker)
        results: list[tuple[dict[str, Any], bool]] = []

        async def open_from(me: str, other: str) -> None:
            results.append(await service.open(users[me], [users[other]]))

        async with broker.subscribe([f"user:{users['cat']}"]) as sub:
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(open_from, *(("bob", "cat") if i % 2 else ("cat", "bob")))
            assert len({dm["id"] for dm, _ in results}) == 1
            assert [created for _, created in results].count(True) == 1
            assert len(await drain(sub)) == 1
