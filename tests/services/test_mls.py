"""The MLS relay (protocol.md section 6, ``mls_relay`` -> ``mls_message``) through the real
services and the in-process broker, on SQLite and PostgreSQL: group_id is a channel id, only
people who can view that channel send or receive, and a refused relay delivers nothing."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from tests.services.broker_helpers import decoded, drain
from tests.storage.helpers import NOW, add_user
from vox.errors import NotFound, ValidationError
from vox.protocol.permissions import Permission
from vox.pubsub import Broker, open_broker
from vox.services.dms import DmService
from vox.services.guild_events import GuildEvents
from vox.services.guilds import GuildService
from vox.services.mls import MAX_PAYLOAD, MlsRelay
from vox.services.permissions import PermissionService
from vox.storage import Conn, Engine, Store, open_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with open_engine(database_url) as engine:
        await engine.migrate()
        yield engine


@dataclass
class World:
    broker: Broker
    relay: MlsRelay
    users: dict[str, str]
    general: str  # everyone in the guild sees it
    hidden: str  # only the owner (ann) sees it
    dm: str  # ann and bob

    def topics(self) -> list[str]:
        return [f"user:{u}" for u in self.users.values()]


@pytest.fixture
async def world(engine: Engine) -> AsyncIterator[World]:
    """ann owns a guild with bob and cat; dan is in no guild and no DM with them."""

    def add_users(c: Conn) -> dict[str, str]:
        return {name: add_user(c, name) for name in ("ann", "bob", "cat", "dan")}

    users = await engine.write(add_users)
    store = Store(engine)
    async with open_broker(None) as broker:
        permissions = PermissionService(store.guilds)
        guilds = GuildService(store.guilds, permissions, GuildEvents(broker), max_guilds=0)
        guild = await guilds.create(users["ann"], "Guild")
        general = next(ch["id"] for ch in guild["channels"] if ch["channel_type"] == "text")
        hidden = (await guilds.create_channel(users["ann"], guild["id"], "hidden", "text", None, None))["id"]
        everyone = next(r["id"] for r in guild["roles"] if r["is_default"])

        def join_and_hide(c: Conn) -> None:
            for name in ("bob", "cat"):
                c.execute(
                    "INSERT INTO guild_members (guild_id, user_id, joined_at) VALUES (:g, :u, :now)",
                    {"g": guild["id"], "u": users[name], "now": NOW},
                )
            c.execute(
                "INSERT INTO channel_overrides (channel_id, role_id, allow, deny) VALUES (:c, :r, 0, :d)",
                {"c": hidden, "r": everyone, "d": int(Permission.VIEW_CHANNEL)},
            )

        await engine.write(join_and_hide)
        dm, _ = await DmService(store.dms, broker).open(users["ann"], [users["bob"]])
        yield World(broker, MlsRelay(permissions, broker), users, general, hidden, dm["id"])


def payload(n: int = 48) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def request(group_id: str, **extra: Any) -> dict[str, Any]:
    return {"group_id": group_id, "kind": "commit", "payload": payload(), **extra}


async def test_relay_reaches_the_listed_recipient_only(world: World) -> None:
    ann, bob = world.users["ann"], world.users["bob"]
    async with world.broker.subscribe(world.topics()) as sub:
        body = request(world.dm, kind="welcome", recipients=[bob, bob])
        await world.relay.relay(ann, body)
        got = await drain(sub)
        assert [m.topic for m in got] == [f"user:{bob}"]  # once, though named twice
        assert decoded(got[0]) == (
            "mls_message",
            {"group_id": world.dm, "sender_id": ann, "kind": "welcome", "payload": body["payload"]},
        )
        # The raw JSON of ``d`` works too (what the gateway has before decoding).
        await world.relay.relay(bob, msgspec.json.encode(request(world.general, recipients=[ann])))
        assert [m.topic for m in await drain(sub)] == [f"user:{ann}"]


async def test_without_recipients_every_other_viewer(world: World) -> None:
    ann, bob, cat = (world.users[n] for n in ("ann", "bob", "cat"))
    async with world.broker.subscribe(world.topics()) as sub:
        await world.relay.relay(bob, request(world.general, kind="application"))
        assert sorted(m.topic for m in await drain(sub)) == sorted([f"user:{ann}", f"user:{cat}"])
        await world.relay.relay(ann, request(world.dm))
        assert [m.topic for m in await drain(sub)] == [f"user:{bob}"]
        # Only ann can view the hidden channel: nobody else to tell.
        await world.relay.relay(ann, request(world.hidden))
        assert await drain(sub) == []
        # The sender may name themselves, for their other devices.
        await world.relay.relay(ann, request(world.hidden, recipients=[ann]))
        assert [m.topic for m in await drain(sub)] == [f"user:{ann}"]


async def test_recipient_who_cannot_view_the_channel(world: World) -> None:
    ann, bob, cat, dan = (world.users[n] for n in ("ann", "bob", "cat", "dan"))
    async with world.broker.subscribe(world.topics()) as sub:
        cases = [
            (world.general, [bob, dan]),  # dan shares no channel with anyone
            (world.dm, [bob, cat]),  # cat is not in the DM
            (world.hidden, [bob]),  # bob cannot view the hidden channel
            (world.general, [str(uuid.uuid4())]),  # no such user
            (world.general, ["not-an-id"]),
        ]
        for group_id, recipients in cases:
            with pytest.raises(ValidationError) as err:
                await world.relay.relay(ann, request(group_id, recipients=recipients))
            assert "recipients" in err.value.body()["error"]["fields"]
        assert await drain(sub) == []  # not even bob, who could view some of them


async def test_sender_must_view_the_channel(world: World) -> None:
    bob, cat, dan = (world.users[n] for n in ("bob", "cat", "dan"))
    async with world.broker.subscribe(world.topics()) as sub:
        for sender, group_id in [
            (bob, world.hidden),
            (cat, world.dm),
            (dan, world.general),
            (bob, str(uuid.uuid4())),
            (bob, "x" * 64),
        ]:
            with pytest.raises(NotFound):
                await world.relay.relay(sender, request(group_id))
        assert await drain(sub) == []


async def test_malformed_requests(world: World) -> None:
    ann, bob = world.users["ann"], world.users["bob"]
    cases: list[tuple[Any, str]] = [
        (None, "d"),
        ("text", "d"),
        ({"kind": "commit", "payload": payload()}, "group_id"),
        (request(world.dm, kind="shout"), "kind"),
        (request(world.dm, payload="not base64!"), "payload"),
        (request(world.dm, payload=""), "payload"),
        (request(world.dm, payload="A" * (MAX_PAYLOAD + 4)), "payload"),
        (request(world.dm, recipients=[]), "recipients"),
        (request(world.dm, recipients=[bob] * 101), "recipients"),
        (request(world.dm, recipients=bob), "recipients"),
        ({**request(world.dm), "group_id": 5}, "group_id"),
        (b"{not json", "d"),
    ]
    async with world.broker.subscribe(world.topics()) as sub:
        for d, field in cases:
            with pytest.raises(ValidationError) as err:
                await world.relay.relay(ann, d)
            assert field in err.value.body()["error"]["fields"], (d, err.value.body())
        assert await drain(sub) == []
        # The largest payload allowed goes through.
        await world.relay.relay(ann, request(world.dm, payload="A" * MAX_PAYLOAD))
        assert len(await drain(sub)) == 1
