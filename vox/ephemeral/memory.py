"""The in-process Ephemeral store, and the token-bucket arithmetic shared with the Redis backend.

The bucket math is sans-IO (time comes in as ``now``) so it can be unit-tested without a clock,
and so the Redis Lua script has one reference to mirror line for line.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from vox.ephemeral.base import BucketResult, StreamEntry

# Float refills (0.1 + 0.2 ...) land a hair under a whole token; without this slack a bucket that
# has visibly refilled would still refuse. Far below any meaningful fraction of a token.
TOKEN_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    updated_at: float  # seconds, on whatever clock the caller's ``now`` comes from


def check_bucket_args(rate_per_s: float, burst: int, cost: int) -> None:
    """Raise ValueError for arguments no bucket could honour (checked before any I/O)."""
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a positive finite number, not {rate_per_s!r}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, not {burst!r}")
    # A cost above the burst could never be granted: refusing it forever would hide the bug.
    if not 0 <= cost <= burst:
        raise ValueError(f"cost must be between 0 and burst ({burst}), not {cost!r}")


def refill(state: BucketState | None, now: float, *, rate_per_s: float, burst: int) -> float:
    """Tokens available at ``now``; an absent bucket is a full one."""
    if state is None:
        return float(burst)
    # A clock that steps backwards (a Redis failover to a skewed replica) must not drain the bucket.
    elapsed = max(0.0, now - state.updated_at)
    # min() also clamps buckets whose burst was lowered by a configuration change.
    return min(float(burst), state.tokens + elapsed * rate_per_s)


def bucket_result(allowed: bool, tokens: float, *, rate_per_s: float, burst: int, cost: int) -> BucketResult:
    """Describe a bucket that holds ``tokens`` after a take that was ``allowed`` (or not)."""
    return BucketResult(
        allowed=allowed,
        limit=burst,
        remaining=max(0, math.floor(tokens + TOKEN_EPSILON)),
        reset_after_s=max(0.0, (burst - tokens) / rate_per_s),
        retry_after_s=0.0 if allowed else max(0.0, (cost - tokens) / rate_per_s),
    )


def take_tokens(
    state: BucketState | None, now: float, *, rate_per_s: float, burst: int, cost: int = 1
) -> tuple[BucketState | None, BucketResult]:
    """One take from a token bucket. Returns the state to store (None: the bucket is full, so
    storing nothing is equivalent) and the result to report.

    A refused take consumes nothing, so a client hammering a limit is not pushed further back.
    """
    check_bucket_args(rate_per_s, burst, cost)
    tokens = refill(state, now, rate_per_s=rate_per_s, burst=burst)
    allowed = tokens + TOKEN_EPSILON >= cost
    if allowed:
        tokens = max(0.0, tokens - cost)
    result = bucket_result(allowed, tokens, rate_per_s=rate_per_s, burst=burst, cost=cost)
    new_state = BucketState(tokens, now) if result.reset_after_s > 0 else None
    return new_state, result


def check_ttl(ttl_s: float) -> None:
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive finite number of seconds, not {ttl_s!r}")


def check_max_len(max_len: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, not {max_len!r}")


# Values, buckets, streams and counter maps live in separate namespaces (as on Redis, where they
# are a string, a hash, a stream and a hash under distinct names), so a key used for several never
# hits a type error; delete() clears all.
_Kind = Literal["v", "b", "s", "h"]
_Slot = tuple[_Kind, str]


@dataclass(slots=True)
class _Stream:
    entries: list[StreamEntry]


@dataclass(slots=True)
class _Map:
    counts: dict[str, int]


_Data = bytes | BucketState | _Stream | _Map


@dataclass(slots=True)
class _Entry:
    data: _Data
    expires_at: float
    seq: int  # matches the heap item that schedules this entry; older heap items are stale


class MemoryEphemeral:
    """Ephemeral state in this process's memory: for a single daemon.

    Expiry is checked on every access; every write also sweeps a bounded number of expired keys
    from the front of an expiry heap, so keys nobody reads again still go away. At ``max_keys``
    the key that would expire soonest is evicted to make room (for a rate-limit bucket that means
    it is forgotten early, which errs towards allowing).
    """

    def __init__(
        self,
        *,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = trio.current_time,
        sweep_batch: int = 64,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._sweep_batch = sweep_batch
        self._entries: dict[_Slot, _Entry] = {}
        self._heap: list[tuple[float, int, _Slot]] = []
        self._seq = itertools.count()
        self._stream_ids = itertools.count(1)

    def __len__(self) -> int:
        """Stored keys, including expired ones not yet swept (for tests and metrics)."""
        return len(self._entries)

    # -- internals -------------------------------------------------------------------------------

    def _live(self, slot: _Slot, now: float) -> _Entry | None:
        entry = self._entries.get(slot)
        if entry is not None and entry.expires_at <= now:
            del self._entries[slot]
            return None
        return entry

    def _is_current(self, seq: int, slot: _Slot) -> bool:
        entry = self._entries.get(slot)
        return entry is not None and entry.seq == seq

    def _sweep(self, now: float) -> None:
        # Bounded so that a million keys expiring together cannot stall the event loop in one write;
        # each write schedules one heap item and removes up to a batch, so expired keys cannot pile up.
        for _ in range(self._sweep_batch):
            if not self._heap or self._heap[0][0] > now:
                return
            _, seq, slot = heapq.heappop(self._heap)
            if self._is_current(seq, slot):
                del self._entries[slot]

    def _evict_one(self) -> bool:
        while self._heap:
            _, seq, slot = heapq.heappop(self._heap)
            if self._is_current(seq, slot):
                del self._entries[slot]
                return True
        return False

    def _store(self, slot: _Slot, data: _Data, expires_at: float, now: float) -> None:
        self._sweep(now)
        if slot not in self._entries:
            while len(self._entries) >= self.max_keys and self._evict_one():
                pass
        seq = next(self._seq)
        self._entries[slot] = _Entry(data, expires_at, seq)
        heapq.heappush(self._heap, (expires_at, seq, slot))
        # Overwrites leave stale heap items behind (a busy bucket leaves one per take); rebuild
        # once they outnumber live entries, which keeps the heap O(keys) at O(1) amortised cost.
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._heap = [(e.expires_at, e.seq, s) for s, e in self._entries.items()]
            heapq.heapify(self._heap)

    def _drop(self, slot: _Slot) -> None:
        # Its heap item turns stale and is discarded when it reaches the front.
        self._entries.pop(slot, None)

    # -- Ephemeral -------------------------------------------------------------------------------

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        self._store(("v", key), value, now + ttl_s, now)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        slot: _Slot = ("v", key)
        if self._live(slot, now) is not None:
            return False
        self._store(slot, value, now + ttl_s, now)
        return True

    async def get(self, key: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        entry = self._live(("v", key), self._clock())
        return None if entry is None else _as_bytes(entry.data)

    async def getdel(self, key: str) -> bytes | None:
        # Atomic because nothing between the checkpoint and the return yields to another task.
        await trio.lowlevel.checkpoint()
        slot: _Slot = ("v", key)
        entry = self._live(slot, self._clock())
        if entry is None:
            return None
        self._drop(slot)
        return _as_bytes(entry.data)

    async def incr(self, key: str, delta: int, ttl_s: float) -> int:
        check_ttl(ttl_s)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        slot: _Slot = ("v", key)
        entry = self._live(slot, now)
        total = (int(_as_bytes(entry.data)) if entry is not None else 0) + delta
        self._store(slot, str(total).encode(), now + ttl_s, now)
        return total

    async def delete(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._drop(("v", key))
        self._drop(("b", key))
        self._drop(("s", key))
        self._drop(("h", key))

    async def take(self, key: str, *, rate_per_s: float, burst: int, cost: int = 1) -> BucketResult:
        check_bucket_args(rate_per_s, burst, cost)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        slot: _Slot = ("b", key)
        entry = self._live(slot, now)
        state = None if entry is None else _as_state(entry.data)
        new_state, result = take_tokens(state, now, rate_per_s=rate_per_s, burst=burst, cost=cost)
        if new_state is None:
            self._drop(slot)
        else:
            # Once full again the bucket is indistinguishable from an absent one: expire it then.
            self._store(slot, new_state, now + result.reset_after_s, now)
        return result

    async def append(
        self, key: str, data: bytes, ttl_s: float, *, after: str, max_len: int = 1024
    ) -> str | None:
        check_ttl(ttl_s)
        check_max_len(max_len)
        # Atomic like getdel: no checkpoint between the compare and the append.
        await trio.lowlevel.checkpoint()
        now = self._clock()
        slot: _Slot = ("s", key)
        entry = self._live(slot, now)
        stream = _Stream([]) if entry is None else _as_stream(entry.data)
        last = stream.entries[-1].id if stream.entries else ""
        if last != after:
            return None
        # Ids come from one counter for every stream, so a stream that expired and was appended
        # to again never repeats an id an old reader could hold.
        new = StreamEntry(str(next(self._stream_ids)), data)
        stream.entries.append(new)
        if len(stream.entries) > max_len:
            del stream.entries[: len(stream.entries) - max_len]
        self._store(slot, stream, now + ttl_s, now)
        return new.id

    async def read(self, key: str) -> list[StreamEntry]:
        await trio.lowlevel.checkpoint()
        entry = self._live(("s", key), self._clock())
        return [] if entry is None else list(_as_stream(entry.data).entries)

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        await trio.lowlevel.checkpoint()
        slot: _Slot = ("v", key)
        entry = self._live(slot, self._clock())
        if entry is None or _as_bytes(entry.data) != value:
            return False
        self._drop(slot)
        return True

    async def hincr(self, key: str, field: str, delta: int, ttl_s: float) -> int:
        check_ttl(ttl_s)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        slot: _Slot = ("h", key)
        entry = self._live(slot, now)
        counts = {} if entry is None else _as_map(entry.data).counts
        value = counts.get(field, 0) + delta
        if value > 0:
            counts[field] = value
        else:
            counts.pop(field, None)
        if counts:
            self._store(slot, _Map(counts), now + ttl_s, now)
        else:
            self._drop(slot)
        return value

    async def hgetall(self, key: str) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        entry = self._live(("h", key), self._clock())
        return {} if entry is None else dict(_as_map(entry.data).counts)

    async def hdel(self, key: str, field: str) -> int | None:
        await trio.lowlevel.checkpoint()
        slot: _Slot = ("h", key)
        entry = self._live(slot, self._clock())
        if entry is None:
            return None
        counts = _as_map(entry.data).counts
        value = counts.pop(field, None)
        if not counts:
            self._drop(slot)
        return value

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    def describe(self) -> str:
        return "memory"


def _as_bytes(data: _Data) -> bytes:
    assert isinstance(data, bytes)
    return data


def _as_state(data: _Data) -> BucketState:
    assert isinstance(data, BucketState)
    return data


def _as_stream(data: _Data) -> _Stream:
    assert isinstance(data, _Stream)
    return data


def _as_map(data: _Data) -> _Map:
    assert isinstance(data, _Map)
    return data
