"""Node liveness, the reaping of dead nodes and voice room owners (vox.services.nodes), with two
"nodes" sharing one Ephemeral store (the in-process one, or Redis) and one broker."""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from tests.ephemeral.conftest import ephemeral, ephemeral_target, redis_prefix
from vox.config import Config
from vox.ephemeral import Ephemeral
from vox.protocol.cluster import new_node_id, new_session_id, session_owner
from vox.pubsub.memory import MemoryBroker
from vox.services.nodes import NODES_KEY, NodeRegistry, node_key, voice_room_key
from vox.services.presence import PresenceService, node_users_key

__all__ = ["ephemeral", "ephemeral_target", "redis_prefix"]  # fixtures: both backends


class Accounts:
    """The two questions presence asks of storage: who hears about a user, and their status."""

    async def presence_audience(self, user_id: str) -> tuple[list[str], list[str]]:
        return ["g1"], []

    async def preferred_status(self, user_id: str) -> str:
        return "online"


def _node(ephemeral: Ephemeral, broker: MemoryBroker, url: str) -> NodeRegistry:
    node_id = new_node_id()
    presence = PresenceService(Accounts(), ephemeral, broker, node_id=node_id)  # type: ignore[arg-type]
    nodes = NodeRegistry(Config(node_ttl_s=0.5), ephemeral, presence, node_id)
    nodes.gateway_url = url
    return nodes


def test_session_ids_name_their_node() -> None:
    node = new_node_id()
    assert len(node) == 12
    session = new_session_id(node)
    assert session_owner(session) == node
    assert session_owner(new_session_id("")) is None
    assert session_owner("not-a-session") is None
    assert session_owner("x.short") is None


async def test_a_dead_nodes_users_are_reaped_once(ephemeral: Ephemeral) -> None:
    broker = MemoryBroker()
    a, b, c = (_node(ephemeral, broker, f"ws://{n}/gateway") for n in "abc")
    for node in (a, b, c):
        await ephemeral.hincr(NODES_KEY, node.node_id, 1, 60)
        await node.heartbeat()
    async with broker.subscribe(["guild:g1"]) as sub:
        # u1 has a session on a and one on b; u2 only on a
        await a.presence.connected("u1")
        await b.presence.connected("u1")
        await a.presence.connected("u2")
        assert await ephemeral.hgetall(node_users_key(a.node_id)) == {"u1": 1, "u2": 1}
        assert await a.is_alive(b.node_id)

        await trio.sleep(0.6)  # every record lapses; b and c come back, a does not
        await b.heartbeat()
        await c.heartbeat()
        assert not await b.is_alive(a.node_id)
        # b and c sweep at once: one of them cleans up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.sweep)
            nursery.start_soon(c.sweep)
        assert b.reaped + c.reaped == 1
        assert set(await ephemeral.hgetall(NODES_KEY)) == {b.node_id, c.node_id}
        assert await ephemeral.hgetall(node_users_key(a.node_id)) == {}
        assert await ephemeral.get("presence:sessions:u1") == b"1"  # still online through b
        assert await ephemeral.get("presence:sessions:u2") is None

        events: list[dict[str, Any]] = []
        with trio.move_on_after(0.2):
            async for message in sub:
                type_, _, d = message.payload.partition(b"\x00")
                events.append({"type": type_.decode(), **msgspec.json.decode(d)})
        offline = [e for e in events if e["type"] == "presence_update" and e["status"] == "offline"]
        assert [e["user_id"] for e in offline] == ["u2"]

        # a was only stalled: at its next heartbeat it counts its sessions in again
        await a.heartbeat()
        assert a.node_id in await ephemeral.hgetall(NODES_KEY)
        assert await ephemeral.get("presence:sessions:u1") == b"2"
        assert await ephemeral.get("presence:sessions:u2") == b"1"
        assert await ephemeral.hgetall(node_users_key(a.node_id)) == {"u1": 1, "u2": 1}
        with trio.fail_after(1):
            async for message in sub:
                assert message.payload.startswith(b"presence_update\x00")
                assert msgspec.json.decode(message.payload.partition(b"\x00")[2])["user_id"] == "u2"
                break
        # and its sessions end as usual
        await a.presence.disconnected("u2")
        assert await ephemeral.get("presence:sessions:u2") is None
    broker.close()


async def test_a_voice_room_has_one_owner_until_it_dies(ephemeral: Ephemeral) -> None:
    broker = MemoryBroker()
    a, b = _node(ephemeral, broker, "ws://a/gateway"), _node(ephemeral, broker, "ws://b/gateway")
    await a.heartbeat()
    await b.heartbeat()
    assert await a.claim_room("vc1") is None
    assert await a.claim_room("vc1") is None  # again, still its own
    assert await b.claim_room("vc1") == "ws://a/gateway"
    # a dies: its record is taken over at the next join on b
    await ephemeral.delete(node_key(a.node_id))
    assert await b.claim_room("vc1") is None
    record = await ephemeral.get(voice_room_key("vc1"))
    assert record is not None and record.startswith(b.node_id.encode())
    # a room that is not live is released after the grace period; a live one is renewed
    b.live_rooms = lambda: {"vc1"}
    await b.heartbeat()
    assert await ephemeral.get(voice_room_key("vc1")) is not None
    b.live_rooms = set
    b.rooms["vc1"] = trio.current_time() - 60
    await b.heartbeat()
    assert await ephemeral.get(voice_room_key("vc1")) is None
    assert b.rooms == {}
    broker.close()


async def test_a_graceful_stop_deregisters(ephemeral: Ephemeral) -> None:
    broker = MemoryBroker()
    a = _node(ephemeral, broker, "ws://a/gateway")
    await ephemeral.hincr(NODES_KEY, a.node_id, 1, 60)
    await a.heartbeat()
    await a.claim_room("vc2")
    await a.deregister()
    assert await ephemeral.hgetall(NODES_KEY) == {}
    assert await ephemeral.get(node_key(a.node_id)) is None
    assert await ephemeral.get(voice_room_key("vc2")) is None
    broker.close()
