"""The scale-out broker: Redis PUBLISH/SUBSCRIBE, so events published on one daemon reach the
gateway connections of every daemon.

redis-py's asyncio client does not run under trio (shared/stack-notes.md), so this uses the
synchronous client from threads:

- ``publish`` and ``ping`` run one command each in a trio worker thread, on a small blocking
  connection pool, under a ``CapacityLimiter`` as large as the pool.
- One dedicated listener thread per broker owns the single subscriber connection; no other thread
  ever touches it. The trio side sends it (un)subscribe requests through a thread-safe queue, which
  it applies between short socket polls, and it hands received messages back into trio in batches
  (one ``trio.from_thread.run_sync`` per batch) for the local fan-out.

The listener uses a bare ``redis.Connection`` rather than ``redis.client.PubSub``: PubSub reconnects
and resubscribes on its own inside ``get_message`` and hides replies, while this module needs to
see every SUBSCRIBE reply (that is what confirms ``Subscription.add``) and to own reconnection.

Redis channels are ``prefix + topic`` (UTF-8), so one Redis can serve other applications.

Behaviour worth knowing beyond ``vox.pubsub.base``:
- Order per topic holds for publishes that do not overlap in time (each awaited before the
  next), which is what one task publishing in sequence does; concurrent ``publish`` calls on one
  daemon run in different pool threads and have no defined order between them.
- ``Subscription.add`` returns once Redis confirmed the SUBSCRIBE: one poll interval (20 ms by
  default) plus a round trip at worst, and, while Redis is unreachable, not before it is back.
- Losing the subscriber connection loses whatever was published meanwhile, so every subscription
  with topics is cut as lagged (its owner resumes, as after an overflow); the listener reconnects
  with backoff and resubscribes every topic still needed, and ``ping`` fails until it has.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import trio

from vox.errors import BrokerError
from vox.pubsub.base import Message, Subscription
from vox.pubsub.fanout import Fanout, TopicHandle

log = logging.getLogger("vox.pubsub.redis")

_Confirm = Callable[[], None]

# Replies handed to trio in one call. Bounds how long one batch holds the event loop
# (batch x local subscribers offers) while still amortising the thread crossing under load.
# Also kept to a quarter of the subscription buffer: a batch lands in every buffer at once, and a
# burst larger than the buffer would cut even a subscriber that was waiting for it.
_MAX_BATCH = 128
# Channels per SUBSCRIBE command when resubscribing everything after a reconnect.
_SUBSCRIBE_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class _Request:
    subscribe: bool
    # (channel, topic, confirm); confirm is None for unsubscribe requests.
    items: tuple[tuple[bytes, str, _Confirm | None], ...]


class _Connection(Protocol):
    """The part of ``redis.Connection`` the listener uses (redis-py leaves these unannotated)."""

    def send_command(self, *args: Any) -> None: ...

    def can_read(self, timeout: float = 0) -> bool: ...

    def read_response(self) -> Any: ...

    def disconnect(self) -> None: ...


def redact_url(url: str) -> str:
    """The URL without its password, for logs and ``describe()``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***" if parts.username else ":***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Listener:
    """The subscriber connection's owner. ``run`` is the body of its dedicated thread; other
    threads only call ``request``, ``stop`` and read ``failure``."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        token: trio.lowlevel.TrioToken,
        broker: RedisBroker,
        *,
        poll_interval: float,
        health_interval: float,
        pong_timeout: float,
        backoff_min: float,
        backoff_max: float,
        max_batch: int,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._token = token
        self._broker = broker
        self._poll_interval = poll_interval
        self._health_interval = health_interval
        self._pong_timeout = pong_timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self.failure: BaseException | None = None
        # Everything below is touched by the listener thread only.
        self._wanted: dict[bytes, str] = {}  # subscribed (or to be) channel -> topic
        self._unsent: dict[bytes, list[_Confirm]] = {}  # need a SUBSCRIBE on this connection
        self._unsent_unsubscribe: set[bytes] = set()
        # One entry per SUBSCRIBE sent and not yet answered, oldest first: Redis answers every
        # channel of every SUBSCRIBE in order, so the n-th reply for a channel confirms the n-th send.
        self._inflight: dict[bytes, deque[list[_Confirm]]] = {}

    def request(self, req: _Request) -> None:
        self._requests.put(req)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except trio.RunFinishedError:
            pass  # trio is gone; nobody is left to deliver to
        except BaseException as exc:
            self.failure = exc

    def _run(self) -> None:
        delay = self._backoff_min
        first = True
        while not self._stopping.is_set():
            try:
                raw = self._pool.get_connection()
            except (redis.RedisError, OSError) as exc:
                if first:
                    raise BrokerError(f"cannot connect to Redis: {_error_text(exc)}") from exc
                log.debug("Redis reconnect failed", extra={"fields": {"error": _error_text(exc)}})
                self._stopping.wait(self._jitter(delay))
                delay = min(delay * 2, self._backoff_max)
                continue
            conn: _Connection = raw
            connected_at = time.monotonic()
            announced = False
            try:
                self._begin(conn)
                self._to_trio(self._broker._listener_connected, first, len(self._wanted))
                announced = True
                first = False
                self._serve(conn)
            except (redis.RedisError, OSError) as exc:
                if first:
                    raise BrokerError(f"cannot subscribe on Redis: {_error_text(exc)}") from exc
                if self._stopping.is_set():
                    break
                if announced:
                    self._to_trio(self._broker._listener_disconnected, _error_text(exc))
                else:
                    # Still down since the last loss, already reported: subscribers were cut then.
                    log.debug("Redis resubscribe failed", extra={"fields": {"error": _error_text(exc)}})
                if time.monotonic() - connected_at >= self._backoff_max:
                    delay = self._backoff_min
                else:
                    # A connection that keeps failing soon after it is made (a refused SUBSCRIBE, a
                    # flapping link) must not turn into a reconnect storm.
                    self._stopping.wait(self._jitter(delay))
                    delay = min(delay * 2, self._backoff_max)
            finally:
                conn.disconnect()
                self._pool.release(raw)

    def _jitter(self, delay: float) -> float:
        # Spreads the reconnects of many daemons after a shared Redis restarts; not security related.
        return delay * random.uniform(0.5, 1.0)  # noqa: S311

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def _begin(self, conn: _Connection) -> None:
        """Subscribe a fresh connection to every wanted channel."""
        self._drain_requests()
        # Replies to SUBSCRIBEs sent on a dead connection will never come: resend for their waiters.
        for channel, sends in self._inflight.items():
            if channel in self._wanted:
                waiting = self._unsent.setdefault(channel, [])
                for confirms in sends:
                    waiting.extend(confirms)
        self._inflight.clear()
        self._unsent_unsubscribe.clear()
        for channel in self._wanted:
            self._unsent.setdefault(channel, [])
        self._flush(conn)

    def _drain_requests(self) -> None:
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                return
            for channel, topic, confirm in req.items:
                if req.subscribe:
                    assert confirm is not None
                    self._wanted[channel] = topic
                    self._unsent_unsubscribe.discard(channel)
                    self._unsent.setdefault(channel, []).append(confirm)
                else:
                    # Confirms still unsent belong to a topic generation the fan-out has dropped.
                    self._wanted.pop(channel, None)
                    self._unsent.pop(channel, None)
                    self._unsent_unsubscribe.add(channel)

    def _flush(self, conn: _Connection) -> None:
        if self._unsent_unsubscribe:
            conn.send_command("UNSUBSCRIBE", *self._unsent_unsubscribe)
            self._unsent_unsubscribe.clear()
        if self._unsent:
            channels = list(self._unsent)
            for start in range(0, len(channels), _SUBSCRIBE_CHUNK):
                conn.send_command("SUBSCRIBE", *channels[start : start + _SUBSCRIBE_CHUNK])
            for channel, confirms in self._unsent.items():
                self._inflight.setdefault(channel, deque()).append(confirms)
            self._unsent.clear()

    def _serve(self, conn: _Connection) -> None:
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while not self._stopping.is_set():
            self._drain_requests()
            self._flush(conn)
            # The poll interval bounds both how long a request waits here and how long stop() takes.
            if conn.can_read(timeout=self._poll_interval):
                messages: list[Message] = []
                confirms: list[_Confirm] = []
                for _ in range(self._max_batch):
                    self._handle(conn.read_response(), messages, confirms)
                    if not conn.can_read(timeout=0):
                        break
                last_heard = time.monotonic()
                ping_sent = None
                if messages or confirms:
                    self._to_trio(self._broker._listener_batch, messages, confirms)
            # An idle connection can die silently (no FIN across a partition): probe it.
            now = time.monotonic()
            if ping_sent is not None:
                if now - ping_sent > self._pong_timeout:
                    raise redis.TimeoutError(f"no reply to PING within {self._pong_timeout}s")
            elif now - last_heard >= self._health_interval:
                conn.send_command("PING")
                ping_sent = now

    def _handle(self, reply: Any, messages: list[Message], confirms: list[_Confirm]) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return  # b"PONG" outside subscribed mode
        kind = reply[0]
        if kind == b"message":
            topic = self._wanted.get(reply[1])
            # Messages can still arrive for a channel between our UNSUBSCRIBE and its reply.
            if topic is not None:
                messages.append(Message(topic, reply[2]))
        elif kind == b"subscribe":
            sends = self._inflight.get(reply[1])
            if sends:
                confirms.extend(sends.popleft())
                if not sends:
                    del self._inflight[reply[1]]


class RedisBroker:
    """Use through ``open_redis_broker`` (or ``vox.pubsub.open_broker``), which runs ``run`` in a
    nursery; ``run`` owns the listener thread and reports started once Redis is connected."""

    def __init__(
        self,
        url: str,
        *,
        buffer_size: int = 1024,
        prefix: str = "vox:",
        publish_connections: int = 4,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        poll_interval: float = 0.02,
        health_interval: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        stop_timeout: float = 3.0,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._fanout = Fanout(buffer_size, upstream=self)
        self._limiter = trio.CapacityLimiter(publish_connections)
        instance = uuid.uuid4().hex[:8]
        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "socket_keepalive": True,
            # Payloads are bytes end to end; a decode_responses=true in the URL must not change that.
            "decode_responses": False,
        }
        self._publish_pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=publish_connections,
            timeout=socket_timeout,
            client_name=f"vox-publish-{instance}",
            **common,
        )
        self._client = redis.Redis(connection_pool=self._publish_pool)
        self._listen_pool = redis.ConnectionPool.from_url(
            # RESP2 keeps pub/sub replies ordinary arrays read in stream order with everything else.
            url,
            max_connections=1,
            protocol=2,
            client_name=f"vox-subscribe-{instance}",
            **common,
        )
        self._listener_options: dict[str, Any] = {
            "max_batch": max(1, min(_MAX_BATCH, buffer_size // 4)),
            "poll_interval": poll_interval,
            "health_interval": health_interval,
            "pong_timeout": socket_timeout,
            "backoff_min": backoff_min,
            "backoff_max": backoff_max,
        }
        self._stop_timeout = stop_timeout
        self._listener: _Listener | None = None
        self._connected = False
        # Set once the listener first connected (_ever_connected) or its thread ended before that.
        self._settled = trio.Event()
        self._ever_connected = False
        self._closed = False

    @property
    def fanout(self) -> Fanout:
        return self._fanout

    @property
    def prefix(self) -> str:
        return self._prefix

    def channel(self, topic: str) -> bytes:
        """The Redis channel that carries ``topic``."""
        return self._prefix_bytes + topic.encode()

    # -- Broker ---------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._closed:
            raise BrokerError("the broker is closed")
        try:
            await trio.to_thread.run_sync(
                self._client.publish, self.channel(topic), payload, limiter=self._limiter
            )
        except (redis.RedisError, OSError) as exc:
            raise BrokerError(f"Redis PUBLISH failed: {_error_text(exc)}") from exc

    def subscribe(self, topics: Iterable[str] = ()) -> AbstractAsyncContextManager[Subscription]:
        return self._fanout.subscribe(topics)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise BrokerError("the broker is closed")
        if not self._connected:
            # Commands may well work, but subscribers are not receiving: the broker is not healthy.
            raise BrokerError("the Redis subscriber connection is down; reconnecting")
        try:
            await trio.to_thread.run_sync(self._client.ping, limiter=self._limiter)
        except (redis.RedisError, OSError) as exc:
            raise BrokerError(f"Redis PING failed: {_error_text(exc)}") from exc

    def describe(self) -> str:
        return f"redis {redact_url(self._url)} prefix={self._prefix!r}"

    # -- Upstream (called by the fan-out on the trio thread) ------------------------------------

    def topics_started(self, handles: Sequence[TopicHandle]) -> None:
        if self._listener is None:
            raise BrokerError("the broker is not running")
        items = tuple((self.channel(h.topic), h.topic, h.confirm) for h in handles)
        self._listener.request(_Request(True, items))

    def topics_stopped(self, topics: Sequence[str]) -> None:
        if self._listener is None:
            return
        self._listener.request(_Request(False, tuple((self.channel(t), t, None) for t in topics)))

    # -- The listener's calls into trio ---------------------------------------------------------

    def _listener_connected(self, first: bool, topics: int) -> None:
        self._connected = True
        if first:
            self._ever_connected = True
            self._settled.set()
        else:
            log.info("Redis subscriber reconnected", extra={"fields": {"resubscribed": topics}})

    def _listener_disconnected(self, error: str) -> None:
        self._connected = False
        log.warning("Redis subscriber connection lost; reconnecting", extra={"fields": {"error": error}})
        # Whatever was published meanwhile is gone for good; owners must resume, as after an overflow.
        self._fanout.cut_all("the Redis connection was lost; messages may have been missed")

    def _listener_batch(self, messages: list[Message], confirms: list[_Confirm]) -> None:
        for confirm in confirms:
            confirm()
        self._fanout.deliver_many(messages)

    # -- Lifetime -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the listener thread, report started once Redis accepted the subscriber connection,
        and stop everything when cancelled. Raises BrokerError if the first connection fails or the
        listener dies."""
        if self._listener is not None:
            raise RuntimeError("RedisBroker.run() called twice")
        token = trio.lowlevel.current_trio_token()
        listener = _Listener(self._listen_pool, token, self, **self._listener_options)
        self._listener = listener
        finished = trio.Event()

        def on_thread_end() -> None:
            finished.set()
            self._settled.set()

        def thread_main() -> None:
            try:
                listener.run()
            finally:
                with suppress(trio.RunFinishedError):
                    token.run_sync_soon(on_thread_end)

        thread = threading.Thread(target=thread_main, name=f"vox-redis-listener {self._prefix}", daemon=True)
        try:
            thread.start()
            await self._settled.wait()
            if not self._ever_connected:
                raise self._listener_failure()
            task_status.started()
            await finished.wait()
            raise self._listener_failure()
        finally:
            self._closed = True
            self._connected = False
            listener.stop()
            with trio.CancelScope(shield=True), trio.move_on_after(self._stop_timeout):
                await finished.wait()
            if finished.is_set():
                # It signalled on its way out and has only to return: this join takes microseconds,
                # and it makes "no thread left running" true the moment the broker is closed.
                thread.join(timeout=1.0)
            else:
                log.error("Redis listener thread did not stop in time; abandoning it")
            self._fanout.close()
            self._publish_pool.disconnect()
            self._listen_pool.disconnect()

    def _listener_failure(self) -> BrokerError:
        failure = self._listener.failure if self._listener is not None else None
        if isinstance(failure, BrokerError):
            return failure
        error = BrokerError("the Redis listener thread stopped unexpectedly")
        error.__cause__ = failure
        return error


@asynccontextmanager
async def open_redis_broker(url: str, **options: Any) -> AsyncIterator[RedisBroker]:
    """Connect, yield the running broker, and on exit (cancellation included) stop its listener
    thread and close its connections. ``options`` are ``RedisBroker``'s keyword arguments."""
    broker = RedisBroker(url, **options)
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(broker.run)
        except BrokerError as exc:
            failure = exc
        else:
            try:
                yield broker
            except GeneratorExit:
                raise
            except BaseException as exc:
                # Raised again below, outside the nursery, so callers see their own exception
                # rather than an ExceptionGroup wrapping it.
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
