"""What only the Redis backend promises: state shared between daemons, server-side time, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import trio

from vox.ephemeral import Ephemeral, RedisEphemeral, open_ephemeral
from vox.ephemeral.redis import redis_location
from vox.errors import BrokerError

# Nothing listens on port 1: connections are refused at once.
DEAD_URL = "redis://user:s3cret@127.0.0.1:1/0"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def test_two_daemons_share_one_bucket(redis_url: str, redis_prefix: str) -> None:
    async with (
        open_ephemeral(redis_url, prefix=redis_prefix) as one,
        open_ephemeral(redis_url, prefix=redis_prefix) as two,
    ):
        assert one is not two
        assert isinstance(one, RedisEphemeral) and isinstance(two, RedisEphemeral)
        assert (await one.take("ip:1", rate_per_s=0.01, burst=3)).remaining == 2
        assert (await two.take("ip:1", rate_per_s=0.01, burst=3)).remaining == 1
        assert (await one.take("ip:1", rate_per_s=0.01, burst=3)).remaining == 0
        refused = await two.take("ip:1", rate_per_s=0.01, burst=3)
        assert not refused.allowed
        assert refused.retry_after_s == pytest.approx(100, abs=0.5)


async def test_two_daemons_share_single_use_values(redis_url: str, redis_prefix: str) -> None:
    async with (
        open_ephemeral(redis_url, prefix=redis_prefix) as one,
        open_ephemeral(redis_url, prefix=redis_prefix) as two,
    ):
        await one.set("oidc:state", b"flow", 10)
        results: list[bytes | None] = []

        async def redeem(store: Ephemeral) -> None:
            results.append(await store.getdel("oidc:state"))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(redeem, (one, two)[i % 2])
        assert [r for r in results if r is not None] == [b"flow"]


async def test_prefixes_isolate_deployments(redis_url: str, redis_prefix: str) -> None:
    async with (
        open_ephemeral(redis_url, prefix=redis_prefix + "a:") as a,
        open_ephemeral(redis_url, prefix=redis_prefix + "b:") as b,
    ):
        await a.set("k", b"a", 10)
        assert await b.get("k") is None
        assert (await a.take("x", rate_per_s=0.01, burst=1)).allowed
        assert (await b.take("x", rate_per_s=0.01, burst=1)).allowed


async def test_keys_layout_and_ttls(redis_url: str, redis_prefix: str, raw: redis.Redis) -> None:
    async with open_ephemeral(redis_url, prefix=redis_prefix) as store:
        await store.set("k", b"v", 10)
        assert 9_000 < raw.pttl(f"{redis_prefix}v:k") <= 10_000
        assert await store.set_if_absent("n", b"v", 0.0001)  # rounds up to 1 ms, not PX 0
        await store.take("b", rate_per_s=2, burst=10, cost=3)
        assert 1_000 < raw.pttl(f"{redis_prefix}b:b") <= 1_500
        tokens, ts = raw.hmget(f"{redis_prefix}b:b", ["tokens", "ts"])
        assert tokens is not None and ts is not None
        assert float(tokens) == 7
        # The refill clock is the Redis server's, not this process's.
        seconds, micros = raw.time()
        assert float(ts) == pytest.approx(seconds + micros / 1e6, abs=1)


async def test_a_full_bucket_leaves_no_key(redis_url: str, redis_prefix: str, raw: redis.Redis) -> None:
    async with open_ephemeral(redis_url, prefix=redis_prefix) as store:
        await store.take("b", rate_per_s=1, burst=5, cost=0)
        assert raw.exists(f"{redis_prefix}b:b") == 0


async def test_take_survives_a_flushed_script_cache(
    redis_url: str, redis_prefix: str, raw: redis.Redis
) -> None:
    async with open_ephemeral(redis_url, prefix=redis_prefix) as store:
        assert (await store.take("b", rate_per_s=0.01, burst=2)).remaining == 1
        raw.script_flush()  # as after a Redis restart or failover: EVALSHA gets NOSCRIPT
        assert (await store.take("b", rate_per_s=0.01, burst=2)).remaining == 0


async def test_unreachable_redis_is_a_broker_error_without_credentials() -> None:
    store = RedisEphemeral.from_url(DEAD_URL, socket_timeout_s=1)
    try:
        for call in (store.ping(), store.get("k"), store.take("k", rate_per_s=1, burst=1)):
            with pytest.raises(BrokerError) as info:
                await call
            message = str(info.value)
            assert "127.0.0.1:1/0" in message and "unreachable" in message
            assert "s3cret" not in message
    finally:
        store.close()


async def test_open_ephemeral_fails_fast_when_redis_is_unreachable() -> None:
    with pytest.raises(BrokerError, match="unreachable"):
        async with open_ephemeral(DEAD_URL):
            pytest.fail("opened a store on a dead Redis")


def test_redis_location_hides_credentials() -> None:
    assert redis_location("redis://u:pw@cache.internal:6380/2") == "cache.internal:6380/2"
    assert redis_location("rediss://:pw@cache") == "cache:6379/0"
    assert redis_location("redis://[::1]:6379") == "[::1]:6379/0"
    assert redis_location("unix:///run/redis.sock?db=1") == "/run/redis.sock"
