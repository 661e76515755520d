"""The Broker contract: every test here runs on the in-process broker and on Redis."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from tests.pubsub.conftest import our_threads, unique
from vox.errors import BrokerError, SubscriberLagged
from vox.pubsub import Broker, Message, Subscription, open_broker


async def take(sub: Subscription, n: int, timeout: float = 5.0) -> list[Message]:
    got: list[Message] = []
    with trio.fail_after(timeout):
        async for message in sub:
            got.append(message)
            if len(got) == n:
                break
    return got


async def nothing_arrives(sub: Subscription, wait: float = 0.2) -> bool:
    with trio.move_on_after(wait):
        async for _ in sub:
            return False
    return True


async def test_messages_arrive_in_publish_order(broker_url: str | None, topic: str) -> None:
    got: list[Message] = []

    async def consume(sub: Subscription) -> None:
        got.extend(await take(sub, 1000, timeout=20))

    async with (
        open_broker(broker_url) as broker,
        broker.subscribe([topic]) as sub,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(consume, sub)
        for i in range(1000):
            await broker.publish(topic, b"%d" % i)
    assert [m.payload for m in got] == [b"%d" % i for i in range(1000)]
    assert {m.topic for m in got} == {topic}


async def test_fan_out_gives_every_subscriber_every_message_as_the_same_bytes(
    broker_url: str | None, topic: str
) -> None:
    async with (
        open_broker(broker_url) as broker,
        broker.subscribe([topic]) as a,
        broker.subscribe([topic]) as b,
        broker.subscribe([topic, unique()]) as c,
    ):
        payloads = [b"%d:" % i + b"x" * 200 for i in range(50)]
        for payload in payloads:
            await broker.publish(topic, payload)
        received = [await take(sub, 50) for sub in (a, b, c)]
    for got in received:
        assert [m.payload for m in got] == payloads
    for i in range(50):
        # One object handed to every subscriber: nothing copied or re-encoded per receiver.
        assert received[0][i].payload is received[1][i].payload is received[2][i].payload


async def test_publish_right_after_add_is_not_missed(broker_url: str | None) -> None:
    async with open_broker(broker_url) as broker, broker.subscribe() as sub:
        for _ in range(20):
            fresh = unique("user")
            await sub.add(fresh)
            await broker.publish(fresh, b"hello")
            [message] = await take(sub, 1)
            assert message == Message(fresh, b"hello")


async def test_topics_may_contain_any_characters(broker_url: str | None) -> None:
    topics = [
        f"guild:{{{unique('g')}}}",
        f"presence:ü ñ 😀 {unique('p')}",
        f"admin:events*?[x] {unique('a')}",
    ]
    async with open_broker(broker_url) as broker, broker.subscribe(topics) as sub:
        assert sub.topics == frozenset(topics)
        for t in topics:
            await broker.publish(t, t.encode())
        got = await take(sub, len(topics))
    assert [(m.topic, m.payload) for m in got] == [(t, t.encode()) for t in topics]


async def test_remove_stops_delivery_and_releases_the_topic(broker_url: str | None, topic: str) -> None:
    other = unique()
    async with open_broker(broker_url) as broker:
        async with broker.subscribe([topic, other]) as leaving, broker.subscribe([topic]) as staying:
            await broker.publish(topic, b"before")
            assert [m.payload for m in await take(leaving, 1)] == [b"before"]
            await broker.publish(topic, b"buffered")  # unread when the topic is removed: dropped too
            await take(staying, 2)
            await leaving.remove(topic)
            assert leaving.topics == {other}
            await broker.publish(topic, b"after")
            await broker.publish(other, b"other")
            assert [m.payload for m in await take(staying, 1)] == [b"after"]
            assert [m.payload for m in await take(leaving, 1)] == [b"other"]
            assert await nothing_arrives(leaving)
            assert broker.fanout.refcount(topic) == 1  # type: ignore[attr-defined]
        assert broker.fanout.topics == frozenset()  # type: ignore[attr-defined]


async def test_slow_subscriber_is_cut_without_stalling_anyone(broker_url: str | None, topic: str) -> None:
    async with (
        open_broker(broker_url, buffer_size=8) as broker,
        broker.subscribe([topic]) as slow,
        broker.subscribe([topic]) as fast,
    ):
        got: list[Message] = []
        started = time.monotonic()
        for i in range(100):
            await broker.publish(topic, b"%d" % i)
            # The fast one keeps up message by message (a burst larger than its buffer would cut
            # it too); the slow one never reads and must hold up neither of them.
            got.extend(await take(fast, 1))
        assert time.monotonic() - started < 5
        assert [m.payload for m in got] == [b"%d" % i for i in range(100)]
        # The slow one keeps exactly what fitted in its buffer, then learns it was cut.
        kept: list[bytes] = []
        with pytest.raises(SubscriberLagged):
            async for message in slow:
                kept.append(message.payload)
        assert kept == [b"%d" % i for i in range(8)]
        # Still cut for good; the fast one carries on.
        with pytest.raises(SubscriberLagged):
            await take(slow, 1)
        await broker.publish(topic, b"more")
        assert [m.payload for m in await take(fast, 1)] == [b"more"]


async def test_ping_and_describe(broker_url: str | None) -> None:
    async with open_broker(broker_url) as broker:
        await broker.ping()
        assert ("redis" if broker_url else "memory") in broker.describe()


async def test_closing_the_broker_ends_live_subscriptions(broker_url: str | None, topic: str) -> None:
    outcome: list[object] = []
    async with trio.open_nursery() as nursery:
        async with open_broker(broker_url) as broker:

            async def consume(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                async with broker.subscribe([topic]) as sub:
                    task_status.started()
                    try:
                        async for message in sub:
                            outcome.append(message.payload)
                    except BrokerError as exc:
                        outcome.append(exc)

            await nursery.start(consume)
            await broker.publish(topic, b"last")
            with trio.fail_after(5):
                while not outcome:
                    await trio.sleep(0.01)
        with pytest.raises(BrokerError):
            await broker.publish(topic, b"too late")
    assert outcome[0] == b"last"
    assert isinstance(outcome[1], BrokerError) and not isinstance(outcome[1], SubscriberLagged)


async def test_closing_inside_a_cancelled_nursery_is_quick_and_leaves_no_thread(
    broker_url: str | None, topic: str
) -> None:
    before = set(threading.enumerate())
    received = trio.Event()

    async def daemon(task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_broker(broker_url) as broker, broker.subscribe([topic]) as sub:
            task_status.started(broker)
            async for _ in sub:
                received.set()

    async with trio.open_nursery() as nursery:
        broker = await nursery.start(daemon)
        await broker.publish(topic, b"x")
        with trio.fail_after(5):
            await received.wait()
        started = time.monotonic()
        nursery.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    assert elapsed < 0.5, elapsed
    assert our_threads(before) == []


async def test_subscribe_rejects_a_single_string(broker_url: str | None, topic: str) -> None:
    async with open_broker(broker_url) as broker:
        with pytest.raises(TypeError):
            async with broker.subscribe(topic):
                pass


async def test_an_error_in_the_body_comes_out_as_itself(broker_url: str | None, topic: str) -> None:
    before = set(threading.enumerate())
    with pytest.raises(LookupError, match="from the body"):
        async with open_broker(broker_url) as broker, broker.subscribe([topic]):
            raise LookupError("from the body")
    assert our_threads(before) == []
