"""Topic pub/sub between services and gateway connections: in-process, or Redis to scale out.

``open_broker(None)`` is the embedded default; ``open_broker("redis://...")`` lets several
daemons behave as one. The delivery policy is documented in ``vox.pubsub.base``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vox.pubsub.base import Broker, Message, Subscription
from vox.pubsub.memory import MemoryBroker

__all__ = ["Broker", "Message", "Subscription", "open_broker"]


@asynccontextmanager
async def open_broker(
    redis_url: str | None, *, buffer_size: int = 1024, prefix: str = "vox:"
) -> AsyncIterator[Broker]:
    """Yield a running broker; on exit (cancellation included) stop its background thread and
    close its connections. Raises BrokerError if Redis cannot be reached at startup."""
    if redis_url is None:
        memory = MemoryBroker(buffer_size=buffer_size)
        try:
            yield memory
        finally:
            memory.close()
        return
    # Imported here so the embedded mode never loads redis-py.
    from vox.pubsub.redis import open_redis_broker

    async with open_redis_broker(redis_url, buffer_size=buffer_size, prefix=prefix) as broker:
        yield broker
