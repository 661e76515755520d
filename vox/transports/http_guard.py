"""REST connections: admission by the connection limits, and deadlines for slow clients.

hypercorn's trio worker bounds only the idle time between requests (``keep_alive_timeout``, which
also covers a connection that never sends anything) and never bounds a socket write. This adds,
per TCP connection:

- admission (vox.transports.limits): over ``max_connections`` or ``max_connections_per_ip`` the
  request (head) is read for at most the header timeout and answered with 503 ``server_full``,
  over HTTP/1.1 or h2 (vox.transports.refusal); a flood beyond the refusals in progress is closed
  at once;
- the TLS handshake, completed before hypercorn sees the connection, so a failure is logged with
  the client address (vox.transports.tls_failures);
- a header deadline: a complete request head within ``http_header_timeout_s`` of connecting, or
  of the first byte after an idle keep-alive period, so dribbling a head byte by byte does not
  keep a connection;
- the keep-alive deadline between requests (``http_keepalive_timeout_s``);
- a write deadline: a response write that makes no progress for ``http_body_timeout_s`` (a client
  that stopped reading) breaks the connection instead of holding it forever.

The request body has its own deadline in the ASGI layer (vox.transports.body_deadline), where a
408 can still be answered. A connection that misses a deadline is closed without a response.

``GuardedTCPServer`` extends the write-coalescing server (vox.transports.http_writes); the settings
reach it through the hypercorn config object of one daemon (``configure``), never a global.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, cast

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Updated
from hypercorn.trio import run as hypercorn_run

from vox.transports import http_writes
from vox.transports.http_headers import HeaderPolicy
from vox.transports.limits import ListenerLimits, Verdict, peer_ip
from vox.transports.refusal import refuse
from vox.transports.tls import finish_handshake
from vox.transports.tls_failures import HandshakeFailures

if TYPE_CHECKING:
    from vox.context import Context

__all__ = ["GuardedStream", "GuardedTCPServer", "RestGuard", "configure", "install"]

_GUARD_ATTR = "vox_guard"
# A response write must move this much within the body timeout (a client at 2 KB/s keeps up).
_WRITE_PIECE = 64 * 1024


@dataclass(frozen=True)
class RestGuard:
    """What one daemon's REST listener enforces per connection."""

    limits: ListenerLimits
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    headers: HeaderPolicy  # the refusal carries the listener's security headers
    handshakes: HandshakeFailures  # this listener's TLS handshake-failure log


def configure(cfg: HyperConfig, ctx: Context, headers: HeaderPolicy) -> RestGuard:
    """Put the REST limits and timeouts of ``ctx.config`` on a hypercorn config; ``headers`` is
    the listener's policy, for the answers written here rather than by the app."""
    c = ctx.config
    guard = RestGuard(
        limits=ctx.connections.listener("rest", total=c.max_connections, per_ip=c.max_connections_per_ip),
        header_timeout_s=c.http_header_timeout_s,
        body_timeout_s=c.http_body_timeout_s,
        keepalive_timeout_s=c.http_keepalive_timeout_s,
        headers=headers,
        handshakes=HandshakeFailures("rest"),
    )
    ctx.connections.export_to(ctx.metrics.registry)
    # hypercorn's idle timer stays as the fallback should the guard not be installed.
    cfg.keep_alive_timeout = c.http_keepalive_timeout_s
    # With TLS the handshake comes before any read this guard sees (hypercorn's default is 60 s).
    cfg.ssl_handshake_timeout = c.http_header_timeout_s
    # Connections are refused by the limits, not by a kernel queue overflowing under a burst.
    cfg.backlog = max(cfg.backlog, 1024)
    # No "server: hypercorn-h11" banner: the software behind the API is not the client's business.
    cfg.include_server_header = False
    setattr(cfg, _GUARD_ATTR, guard)
    return guard


class _Phase(enum.Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    IDLE = "idle"  # between requests on a kept-alive connection
    REQUEST = "request"  # a request is being handled; its body has the ASGI layer's deadline


class GuardedStream:
    """The connection's stream with read deadlines by phase and a deadline on every write.

    hypercorn only calls ``receive_some``, ``send_all``, ``send_eof`` and ``aclose`` (and, for
    TLS, the SSLStream members, which are passed through); a missed read deadline raises
    ``trio.TooSlowError``, which hypercorn treats as the client going away.
    """

    def __init__(self, inner: Any, guard: RestGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._phase = _Phase.HEAD
        self._deadline = trio.current_time() + guard.header_timeout_s
        # The wait in progress: a phase change moves its deadline (the reader is usually already
        # waiting when a response completes and the connection goes idle).
        self._waiting: trio.CancelScope | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _set_deadline(self, phase: _Phase, deadline: float) -> None:
        self._phase = phase
        self._deadline = deadline
        if self._waiting is not None:
            self._waiting.deadline = deadline

    def request_started(self) -> None:
        self._set_deadline(_Phase.REQUEST, math.inf)

    def went_idle(self) -> None:
        self._set_deadline(_Phase.IDLE, trio.current_time() + self._guard.keepalive_timeout_s)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        waiting = self._waiting = trio.CancelScope(deadline=self._deadline)
        data: bytes | bytearray = b""
        try:
            with waiting:
                data = await self._inner.receive_some(max_bytes)
        finally:
            self._waiting = None
        if waiting.cancelled_caught:
            raise trio.TooSlowError
        if data and self._phase is _Phase.IDLE:
            # The next request has begun: from here its head has the header timeout.
            self._phase = _Phase.HEAD
            self._deadline = trio.current_time() + self._guard.header_timeout_s
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # The deadline is per piece, so it measures progress: a slow but reading client gets a
        # large response however long it takes. hypercorn shields its writes from cancellation;
        # a scope's own deadline still applies inside the shield.
        view = memoryview(data)
        for start in range(0, max(len(view), 1), _WRITE_PIECE):
            with trio.move_on_after(self._guard.body_timeout_s) as waited:
                await self._inner.send_all(view[start : start + _WRITE_PIECE])
            if waited.cancelled_caught:
                await trio.aclose_forcefully(self._inner)
                raise trio.BrokenResourceError("the client did not read the response")

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class GuardedTCPServer(http_writes.CoalescingTCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw = self.stream
        found = getattr(self.config, _GUARD_ATTR, None)
        self._guard = found if isinstance(found, RestGuard) else None
        self._guarded: GuardedStream | None = None
        self._reading_done = False
        if self._guard is not None:
            self._guarded = GuardedStream(self._raw, self._guard)
            self.stream = cast(Any, self._guarded)  # duck-typed: hypercorn uses four methods

    async def run(self) -> None:
        if self._guard is None:
            await super().run()
            return
        ip = peer_ip(self._raw)
        if ip is None:  # gone before it was served
            await trio.aclose_forcefully(self._raw)
            return
        guard = self._guard
        with guard.limits.hold(ip) as admission:
            if admission.verdict is Verdict.DROP:
                await trio.aclose_forcefully(self._raw)
                return
            # Here rather than in hypercorn, which would do it silently: a failure is logged with
            # the client address, and a refusal needs the protocol ALPN chose. hypercorn's own
            # call then finds the handshake done.
            timeout = self.config.ssl_handshake_timeout
            if not await finish_handshake(self._raw, timeout, failures=guard.handshakes, peer=ip):
                return
            if admission.verdict is Verdict.ADMIT:
                await super().run()
            else:
                await refuse(self._raw, guard.headers, guard.header_timeout_s)

    async def _read_data(self) -> None:
        await super()._read_data()
        # Reading ended (the client left or missed a deadline). hypercorn would still wait for
        # its keep-alive timer before closing the socket; nothing is left to wait for. A timer
        # (re)started after this point returns at once (see _idle_timeout).
        self._reading_done = True
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        if self._reading_done:
            return
        await super()._idle_timeout()

    async def protocol_send(self, event: Any) -> None:
        if self._guarded is not None and isinstance(event, Updated):
            if event.idle:
                self._guarded.went_idle()
            else:
                self._guarded.request_started()
        await super().protocol_send(event)


def install() -> bool:
    """Serve hypercorn connections with ``GuardedTCPServer`` (which also coalesces writes); False
    when the installed hypercorn is not the version this was written for. Then only hypercorn's
    own keep-alive timeout (set by ``configure``) bounds silent connections."""
    found = version("hypercorn")
    if found not in http_writes.WRITTEN_FOR:
        return http_writes.install()
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined]
    return True
