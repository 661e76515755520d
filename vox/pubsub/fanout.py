"""Local fan-out shared by every broker backend: topic registry, reference counts, bounded buffers.

A backend only has to get each published message to ``Fanout.deliver`` (in publish order) and to
follow the registry through the ``Upstream`` hooks: ``topics_started`` when a topic gains its
first local subscription, ``topics_stopped`` when it loses its last one. Everything else about the
delivery policy of ``vox.pubsub.base`` lives here, so both backends behave the same.

All of it runs on the trio thread and never blocks: ``deliver`` appends one shared ``Message``
object to each subscriber's buffer (the payload bytes are never copied or re-encoded).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from vox.errors import BrokerError, SubscriberLagged
from vox.pubsub.base import Message

log = logging.getLogger("vox.pubsub")


class TopicHandle:
    """The registry entry of one topic while it has local subscribers.

    A new handle is made each time a topic goes from 0 to 1 subscribers, so a confirmation that
    arrives for an older generation (subscribe, unsubscribe, subscribe again) can only ever set
    the older, already discarded handle.
    """

    __slots__ = ("_live", "subscribers", "topic")

    def __init__(self, topic: str, *, confirmed: bool) -> None:
        self.topic = topic
        # Insertion-ordered so fan-out order is deterministic; values unused.
        self.subscribers: dict[LocalSubscription, None] = {}
        self._live = trio.Event()
        if confirmed:
            self._live.set()

    @property
    def confirmed(self) -> bool:
        return self._live.is_set()

    def confirm(self) -> None:
        """Mark upstream delivery of this topic as live. Call on the trio thread."""
        self._live.set()

    async def wait_confirmed(self) -> None:
        await self._live.wait()


class Upstream(Protocol):
    """What a backend learns from the registry. Both hooks are called synchronously on the trio
    thread and must not block; they are never called after ``Fanout.close``."""

    def topics_started(self, handles: Sequence[TopicHandle]) -> None:
        """These topics went from 0 to 1 local subscriptions: subscribe upstream, then call each
        ``handle.confirm()`` (on the trio thread) once messages published from now on will arrive."""
        ...

    def topics_stopped(self, topics: Sequence[str]) -> None:
        """These topics went from 1 to 0 local subscriptions: unsubscribe upstream."""
        ...


class Fanout:
    """Registry of local subscriptions by topic; a topic's reference count is its number of
    subscriptions. With ``upstream=None`` (the in-process broker) topics are live at once."""

    def __init__(self, buffer_size: int, upstream: Upstream | None = None) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
        self.buffer_size = buffer_size
        self._upstream = upstream
        self._topics: dict[str, TopicHandle] = {}
        self._subscriptions: dict[LocalSubscription, None] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def topics(self) -> frozenset[str]:
        """Topics with at least one local subscription: exactly what upstream should carry."""
        return frozenset(self._topics)

    def refcount(self, topic: str) -> int:
        handle = self._topics.get(topic)
        return 0 if handle is None else len(handle.subscribers)

    def open_subscription(self) -> LocalSubscription:
        if self._closed:
            raise BrokerError("the broker is closed")
        sub = LocalSubscription(self)
        self._subscriptions[sub] = None
        return sub

    @asynccontextmanager
    async def subscribe(self, topics: Iterable[str] = ()) -> AsyncIterator[LocalSubscription]:
        """The ``Broker.subscribe`` of every backend: the subscription is closed on exit,
        whatever the exit, so its topics are released even when the owner is cancelled."""
        if isinstance(topics, str):
            # A bare string is an Iterable[str] too: one subscription per character.
            raise TypeError("subscribe() takes an iterable of topics, not a single string")
        initial = tuple(topics)
        sub = self.open_subscription()
        try:
            if initial:
                await sub.add(*initial)
            yield sub
        finally:
            sub.close()

    def deliver(self, message: Message) -> None:
        handle = self._topics.get(message.topic)
        if handle is None:
            return
        for sub in handle.subscribers:
            sub._offer(message)

    def deliver_many(self, messages: Iterable[Message]) -> None:
        topics = self._topics
        for message in messages:
            handle = topics.get(message.topic)
            if handle is not None:
                for sub in handle.subscribers:
                    sub._offer(message)

    def cut_all(self, reason: str) -> None:
        """Mark every subscription that has topics as lagged, e.g. because upstream dropped
        messages while its connection was down: their owners must resume, as after an overflow."""
        for sub in self._subscriptions:
            if sub._topics:
                sub._cut(reason)

    def close(self) -> None:
        """Stop everything: pending ``add`` calls raise BrokerError, iterators drain their buffer
        and then raise BrokerError. Upstream is not told: it is being shut down as a whole."""
        if self._closed:
            return
        self._closed = True
        for handle in self._topics.values():
            handle.confirm()
        self._topics.clear()
        for sub in self._subscriptions:
            sub._broker_closed()
        self._subscriptions.clear()

    def _attach(self, sub: LocalSubscription, topics: Iterable[str]) -> tuple[list[str], list[TopicHandle]]:
        """Register ``topics`` for ``sub``; return the topics newly added to it and the handles
        it must wait on before messages published from now on are sure to reach it."""
        topics = list(topics)
        for topic in topics:
            # All checked before anything changes, so a bad topic leaves no partial registration.
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"a topic must be a non-empty string, not {topic!r}")
        added: list[str] = []
        waits: list[TopicHandle] = []
        started: list[TopicHandle] = []
        for topic in topics:
            handle = self._topics.get(topic)
            if handle is None:
                handle = TopicHandle(topic, confirmed=self._upstream is None)
                self._topics[topic] = handle
                started.append(handle)
            if topic not in sub._topics:
                handle.subscribers[sub] = None
                sub._topics.add(topic)
                added.append(topic)
            if not handle.confirmed:
                # Also when another subscription started the topic: it may not be live yet.
                waits.append(handle)
        if started and self._upstream is not None:
            try:
                self._upstream.topics_started(started)
            except BaseException:
                self._detach(sub, added)
                raise
        return added, waits

    def _detach(self, sub: LocalSubscription, topics: Iterable[str]) -> None:
        stopped: list[str] = []
        for topic in topics:
            if topic not in sub._topics:
                continue
            sub._topics.discard(topic)
            handle = self._topics.get(topic)
            if handle is None:
                continue
            handle.subscribers.pop(sub, None)
            if not handle.subscribers:
                del self._topics[topic]
                # Wake any add() still waiting on this generation; the topic is gone for it too.
                handle.confirm()
                stopped.append(topic)
        if stopped and self._upstream is not None and not self._closed:
            self._upstream.topics_stopped(stopped)

    def _forget(self, sub: LocalSubscription) -> None:
        self._subscriptions.pop(sub, None)


class LocalSubscription:
    """Implements ``vox.pubsub.base.Subscription`` for every backend.

    Several tasks may iterate one subscription; each message goes to exactly one of them.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_fanout",
        "_inline",
        "_lag",
        "_limit",
        "_shutdown",
        "_topics",
        "_waiters",
    )

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._limit = fanout.buffer_size
        self._buffer: deque[Message] = deque()
        self._topics: set[str] = set()
        self._waiters = trio.lowlevel.ParkingLot()
        self._lag: str | None = None  # why it was cut, once it is
        self._closed = False  # closed by its owner
        self._shutdown = False  # the broker closed under it
        self._inline: Callable[[Message], bool] | None = None

    def set_inline(self, handler: Callable[[Message], bool] | None) -> None:
        self._inline = handler

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    @property
    def lagged(self) -> bool:
        return self._lag is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def add(self, *topics: str) -> None:
        """Returns once messages published to every topic from now on will reach this
        subscription. Cancelled or failed, it adds none of the topics it was adding."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        added, waits = self._fanout._attach(self, topics)
        if not waits:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            for handle in waits:
                await handle.wait_confirmed()
            if self._fanout.closed:
                raise BrokerError("the broker closed before the subscription was confirmed")
        except BaseException:
            self._fanout._detach(self, added)
            raise

    async def remove(self, *topics: str) -> None:
        """Stops delivery at once, including messages of these topics already buffered.

        Like ``aclose``, it takes effect even when the caller is cancelled."""
        self._fanout._detach(self, topics)
        gone = set(topics)
        if self._buffer and gone:
            self._buffer = deque(m for m in self._buffer if m.topic not in gone)
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Release every topic and end iteration. Synchronous so it is safe in ``finally``."""
        if self._closed:
            return
        self._closed = True
        self._fanout._detach(self, list(self._topics))
        self._fanout._forget(self)
        self._buffer.clear()
        self._waiters.unpark_all()

    def __aiter__(self) -> LocalSubscription:
        return self

    async def __anext__(self) -> Message:
        await trio.lowlevel.checkpoint_if_cancelled()
        scheduled = False
        while True:
            if self._buffer:
                if scheduled:
                    # Popped with no yield before the caller sees it: an inline handler can only
                    # take a message once this one is in the caller's hands, never overtake it.
                    return self._buffer.popleft()
                # Keep trio's rule that every await may schedule (once, not again after a park).
                await trio.lowlevel.cancel_shielded_checkpoint()
                scheduled = True
                continue
            if self._closed:
                raise StopAsyncIteration
            if self._lag is not None:
                raise SubscriberLagged(self._lag)
            if self._shutdown:
                raise BrokerError("the broker was closed")
            await self._waiters.park()
            scheduled = True

    def _offer(self, message: Message) -> None:
        if self._lag is not None or self._closed:
            return
        if self._inline is not None and not self._buffer:
            try:
                if self._inline(message):
                    return
            except Exception:
                # The publisher must not fail for one subscriber: the message is buffered and
                # the owner meets the problem again in its own task.
                log.exception("inline subscriber failed", extra={"fields": {"topic": message.topic}})
        if len(self._buffer) >= self._limit:
            self._cut(f"subscription fell {self._limit} messages behind")
            return
        self._buffer.append(message)
        if self._waiters:
            self._waiters.unpark()

    def _cut(self, reason: str) -> None:
        if self._lag is not None or self._closed:
            return
        self._lag = reason
        log.info(
            "subscription lagged",
            extra={"fields": {"reason": reason, "buffered": len(self._buffer), "topics": len(self._topics)}},
        )
        # Waiters must wake to see the lag; with messages buffered they would have been woken anyway.
        self._waiters.unpark_all()

    def _broker_closed(self) -> None:
        self._shutdown = True
        self._waiters.unpark_all()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("the subscription is closed")
        if self._fanout.closed:
            raise BrokerError("the broker is closed")
