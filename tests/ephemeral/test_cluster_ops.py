"""The Ephemeral operations behind node liveness (compare-and-delete, counter maps), on both backends."""

from __future__ import annotations

import trio

from vox.ephemeral import Ephemeral


async def test_delete_if_equal_leaves_a_changed_value(ephemeral: Ephemeral) -> None:
    assert await ephemeral.delete_if_equal("room", b"node-a") is False
    await ephemeral.set("room", b"node-a", 10)
    assert await ephemeral.delete_if_equal("room", b"node-b") is False
    assert await ephemeral.get("room") == b"node-a"
    assert await ephemeral.delete_if_equal("room", b"node-a") is True
    assert await ephemeral.get("room") is None
    assert await ephemeral.delete_if_equal("room", b"node-a") is False


async def test_counter_map_counts_per_field(ephemeral: Ephemeral) -> None:
    assert await ephemeral.hgetall("users") == {}
    assert await ephemeral.hincr("users", "u1", 1, 10) == 1
    assert await ephemeral.hincr("users", "u1", 2, 10) == 3
    assert await ephemeral.hincr("users", "u2", 1, 10) == 1
    assert await ephemeral.hgetall("users") == {"u1": 3, "u2": 1}
    # a field at zero (or below) is gone, and the map with its last field
    assert await ephemeral.hincr("users", "u2", -1, 10) == 0
    assert await ephemeral.hgetall("users") == {"u1": 3}
    assert await ephemeral.hincr("users", "u1", -5, 10) == -2
    assert await ephemeral.hgetall("users") == {}
    # a zero delta on an absent field stores nothing
    assert await ephemeral.hincr("users", "u3", 0, 10) == 0
    assert await ephemeral.hgetall("users") == {}


async def test_counter_map_hdel_hands_the_value_to_one_caller(ephemeral: Ephemeral) -> None:
    await ephemeral.hincr("nodes", "a", 4, 10)
    await ephemeral.hincr("nodes", "b", 1, 10)
    results: list[int | None] = []

    async def take() -> None:
        results.append(await ephemeral.hdel("nodes", "a"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(take)
    assert sorted(results, key=lambda r: r or 0) == [None, None, None, None, 4]
    assert await ephemeral.hgetall("nodes") == {"b": 1}
    assert await ephemeral.hdel("nodes", "b") == 1
    assert await ephemeral.hdel("nodes", "b") is None
    assert await ephemeral.hgetall("nodes") == {}


async def test_counter_map_expires_and_each_write_renews_it(ephemeral: Ephemeral) -> None:
    await ephemeral.hincr("m", "f", 1, 0.3)
    await trio.sleep(0.2)
    await ephemeral.hincr("m", "g", 1, 0.3)  # renews the whole map
    await trio.sleep(0.2)
    assert await ephemeral.hgetall("m") == {"f": 1, "g": 1}
    await trio.sleep(0.3)
    assert await ephemeral.hgetall("m") == {}


async def test_delete_clears_a_counter_map(ephemeral: Ephemeral) -> None:
    await ephemeral.hincr("k", "f", 1, 10)
    await ephemeral.set("k", b"v", 10)
    await ephemeral.delete("k")
    assert await ephemeral.hgetall("k") == {}
    assert await ephemeral.get("k") is None
