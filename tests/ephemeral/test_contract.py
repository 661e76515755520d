"""The Ephemeral contract, run on the in-process store and on Redis."""

from __future__ import annotations

import pytest
import trio

from vox.ephemeral import Ephemeral

# Real time passes between calls (and Redis adds a round trip), so bucket timings are compared
# with this much slack.
SLACK_S = 0.15


async def test_set_then_get(ephemeral: Ephemeral) -> None:
    assert await ephemeral.get("k") is None
    await ephemeral.set("k", b"v1", 10)
    assert await ephemeral.get("k") == b"v1"
    await ephemeral.set("k", b"\x00\xff binary", 10)
    assert await ephemeral.get("k") == b"\x00\xff binary"
    assert await ephemeral.get("other") is None


async def test_values_expire(ephemeral: Ephemeral) -> None:
    await ephemeral.set("short", b"v", 0.2)
    await ephemeral.set("long", b"v", 10)
    assert await ephemeral.get("short") == b"v"
    await trio.sleep(0.35)
    assert await ephemeral.get("short") is None
    assert await ephemeral.get("long") == b"v"


async def test_set_replaces_the_ttl(ephemeral: Ephemeral) -> None:
    await ephemeral.set("k", b"old", 0.2)
    await ephemeral.set("k", b"new", 10)
    await trio.sleep(0.35)
    assert await ephemeral.get("k") == b"new"


async def test_set_if_absent_stores_only_once(ephemeral: Ephemeral) -> None:
    assert await ephemeral.set_if_absent("nonce", b"first", 0.2) is True
    assert await ephemeral.set_if_absent("nonce", b"second", 0.2) is False
    assert await ephemeral.get("nonce") == b"first"
    await trio.sleep(0.35)
    assert await ephemeral.set_if_absent("nonce", b"third", 10) is True
    assert await ephemeral.get("nonce") == b"third"


async def test_set_if_absent_has_one_winner_among_concurrent_callers(ephemeral: Ephemeral) -> None:
    winners: list[int] = []

    async def claim(i: int) -> None:
        if await ephemeral.set_if_absent("claim", str(i).encode(), 10):
            winners.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(claim, i)
    assert len(winners) == 1
    assert await ephemeral.get("claim") == str(winners[0]).encode()


async def test_getdel_returns_then_forgets(ephemeral: Ephemeral) -> None:
    await ephemeral.set("flow", b"state", 10)
    assert await ephemeral.getdel("flow") == b"state"
    assert await ephemeral.getdel("flow") is None
    assert await ephemeral.get("flow") is None
    assert await ephemeral.getdel("never-set") is None


async def test_getdel_of_an_expired_value_is_none(ephemeral: Ephemeral) -> None:
    await ephemeral.set("flow", b"state", 0.2)
    await trio.sleep(0.35)
    assert await ephemeral.getdel("flow") is None


async def test_getdel_hands_the_value_to_exactly_one_of_50_concurrent_callers(ephemeral: Ephemeral) -> None:
    await ephemeral.set("token", b"single-use", 10)
    results: list[bytes | None] = []

    async def redeem() -> None:
        results.append(await ephemeral.getdel("token"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(redeem)
    assert len(results) == 50
    assert [r for r in results if r is not None] == [b"single-use"]


async def test_delete(ephemeral: Ephemeral) -> None:
    await ephemeral.set("k", b"v", 10)
    await ephemeral.delete("k")
    assert await ephemeral.get("k") is None
    await ephemeral.delete("k")  # absent: no error
    assert await ephemeral.set_if_absent("k", b"again", 10) is True


async def test_values_and_buckets_with_the_same_key_do_not_collide(ephemeral: Ephemeral) -> None:
    await ephemeral.set("shared", b"v", 10)
    result = await ephemeral.take("shared", rate_per_s=1, burst=2)
    assert result.allowed and result.remaining == 1
    assert await ephemeral.get("shared") == b"v"


async def test_delete_also_resets_a_bucket(ephemeral: Ephemeral) -> None:
    assert (await ephemeral.take("login:alice", rate_per_s=0.01, burst=1)).allowed
    assert not (await ephemeral.take("login:alice", rate_per_s=0.01, burst=1)).allowed
    await ephemeral.delete("login:alice")
    assert (await ephemeral.take("login:alice", rate_per_s=0.01, burst=1)).allowed


async def test_bucket_allows_a_burst_then_refuses(ephemeral: Ephemeral) -> None:
    for expected_remaining in (4, 3, 2, 1, 0):
        result = await ephemeral.take("b", rate_per_s=1, burst=5)
        assert result.allowed
        assert result.limit == 5
        assert result.remaining == expected_remaining
        assert result.retry_after_s == 0
        assert result.reset_after_s == pytest.approx(5 - expected_remaining, abs=SLACK_S)
    refused = await ephemeral.take("b", rate_per_s=1, burst=5)
    assert not refused.allowed
    assert refused.limit == 5
    assert refused.remaining == 0
    assert 1 - SLACK_S <= refused.retry_after_s <= 1
    assert refused.reset_after_s == pytest.approx(5, abs=SLACK_S)


async def test_a_refused_take_consumes_nothing(ephemeral: Ephemeral) -> None:
    started = trio.current_time()
    await ephemeral.take("b", rate_per_s=4, burst=1)
    for _ in range(5):
        assert not (await ephemeral.take("b", rate_per_s=4, burst=1)).allowed
    # Refusals did not push the refill back: one token is back 0.25 s after the first take.
    await trio.sleep_until(started + 0.3)
    assert (await ephemeral.take("b", rate_per_s=4, burst=1)).allowed


async def test_bucket_refills_over_time(ephemeral: Ephemeral) -> None:
    for _ in range(2):
        assert (await ephemeral.take("b", rate_per_s=5, burst=2)).allowed
    refused = await ephemeral.take("b", rate_per_s=5, burst=2)
    assert not refused.allowed
    assert 0.2 - SLACK_S <= refused.retry_after_s <= 0.2
    await trio.sleep(refused.retry_after_s + 0.03)
    again = await ephemeral.take("b", rate_per_s=5, burst=2)
    assert again.allowed
    assert again.remaining == 0
    await trio.sleep(0.5)  # long enough to refill past the burst: capped at 2
    full = await ephemeral.take("b", rate_per_s=5, burst=2, cost=0)
    assert full.allowed and full.remaining == 2 and full.reset_after_s == 0


async def test_bucket_cost_above_one(ephemeral: Ephemeral) -> None:
    first = await ephemeral.take("up", rate_per_s=1, burst=10, cost=4)
    assert first.allowed and first.remaining == 6
    assert first.reset_after_s == pytest.approx(4, abs=SLACK_S)
    second = await ephemeral.take("up", rate_per_s=1, burst=10, cost=4)
    assert second.allowed and second.remaining == 2
    refused = await ephemeral.take("up", rate_per_s=1, burst=10, cost=4)
    assert not refused.allowed
    assert refused.remaining == 2  # what is left is kept, not spent on a partial take
    assert 2 - SLACK_S <= refused.retry_after_s <= 2
    small = await ephemeral.take("up", rate_per_s=1, burst=10, cost=2)
    assert small.allowed and small.remaining == 0
    assert small.reset_after_s == pytest.approx(10, abs=SLACK_S)


async def test_buckets_are_independent_per_key(ephemeral: Ephemeral) -> None:
    assert (await ephemeral.take("a", rate_per_s=0.01, burst=1)).allowed
    assert not (await ephemeral.take("a", rate_per_s=0.01, burst=1)).allowed
    assert (await ephemeral.take("b", rate_per_s=0.01, burst=1)).allowed


async def test_fractional_rates(ephemeral: Ephemeral) -> None:
    # One request per 5 minutes, burst 3: retry_after is the time for one token.
    for _ in range(3):
        assert (await ephemeral.take("slow", rate_per_s=1 / 300, burst=3)).allowed
    refused = await ephemeral.take("slow", rate_per_s=1 / 300, burst=3)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(300, abs=SLACK_S)
    assert refused.reset_after_s == pytest.approx(900, abs=SLACK_S)


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "cost"),
    [(0, 1, 1), (-1, 1, 1), (float("nan"), 1, 1), (float("inf"), 1, 1), (1, 0, 0), (1, 3, 4), (1, 3, -1)],
)
async def test_take_rejects_impossible_arguments(
    ephemeral: Ephemeral, rate_per_s: float, burst: int, cost: int
) -> None:
    with pytest.raises(ValueError):
        await ephemeral.take("b", rate_per_s=rate_per_s, burst=burst, cost=cost)


@pytest.mark.parametrize("ttl_s", [0, -1, float("nan"), float("inf")])
async def test_set_rejects_impossible_ttls(ephemeral: Ephemeral, ttl_s: float) -> None:
    with pytest.raises(ValueError):
        await ephemeral.set("k", b"v", ttl_s)
    with pytest.raises(ValueError):
        await ephemeral.set_if_absent("k", b"v", ttl_s)


async def test_ping_and_describe(ephemeral: Ephemeral) -> None:
    await ephemeral.ping()
    assert ephemeral.describe() in {"memory", "redis"}


async def test_incr_counts_atomically_and_expires(ephemeral: Ephemeral) -> None:
    assert await ephemeral.incr("n", 1, 10) == 1
    assert await ephemeral.incr("n", 2, 10) == 3
    assert await ephemeral.incr("n", -3, 10) == 0
    assert await ephemeral.get("n") == b"0"

    async def bump() -> None:
        await ephemeral.incr("many", 1, 10)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(bump)
    assert await ephemeral.get("many") == b"50"
    await ephemeral.incr("short", 5, 0.2)
    await trio.sleep(0.35)
    assert await ephemeral.incr("short", 1, 10) == 1


async def test_stream_appends_in_order_and_reads_back(ephemeral: Ephemeral) -> None:
    assert await ephemeral.read("log") == []
    first = await ephemeral.append("log", b"one", 10, after="")
    assert first is not None
    second = await ephemeral.append("log", b"\x00two", 10, after=first)
    assert second is not None and second != first
    entries = await ephemeral.read("log")
    assert [(e.id, e.data) for e in entries] == [(first, b"one"), (second, b"\x00two")]
    assert await ephemeral.read("other") == []


async def test_stream_append_refuses_a_stale_last_id(ephemeral: Ephemeral) -> None:
    first = await ephemeral.append("log", b"one", 10, after="")
    assert first is not None
    assert await ephemeral.append("log", b"again", 10, after="") is None  # not empty any more
    second = await ephemeral.append("log", b"two", 10, after=first)
    assert second is not None
    assert await ephemeral.append("log", b"late", 10, after=first) is None  # read before "two"
    assert [e.data for e in await ephemeral.read("log")] == [b"one", b"two"]


async def test_stream_append_has_one_winner_among_concurrent_callers(ephemeral: Ephemeral) -> None:
    base = await ephemeral.append("log", b"start", 10, after="")
    assert base is not None
    winners: list[int] = []

    async def append(i: int) -> None:
        if await ephemeral.append("log", str(i).encode(), 10, after=base) is not None:
            winners.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(append, i)
    assert len(winners) == 1
    assert [e.data for e in await ephemeral.read("log")] == [b"start", str(winners[0]).encode()]


async def test_stream_expires_and_each_append_renews_the_ttl(ephemeral: Ephemeral) -> None:
    first = await ephemeral.append("log", b"one", 0.3, after="")
    assert first is not None
    await trio.sleep(0.2)
    assert await ephemeral.append("log", b"two", 0.3, after=first) is not None
    await trio.sleep(0.2)
    assert len(await ephemeral.read("log")) == 2  # renewed by the second append
    await trio.sleep(0.3)
    assert await ephemeral.read("log") == []
    assert await ephemeral.append("log", b"fresh", 10, after="") is not None


async def test_stream_is_trimmed_to_about_max_len_never_fewer(ephemeral: Ephemeral) -> None:
    last = ""
    for i in range(300):
        appended = await ephemeral.append("log", str(i).encode(), 10, after=last, max_len=100)
        assert appended is not None
        last = appended
    data = [e.data for e in await ephemeral.read("log")]
    assert 100 <= len(data) < 300
    assert data[-100:] == [str(i).encode() for i in range(200, 300)]


async def test_streams_values_and_buckets_with_one_key_do_not_collide_and_delete_clears_all(
    ephemeral: Ephemeral,
) -> None:
    await ephemeral.set("shared", b"v", 10)
    assert await ephemeral.append("shared", b"entry", 10, after="") is not None
    assert await ephemeral.get("shared") == b"v"
    assert [e.data for e in await ephemeral.read("shared")] == [b"entry"]
    await ephemeral.delete("shared")
    assert await ephemeral.get("shared") is None
    assert await ephemeral.read("shared") == []


@pytest.mark.parametrize("ttl_s", [0, -1, float("nan"), float("inf")])
async def test_append_rejects_impossible_ttls(ephemeral: Ephemeral, ttl_s: float) -> None:
    with pytest.raises(ValueError):
        await ephemeral.append("log", b"v", ttl_s, after="")
    with pytest.raises(ValueError):
        await ephemeral.append("log", b"v", 10, after="", max_len=0)
