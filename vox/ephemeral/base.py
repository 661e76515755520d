"""The Ephemeral interface: short-lived shared state (rate-limit buckets, single-use tokens,
OIDC flow state, presence, DM call event streams, the nodes of a deployment). In-process on one
daemon; Redis when several daemons share a deployment, so a limit or a single-use token holds
across all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BucketResult:
    """The outcome of taking from a token bucket."""

    allowed: bool
    limit: int  # bucket capacity (burst)
    remaining: int  # whole tokens left after this take
    reset_after_s: float  # seconds until the bucket is full again
    retry_after_s: float  # 0 when allowed; else seconds until `cost` tokens are available


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of an append-only stream: its id (opaque, unique within the stream, increasing
    in append order) and its bytes."""

    id: str
    data: bytes


class Ephemeral(Protocol):
    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Store only when the key is absent (or expired); True when this call stored it."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def getdel(self, key: str) -> bytes | None:
        """Return and delete atomically: exactly one of several concurrent callers gets the value."""
        ...

    async def delete(self, key: str) -> None:
        """Forget the value, bucket and stream stored under ``key``."""
        ...

    async def incr(self, key: str, delta: int, ttl_s: float) -> int:
        """Add ``delta`` to an integer value (absent counts as 0), reset its TTL, return the sum.

        Atomic across daemons on the Redis backend. ``get`` reads it back as ASCII digits.
        """
        ...

    async def take(self, key: str, *, rate_per_s: float, burst: int, cost: int = 1) -> BucketResult:
        """Token bucket: refill at ``rate_per_s`` up to ``burst``; take ``cost`` tokens if available.

        Atomic across daemons on the Redis backend.
        """
        ...

    async def append(
        self, key: str, data: bytes, ttl_s: float, *, after: str, max_len: int = 1024
    ) -> str | None:
        """Append to the stream at ``key`` if its last entry's id is ``after`` ("" : the stream is
        empty or absent); return the new entry's id, or None (nothing written) when the stream
        moved on since the caller read it. Resets the stream's TTL; trims it to about ``max_len``
        entries (never fewer), oldest first.

        The compare and the append are one atomic step across daemons on the Redis backend
        (optimistic concurrency for event logs: read, decide, append after what was read).
        """
        ...

    async def read(self, key: str) -> list[StreamEntry]:
        """Every entry of the stream at ``key``, oldest first (empty when absent or expired)."""
        ...

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        """Delete the value at ``key`` only while it still equals ``value``; True when deleted.

        Compare-and-delete, atomic across daemons on the Redis backend: a record claimed anew
        by someone else since it was read is left alone.
        """
        ...

    async def hincr(self, key: str, field: str, delta: int, ttl_s: float) -> int:
        """Counter map: add ``delta`` to ``field`` of the map at ``key`` (absent counts as 0),
        reset the map's TTL, return the field's new value. A field that reaches 0 or less is
        removed, and a map with no field left is removed. Atomic across daemons on Redis.
        """
        ...

    async def hgetall(self, key: str) -> dict[str, int]:
        """Every field of the counter map at ``key`` (empty when absent or expired)."""
        ...

    async def hdel(self, key: str, field: str) -> int | None:
        """Remove ``field`` from the counter map at ``key`` and return the value it held, or None
        when it was absent (so, of several concurrent callers, exactly one gets the value)."""
        ...

    async def ping(self) -> None: ...

    def describe(self) -> str: ...
