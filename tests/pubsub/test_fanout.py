"""The local fan-out on its own: no broker, no sockets, no threads."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from vox.errors import BrokerError, SubscriberLagged
from vox.pubsub.base import Message
from vox.pubsub.fanout import Fanout, LocalSubscription, TopicHandle


class RecordingUpstream:
    """An upstream that confirms only when told to, like a backend waiting on its server."""

    def __init__(self) -> None:
        self.started: list[TopicHandle] = []
        self.stopped: list[str] = []

    def topics_started(self, handles: Sequence[TopicHandle]) -> None:
        self.started.extend(handles)

    def topics_stopped(self, topics: Sequence[str]) -> None:
        self.stopped.extend(topics)

    def handle(self, topic: str) -> TopicHandle:
        return [h for h in self.started if h.topic == topic][-1]


def drain(sub: LocalSubscription) -> list[Message]:
    taken = list(sub._buffer)
    sub._buffer.clear()
    return taken


async def test_reference_counts_drive_upstream() -> None:
    upstream = RecordingUpstream()
    fanout = Fanout(8, upstream)
    a, b = fanout.open_subscription(), fanout.open_subscription()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.add, "t", "u")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(b.add, "t")
        await trio.testing.wait_all_tasks_blocked()
        # Only the 0 -> 1 transitions reach upstream, once per topic.
        assert [h.topic for h in upstream.started] == ["t", "u"]
        for handle in upstream.started:
            handle.confirm()
    assert fanout.refcount("t") == 2 and fanout.refcount("u") == 1
    assert fanout.topics == {"t", "u"}

    await a.remove("t")
    assert upstream.stopped == []
    await a.remove("t")  # removing twice is harmless and does not double-decrement
    assert fanout.refcount("t") == 1
    b.close()
    assert upstream.stopped == ["t"]
    a.close()
    assert upstream.stopped == ["t", "u"]
    assert fanout.topics == frozenset()


async def test_add_returns_only_once_upstream_confirms() -> None:
    upstream = RecordingUpstream()
    fanout = Fanout(8, upstream)
    first, second = fanout.open_subscription(), fanout.open_subscription()
    done: list[str] = []

    async def add(sub: LocalSubscription, name: str) -> None:
        await sub.add("t")
        done.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(add, first, "first")
        await trio.testing.wait_all_tasks_blocked()
        # The second subscriber joins a topic that is started but not live yet: it waits too.
        nursery.start_soon(add, second, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        upstream.handle("t").confirm()
    assert sorted(done) == ["first", "second"]
    assert len(upstream.started) == 1


async def test_cancelled_add_rolls_back() -> None:
    upstream = RecordingUpstream()
    fanout = Fanout(8, upstream)
    sub = fanout.open_subscription()
    with trio.move_on_after(0.01):
        await sub.add("t")
    assert sub.topics == frozenset()
    assert upstream.stopped == ["t"]
    assert fanout.refcount("t") == 0


async def test_confirmation_of_an_old_generation_does_not_confirm_a_new_one() -> None:
    upstream = RecordingUpstream()
    fanout = Fanout(8, upstream)
    sub = fanout.open_subscription()
    with trio.move_on_after(0.01):
        await sub.add("t")
    old = upstream.handle("t")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.add, "t")
        await trio.testing.wait_all_tasks_blocked()
        new = upstream.handle("t")
        assert new is not old
        old.confirm()  # e.g. the reply to the first SUBSCRIBE, arriving late
        await trio.testing.wait_all_tasks_blocked()
        assert not new.confirmed
        new.confirm()
    assert sub.topics == {"t"}


async def test_each_subscriber_gets_the_same_message_object() -> None:
    fanout = Fanout(8)
    subs = [fanout.open_subscription() for _ in range(5)]
    for sub in subs:
        await sub.add("t")
    payload = b"x" * 1000
    fanout.deliver(Message("t", payload))
    fanout.deliver(Message("other", b"nobody listens"))
    received = [drain(sub) for sub in subs]
    assert all(len(r) == 1 for r in received)
    assert all(r[0] is received[0][0] for r in received)
    assert received[0][0].payload is payload


async def test_overflow_keeps_the_buffer_then_raises_lagged() -> None:
    fanout = Fanout(3)
    slow, fast = fanout.open_subscription(), fanout.open_subscription()
    await slow.add("t")
    await fast.add("t")
    got_fast: list[bytes] = []
    for i in range(10):
        fanout.deliver(Message("t", b"%d" % i))
        got_fast.extend(m.payload for m in drain(fast))
    assert got_fast == [b"%d" % i for i in range(10)]
    assert slow.lagged and not fast.lagged
    got_slow: list[bytes] = []
    with pytest.raises(SubscriberLagged):
        async for message in slow:
            got_slow.append(message.payload)
    assert got_slow == [b"0", b"1", b"2"]
    with pytest.raises(SubscriberLagged):
        await slow.__anext__()  # it stays cut


async def test_remove_drops_buffered_messages_of_that_topic() -> None:
    fanout = Fanout(8)
    sub = fanout.open_subscription()
    await sub.add("a", "b")
    fanout.deliver(Message("a", b"1"))
    fanout.deliver(Message("b", b"2"))
    fanout.deliver(Message("a", b"3"))
    await sub.remove("a")
    fanout.deliver(Message("a", b"4"))
    assert [m.payload for m in drain(sub)] == [b"2"]
    assert sub.topics == {"b"}


async def test_iteration_waits_and_close_ends_it() -> None:
    fanout = Fanout(8)
    sub = fanout.open_subscription()
    await sub.add("t")
    got: list[bytes] = []

    async def consume() -> None:
        async for message in sub:
            got.append(message.payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        nursery.start_soon(consume)  # two readers share the stream; each message goes to one
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            fanout.deliver(Message("t", b"%d" % i))
            await trio.testing.wait_all_tasks_blocked()
        sub.close()
    assert sorted(got) == [b"%d" % i for i in range(5)]
    assert fanout.refcount("t") == 0
    with pytest.raises(BrokerError):
        await sub.add("t")


async def test_iteration_is_a_checkpoint_even_with_messages_buffered() -> None:
    fanout = Fanout(8)
    sub = fanout.open_subscription()
    await sub.add("t")
    fanout.deliver(Message("t", b"1"))
    with trio.CancelScope() as scope:
        scope.cancel()
        await sub.__anext__()
    assert scope.cancelled_caught
    assert sub.buffered == 1  # the cancelled read did not lose the message


async def test_close_of_the_fanout_fails_pending_adds_and_ends_iterators() -> None:
    upstream = RecordingUpstream()
    fanout = Fanout(8, upstream)
    pending, live = fanout.open_subscription(), fanout.open_subscription()
    errors: list[BaseException] = []
    got: list[bytes] = []

    async def add() -> None:
        try:
            await pending.add("p")
        except BrokerError as exc:
            errors.append(exc)

    async def consume() -> None:
        try:
            async for message in live:
                got.append(message.payload)
        except BrokerError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(live.add, "t")
        await trio.testing.wait_all_tasks_blocked()
        upstream.handle("t").confirm()
        nursery.start_soon(add)
        await trio.testing.wait_all_tasks_blocked()
        fanout.deliver(Message("t", b"last"))
        fanout.close()
        nursery.start_soon(consume)
    assert got == [b"last"]
    assert len(errors) == 2
    assert not any(isinstance(e, SubscriberLagged) for e in errors)
    assert pending.topics == frozenset()
    with pytest.raises(BrokerError):
        await pending.add("r")
    with pytest.raises(BrokerError):
        fanout.open_subscription()


async def test_cut_all_cuts_only_subscriptions_with_topics() -> None:
    fanout = Fanout(8)
    with_topics, idle = fanout.open_subscription(), fanout.open_subscription()
    await with_topics.add("t")
    fanout.deliver(Message("t", b"kept"))
    fanout.cut_all("upstream lost")
    assert with_topics.lagged and not idle.lagged
    assert [m.payload async for m in _until_lagged(with_topics)] == [b"kept"]


async def _until_lagged(sub: LocalSubscription):  # type: ignore[no-untyped-def]
    try:
        async for message in sub:
            yield message
    except SubscriberLagged:
        return


async def test_subscribe_context_releases_topics_and_rejects_a_bare_string() -> None:
    fanout = Fanout(8)
    async with fanout.subscribe(["a", "b"]) as sub:
        assert sub.topics == {"a", "b"}
        assert fanout.refcount("a") == 1
    assert fanout.topics == frozenset()
    with pytest.raises(TypeError):
        async with fanout.subscribe("channel:1"):
            pass
    with pytest.raises(ValueError):
        async with fanout.subscribe([""]):
            pass
    assert fanout.topics == frozenset()


def test_buffer_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Fanout(0)


async def test_inline_handler_takes_messages_and_declined_ones_keep_their_order() -> None:
    fanout = Fanout(8)
    sub = fanout.open_subscription()
    await sub.add("t")
    inline: list[bytes] = []
    busy = False

    def handler(message: Message) -> bool:
        if busy or message.payload.startswith(b"_"):
            return False
        inline.append(message.payload)
        return True

    sub.set_inline(handler)
    fanout.deliver(Message("t", b"a"))
    assert inline == [b"a"] and sub.buffered == 0  # taken at publish time, never buffered
    fanout.deliver(Message("t", b"_internal"))
    fanout.deliver(Message("t", b"b"))  # declined by the fan-out: something is buffered ahead of it
    assert inline == [b"a"] and sub.buffered == 2
    busy = True  # the owner is handling "_internal"
    assert (await sub.__anext__()).payload == b"_internal"
    fanout.deliver(Message("t", b"c"))  # still behind "b"
    assert (await sub.__anext__()).payload == b"b"
    assert (await sub.__anext__()).payload == b"c"
    busy = False
    fanout.deliver(Message("t", b"d"))
    assert inline == [b"a", b"d"] and sub.buffered == 0


async def test_a_failing_inline_handler_buffers_the_message_for_its_owner() -> None:
    fanout = Fanout(8)
    sub = fanout.open_subscription()
    await sub.add("t")

    def handler(message: Message) -> bool:
        raise RuntimeError("bug in one subscriber")

    sub.set_inline(handler)
    fanout.deliver(Message("t", b"x"))  # the publisher is not hurt
    assert (await sub.__anext__()).payload == b"x"


async def test_next_pops_only_after_its_checkpoint() -> None:
    """A message popped by the iterator must not be overtaken by one handled inline while the
    iterator yields: the pop happens after the checkpoint, right before returning. trio shuffles
    run order, so the race is tried many times."""
    for _ in range(20):
        fanout = Fanout(8)
        sub = fanout.open_subscription()
        await sub.add("t")
        order: list[bytes] = []
        sub.set_inline(lambda m, order=order: order.append(m.payload) is None)
        sub._buffer.append(Message("t", b"first"))  # buffered earlier (e.g. behind an internal event)
        async with trio.open_nursery() as nursery:

            async def take(sub: LocalSubscription = sub, order: list[bytes] = order) -> None:
                order.append((await sub.__anext__()).payload)

            nursery.start_soon(take)
            # take() is now between its checkpoint and its pop (or already past both): either
            # way the message published now must come after "first".
            await trio.lowlevel.checkpoint()
            fanout.deliver(Message("t", b"second"))
        if sub.buffered:
            order.append((await sub.__anext__()).payload)
        assert order == [b"first", b"second"]
