"""The embedded broker: one daemon, no external service; publish hands the message to the fan-out."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager

import trio

from vox.errors import BrokerError
from vox.pubsub.base import Message, Subscription
from vox.pubsub.fanout import Fanout


class MemoryBroker:
    def __init__(self, *, buffer_size: int = 1024) -> None:
        self._fanout = Fanout(buffer_size)

    @property
    def fanout(self) -> Fanout:
        return self._fanout

    async def publish(self, topic: str, payload: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._fanout.closed:
            raise BrokerError("the broker is closed")
        self._fanout.deliver(Message(topic, payload))
        await trio.lowlevel.cancel_shielded_checkpoint()

    def subscribe(self, topics: Iterable[str] = ()) -> AbstractAsyncContextManager[Subscription]:
        return self._fanout.subscribe(topics)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._fanout.closed:
            raise BrokerError("the broker is closed")

    def describe(self) -> str:
        return f"memory (in-process, buffer {self._fanout.buffer_size})"

    def close(self) -> None:
        self._fanout.close()
