"""Short-lived shared state: in-process by default, Redis when several daemons share a deployment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vox.ephemeral.base import BucketResult, Ephemeral, StreamEntry
from vox.ephemeral.memory import MemoryEphemeral
from vox.ephemeral.redis import RedisEphemeral

__all__ = ["BucketResult", "Ephemeral", "MemoryEphemeral", "RedisEphemeral", "StreamEntry", "open_ephemeral"]


@asynccontextmanager
async def open_ephemeral(redis_url: str | None, *, prefix: str = "vox:eph:") -> AsyncIterator[Ephemeral]:
    """The in-process store when ``redis_url`` is empty, else Redis (pinged first, so a daemon
    pointed at an unreachable Redis fails at startup with BrokerError rather than on a request).
    """
    if not redis_url:
        yield MemoryEphemeral()
        return
    store = RedisEphemeral.from_url(redis_url, prefix=prefix)
    try:
        await store.ping()
        yield store
    finally:
        store.close()
