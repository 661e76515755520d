"""What only the Redis broker has: several daemons, upstream subscriptions, prefixes, outages."""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid

import pytest
import redis
import trio

from tests.pubsub.conftest import our_threads, unique
from tests.pubsub.proxy import Relay
from tests.pubsub.test_broker import nothing_arrives, take
from vox.errors import BrokerError, SubscriberLagged
from vox.pubsub import Message, open_broker
from vox.pubsub.redis import open_redis_broker, redact_url


async def numsub(client: redis.Redis, channel: str) -> int:
    [(_, count)] = await trio.to_thread.run_sync(client.pubsub_numsub, channel)
    return int(count)


async def eventually(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)


async def test_a_publish_on_one_daemon_reaches_subscribers_on_another(redis_url: str, topic: str) -> None:
    async with (
        open_broker(redis_url) as one,
        open_broker(redis_url) as two,
        two.subscribe([topic]) as remote,
        one.subscribe([topic]) as local,
    ):
        for i in range(10):
            await one.publish(topic, b"%d" % i)
        expected = [b"%d" % i for i in range(10)]
        assert [m.payload for m in await take(remote, 10)] == expected
        assert [m.payload for m in await take(local, 10)] == expected
        # add() on one daemon is confirmed by Redis before it returns: the other daemon's
        # publish right after it cannot be missed.
        for _ in range(20):
            fresh = unique("user")
            await remote.add(fresh)
            await one.publish(fresh, b"hi")
            assert await take(remote, 1) == [Message(fresh, b"hi")]


async def test_a_daemon_subscribes_upstream_while_any_local_subscription_needs_the_topic(
    redis_url: str, redis_admin: redis.Redis, topic: str
) -> None:
    channel = f"vox:{topic}"
    async with open_broker(redis_url) as broker:
        assert await numsub(redis_admin, channel) == 0
        async with broker.subscribe([topic]) as first:
            # add() returned, so Redis has already confirmed the subscription.
            assert await numsub(redis_admin, channel) == 1
            async with broker.subscribe([topic]):
                assert await numsub(redis_admin, channel) == 1  # one per daemon, not per subscriber
            assert await numsub(redis_admin, channel) == 1
            await first.remove(topic)

            async def released() -> bool:
                return await numsub(redis_admin, channel) == 0

            await eventually(released)
            await first.add(topic)
            assert await numsub(redis_admin, channel) == 1

        await eventually(released)


async def test_channels_carry_the_prefix(redis_url: str, redis_admin: redis.Redis, topic: str) -> None:
    prefix = f"vox-test-{uuid.uuid4().hex[:8]}:"
    async with open_broker(redis_url, prefix=prefix) as broker, broker.subscribe([topic]) as sub:
        assert await numsub(redis_admin, prefix + topic) == 1
        assert await numsub(redis_admin, topic) == 0
        await trio.to_thread.run_sync(redis_admin.publish, topic, b"another app's channel")
        await trio.to_thread.run_sync(redis_admin.publish, prefix + topic, b"ours")
        assert await take(sub, 1) == [Message(topic, b"ours")]
        assert await nothing_arrives(sub)


async def test_startup_fails_fast_when_redis_is_unreachable() -> None:
    before = set(threading.enumerate())
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot connect"):
        async with open_broker("redis://127.0.0.1:1/0"):
            pytest.fail("the broker must not start")
    assert time.monotonic() - started < 3
    assert our_threads(before) == []


async def test_describe_hides_the_password() -> None:
    assert redact_url("redis://:s3cret@db.example:6380/2") == "redis://:***@db.example:6380/2"
    assert redact_url("rediss://vox:s3cret@db.example/0") == "rediss://vox:***@db.example/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_an_outage_cuts_subscribers_fails_ping_and_resubscribes(
    redis_url: str, redis_admin: redis.Redis, topic: str, nursery: trio.Nursery
) -> None:
    target = urllib.parse.urlsplit(redis_url)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 6379)
    port = await nursery.start(relay.serve)
    relayed = f"redis://127.0.0.1:{port}{target.path}"
    channel = f"vox:{topic}"

    async with (
        open_redis_broker(relayed, backoff_min=0.05, backoff_max=0.5) as broker,
        broker.subscribe([topic]) as before_outage,
    ):
        await broker.publish(topic, b"before")
        await take(before_outage, 1)
        await broker.publish(topic, b"unread")
        with trio.fail_after(5):
            while before_outage.buffered == 0:  # type: ignore[attr-defined]
                await trio.sleep(0.01)

        relay.outage()
        # Whatever Redis published meanwhile is lost to this daemon, so its subscribers are cut
        # (after what they had buffered) and their owners resume.
        with trio.fail_after(5):
            kept = []
            with pytest.raises(SubscriberLagged, match="connection was lost"):
                async for message in before_outage:
                    kept.append(message.payload)
        assert kept == [b"unread"]
        with pytest.raises(BrokerError):
            await broker.ping()

        # A subscription made during the outage waits for Redis to confirm it.
        late = unique()
        async with broker.subscribe() as during:
            async with trio.open_nursery() as waiting:
                waiting.start_soon(during.add, late)
                await trio.sleep(0.3)
                assert late in during.topics  # registered, still waiting for Redis
                relay.restore()

            async def healthy() -> bool:
                try:
                    await broker.ping()
                except BrokerError:
                    return False
                return True

            await eventually(healthy)
            # Every topic still needed was subscribed again on the new connection.
            assert await numsub(redis_admin, channel) == 1
            assert await numsub(redis_admin, f"vox:{late}") == 1
            async with broker.subscribe([topic]) as after:
                await broker.publish(topic, b"after")
                await broker.publish(late, b"late")
                assert [m.payload for m in await take(after, 1)] == [b"after"]
                assert [m.payload for m in await take(during, 1)] == [b"late"]


async def test_closing_during_an_outage_is_still_quick(redis_url: str, nursery: trio.Nursery) -> None:
    target = urllib.parse.urlsplit(redis_url)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 6379)
    port = await nursery.start(relay.serve)
    before = set(threading.enumerate())
    url = f"redis://127.0.0.1:{port}{target.path}"
    async with open_redis_broker(url, backoff_min=0.05) as broker, broker.subscribe([unique()]):
        relay.outage()
        await trio.sleep(0.3)  # the listener is now retrying with backoff
        started = time.monotonic()
    assert time.monotonic() - started < 0.5
    assert our_threads(before) == []
