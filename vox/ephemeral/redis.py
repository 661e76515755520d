"""The Redis Ephemeral store: shared by every daemon of a deployment.

redis-py's asyncio client does not run under trio, so this uses the synchronous client in worker
threads. A dedicated CapacityLimiter caps the threads (and therefore the pooled connections) so
Redis traffic cannot starve trio's default thread pool, which file I/O and the database share.
Threads are not abandoned on cancellation: an abandoned GETDEL could consume a single-use token
that nobody receives. The socket timeout bounds how long a cancellation can wait.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.exceptions
import trio

from vox.ephemeral.base import BucketResult, StreamEntry
from vox.ephemeral.memory import bucket_result, check_bucket_args, check_max_len, check_ttl
from vox.errors import BrokerError

T = TypeVar("T")

# Mirrors vox.ephemeral.memory.take_tokens line for line (see there for the reasoning). It reads
# the clock with TIME on the Redis server, so daemons with skewed clocks refill a shared bucket
# identically. Numbers are returned and stored as %.17g strings: Redis truncates Lua numbers in
# replies to integers, and tostring() keeps only 14 digits.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = 1e-9
-- Needed before Redis 5 to write after a non-deterministic command (TIME); a no-op since.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = burst
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
if state[1] and state[2] then
  local elapsed = math.max(0, now - tonumber(state[2]))
  tokens = math.min(burst, tonumber(state[1]) + elapsed * rate)
end
local allowed = 0
if tokens + eps >= cost then
  tokens = math.max(0, tokens - cost)
  allowed = 1
end
local reset_ms = math.ceil((burst - tokens) / rate * 1000)
if reset_ms > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], reset_ms)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, string.format('%.17g', tokens)}
"""


# Compare-and-append: XADD only when the stream's last id is ARGV[2] ("" = empty or absent).
# Returns the new id, or false (nil to the client) when another append got there first.
APPEND_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local current = ''
if #last > 0 then current = last[1][1] end
if current ~= ARGV[2] then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
"""


# Compare-and-delete: DEL only while the value is still ARGV[1].
DELETE_IF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Counter map: HINCRBY, drop a field at 0 or below (and the hash with its last field), renew the TTL.
HINCR_SCRIPT = """
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if v <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return v
"""

# HGET + HDEL as one step, so exactly one caller learns the value a field held.
HDEL_SCRIPT = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then redis.call('HDEL', KEYS[1], ARGV[1]) end
return v
"""


def _ttl_ms(ttl_s: float) -> int:
    # Rounded up so a key never outlives its TTL by less than asked (and PX 0 is an error).
    return max(1, math.ceil(ttl_s * 1000))


def _raw(value: bytes | str | None) -> bytes | None:
    if isinstance(value, str):
        raise TypeError("the Redis client must be created with decode_responses=False")
    return value


def redis_location(url: str) -> str:
    """host:port/db (or the socket path) for messages: the URL without credentials."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 6379}{parts.path or '/0'}"


class RedisEphemeral:
    """Ephemeral state in Redis under ``prefix``.

    Values are strings at ``{prefix}v:{key}``; buckets are hashes (tokens, ts) at
    ``{prefix}b:{key}``, expiring when they would be full again; streams are Redis Streams at
    ``{prefix}s:{key}`` (one field, ``e``, per entry; XADD MAXLEN ~ and PEXPIRE on append);
    counter maps are hashes of integers at ``{prefix}h:{key}``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "vox:eph:",
        location: str = "redis",
        max_threads: int = 16,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._location = location
        self._limiter = trio.CapacityLimiter(max_threads)
        # register_script keeps the SHA: calls use EVALSHA and load the script on NOSCRIPT
        # (a restarted or failed-over server has an empty script cache).
        self._take_script = client.register_script(TAKE_SCRIPT)
        self._append_script = client.register_script(APPEND_SCRIPT)
        self._delete_if_script = client.register_script(DELETE_IF_SCRIPT)
        self._hincr_script = client.register_script(HINCR_SCRIPT)
        self._hdel_script = client.register_script(HDEL_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "vox:eph:",
        max_threads: int = 16,
        socket_timeout_s: float = 5.0,
    ) -> RedisEphemeral:
        client = redis.Redis.from_url(
            url,
            max_connections=max_threads,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        return cls(client, prefix=prefix, location=redis_location(url), max_threads=max_threads)

    @property
    def prefix(self) -> str:
        return self._prefix

    def _value_key(self, key: str) -> str:
        return f"{self._prefix}v:{key}"

    def _bucket_key(self, key: str) -> str:
        return f"{self._prefix}b:{key}"

    def _stream_key(self, key: str) -> str:
        return f"{self._prefix}s:{key}"

    def _map_key(self, key: str) -> str:
        return f"{self._prefix}h:{key}"

    async def _call(self, fn: Callable[[redis.Redis], T]) -> T:
        return await trio.to_thread.run_sync(self._guarded, fn, limiter=self._limiter)

    def _guarded(self, fn: Callable[[redis.Redis], T]) -> T:
        try:
            return fn(self._client)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BrokerError(f"Redis ephemeral store at {self._location} is unreachable: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise BrokerError(f"Redis ephemeral store at {self._location} failed: {exc}") from exc

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        name, px = self._value_key(key), _ttl_ms(ttl_s)
        await self._call(lambda c: c.set(name, value, px=px))

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        name, px = self._value_key(key), _ttl_ms(ttl_s)
        stored: Any = await self._call(lambda c: c.set(name, value, px=px, nx=True))
        return bool(stored)

    async def get(self, key: str) -> bytes | None:
        name = self._value_key(key)
        return _raw(await self._call(lambda c: c.get(name)))

    async def getdel(self, key: str) -> bytes | None:
        name = self._value_key(key)
        return _raw(await self._call(lambda c: c.getdel(name)))

    async def incr(self, key: str, delta: int, ttl_s: float) -> int:
        check_ttl(ttl_s)
        name, px = self._value_key(key), _ttl_ms(ttl_s)

        def fn(c: redis.Redis) -> int:
            pipe = c.pipeline(transaction=True)
            pipe.incrby(name, delta)
            pipe.pexpire(name, px)
            total, _ = pipe.execute()
            return int(total)

        return await self._call(fn)

    async def delete(self, key: str) -> None:
        names = (self._value_key(key), self._bucket_key(key), self._stream_key(key), self._map_key(key))
        await self._call(lambda c: c.delete(*names))

    async def take(self, key: str, *, rate_per_s: float, burst: int, cost: int = 1) -> BucketResult:
        check_bucket_args(rate_per_s, burst, cost)
        name = self._bucket_key(key)
        args = (repr(float(rate_per_s)), burst, cost)
        reply: Any = await self._call(lambda c: self._take_script(keys=[name], args=args, client=c))
        allowed, tokens = int(reply[0]) == 1, float(reply[1])
        return bucket_result(allowed, tokens, rate_per_s=rate_per_s, burst=burst, cost=cost)

    async def append(
        self, key: str, data: bytes, ttl_s: float, *, after: str, max_len: int = 1024
    ) -> str | None:
        check_ttl(ttl_s)
        check_max_len(max_len)
        name = self._stream_key(key)
        args = (data, after, _ttl_ms(ttl_s), max_len)
        reply: Any = await self._call(lambda c: self._append_script(keys=[name], args=args, client=c))
        if reply is None:
            return None
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def read(self, key: str) -> list[StreamEntry]:
        name = self._stream_key(key)
        rows: Any = await self._call(lambda c: c.xrange(name))
        entries = []
        for entry_id, fields in rows:
            data = _raw(fields.get(b"e"))
            if data is None:  # not written by append(): not ours to interpret
                continue
            entries.append(
                StreamEntry(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), data)
            )
        return entries

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        name = self._value_key(key)
        reply: Any = await self._call(lambda c: self._delete_if_script(keys=[name], args=[value], client=c))
        return int(reply) == 1

    async def hincr(self, key: str, field: str, delta: int, ttl_s: float) -> int:
        check_ttl(ttl_s)
        name, args = self._map_key(key), (field, int(delta), _ttl_ms(ttl_s))
        reply: Any = await self._call(lambda c: self._hincr_script(keys=[name], args=args, client=c))
        return int(reply)

    async def hgetall(self, key: str) -> dict[str, int]:
        name = self._map_key(key)
        rows: Any = await self._call(lambda c: c.hgetall(name))
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in rows.items()}

    async def hdel(self, key: str, field: str) -> int | None:
        name = self._map_key(key)
        reply: Any = await self._call(lambda c: self._hdel_script(keys=[name], args=[field], client=c))
        return None if reply is None else int(reply)

    async def ping(self) -> None:
        await self._call(lambda c: c.ping())

    def describe(self) -> str:
        return "redis"

    def close(self) -> None:
        """Close the pooled connections; no call may be running (open_ephemeral ensures that)."""
        # Synchronous on purpose: it only closes sockets, and an async version would be skipped
        # when the enclosing scope is already cancelled.
        self._client.close()
