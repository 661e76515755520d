"""The in-process store's own guarantees: bounded size and sweeping, on a hand-driven clock."""

from __future__ import annotations

import pytest

from vox.ephemeral import MemoryEphemeral, open_ephemeral


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_open_ephemeral_without_redis_is_in_process() -> None:
    for url in (None, ""):
        async with open_ephemeral(url) as store:
            assert isinstance(store, MemoryEphemeral)
            assert store.describe() == "memory"


async def test_expiry_is_exact_on_access(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock)
    await store.set("k", b"v", 5)
    clock.now += 4.999
    assert await store.get("k") == b"v"
    clock.now += 0.001
    assert await store.get("k") is None
    assert len(store) == 0


async def test_writes_sweep_expired_keys_nobody_reads(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock, sweep_batch=64)
    for i in range(100):
        await store.set(f"old{i}", b"v", 1)
    clock.now += 2
    await store.set("new1", b"v", 10)
    assert len(store) == 100 - 64 + 1
    await store.set("new2", b"v", 10)
    assert len(store) == 2


async def test_expired_buckets_are_swept_too(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock)
    for i in range(10):
        await store.take(f"ip:{i}", rate_per_s=1, burst=5)
    assert len(store) == 10
    clock.now += 1.5  # every bucket is full again after 1 s
    await store.set("x", b"v", 10)
    assert len(store) == 1


async def test_a_full_bucket_is_not_stored(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock)
    result = await store.take("b", rate_per_s=1, burst=5, cost=0)
    assert result.remaining == 5
    assert len(store) == 0


async def test_key_cap_evicts_the_soonest_to_expire(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock, max_keys=3)
    await store.set("a", b"a", 30)
    await store.set("b", b"b", 10)
    await store.set("c", b"c", 20)
    await store.set("d", b"d", 40)
    assert len(store) == 3
    assert await store.get("b") is None
    assert [await store.get(k) for k in "acd"] == [b"a", b"c", b"d"]
    await store.set("e", b"e", 50)
    assert await store.get("c") is None


async def test_overwriting_at_the_cap_evicts_nothing(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock, max_keys=2)
    await store.set("a", b"a", 10)
    await store.set("b", b"b", 20)
    await store.set("a", b"a2", 30)
    assert await store.get("a") == b"a2"
    assert await store.get("b") == b"b"


async def test_key_cap_counts_buckets(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock, max_keys=2)
    await store.set("flow", b"v", 600)
    await store.take("ip:1", rate_per_s=1, burst=10)  # full again in 1 s: soonest to expire
    await store.set("flow2", b"v", 600)
    assert len(store) == 2
    assert await store.get("flow") == b"v"
    assert await store.get("flow2") == b"v"
    # The evicted bucket is forgotten, i.e. full again.
    assert (await store.take("ip:1", rate_per_s=1, burst=10)).remaining == 9


async def test_a_hot_key_does_not_grow_the_expiry_heap(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock)
    for _ in range(10_000):
        await store.take("hot", rate_per_s=1e6, burst=1_000_000)
    assert len(store) == 1
    assert len(store._heap) <= 2 * len(store) + 1025


async def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryEphemeral(max_keys=0)


async def test_streams_expire_exactly_are_swept_and_never_reuse_an_id(clock: FakeClock) -> None:
    store = MemoryEphemeral(clock=clock)
    first = await store.append("log", b"a", 5, after="")
    assert first is not None
    clock.now += 5
    assert await store.read("log") == []
    # A new stream under the same key: the stale id read before expiry does not match it.
    again = await store.append("log", b"b", 5, after="")
    assert again is not None and again != first
    assert await store.append("log", b"c", 5, after=first) is None
    clock.now += 10
    await store.set("other", b"v", 1)  # a write sweeps the expired stream
    assert len(store) == 1
