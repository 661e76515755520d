"""The Broker interface: topic-based pub/sub between the services and every gateway connection.

Topics are strings such as ``channel:{id}``, ``guild:{id}``, ``user:{id}`` (see the design).
Payloads are bytes, encoded once by the publisher and handed unchanged to every subscriber.

Delivery policy (the same for every backend):
- Per topic, messages reach each subscriber in publish order (for one publishing daemon).
- ``publish`` never waits for subscribers. Each subscription has a bounded buffer
  (``buffer_size`` messages). When it is full the subscription is *lagged*: it keeps what it
  buffered, receives nothing more, and once the buffer is drained iteration raises
  ``SubscriberLagged``. Its owner (a gateway connection) then closes so the client resumes or
  reconnects; every other subscriber carries on untouched.
- A daemon subscribes its backend to a topic while at least one local subscription needs it.
- A subscriber may also take messages *inline* (``set_inline``): the fan-out hands each message
  to a synchronous handler as it is published, and only the ones it declines are buffered for
  iteration. A message is offered inline only while nothing is buffered, so the order holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes


class Subscription(Protocol):
    """A live subscription; iterate it to receive messages. Topics may change while it lives."""

    async def add(self, *topics: str) -> None: ...

    async def remove(self, *topics: str) -> None: ...

    @property
    def topics(self) -> frozenset[str]: ...

    def __aiter__(self) -> AsyncIterator[Message]: ...

    def set_inline(self, handler: Callable[[Message], bool] | None) -> None:
        """Offer each message to ``handler`` as it is published, while nothing is buffered; it
        returns False to have the message buffered for iteration instead. It runs in the
        publisher's context, so it must be quick, must not block, and should not raise."""
        ...


class Broker(Protocol):
    async def publish(self, topic: str, payload: bytes) -> None: ...

    def subscribe(self, topics: Iterable[str] = ()) -> AbstractAsyncContextManager[Subscription]:
        """``async with broker.subscribe([...]) as sub: async for msg in sub: ...``"""
        ...

    async def ping(self) -> None:
        """Raise BrokerError unless the backend answers."""
        ...

    def describe(self) -> str: ...
