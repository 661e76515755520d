"""One log line per failed TLS handshake, with the client address, rate-limited.

A failed handshake (plaintext sent to a TLS port, an old protocol version, a client that does not
trust the certificate) is worth one info line naming the listener, the client address and
OpenSSL's reason, never a traceback. A scanner or a misconfigured client retrying in a loop
would otherwise write a line per attempt, so each listener keeps token buckets: ``BURST`` lines
per address and then one every ``1 / PER_ADDRESS_RATE`` seconds, and at most ``LISTENER_BURST`` then
``LISTENER_RATE`` per second for the listener as a whole (addresses can be many). What is held
back is counted (``suppressed``, per listener) and reported per address as ``suppressed`` on
that address's next line.

Each listener of a daemon owns its ``HandshakeFailures`` (REST: the guard of vox.transports.
http_guard; gateway: vox.transports.ws_guard), so two daemons in one process never share buckets.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HandshakeFailures", "TokenBucket", "failure_reason"]

log = logging.getLogger("vox.tls")

BURST = 3
PER_ADDRESS_RATE = 1 / 30
LISTENER_BURST = 50
LISTENER_RATE = 5.0
# Addresses remembered per listener; a full bucket is forgotten first (it is the same as none).
MAX_TRACKED = 4096


@dataclass
class TokenBucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    updated: float
    held: int = 0  # takes refused since the last one granted

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.held += 1
        return False


def failure_reason(exc: BaseException) -> str | None:
    """OpenSSL's reason when ``exc`` (trio's BrokenResourceError, or the SSLError itself) comes
    from a failed TLS handshake; None when the peer simply went away."""
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if not isinstance(cause, ssl.SSLError):
        return None
    return str(cause.reason or cause.__class__.__name__)


class HandshakeFailures:
    """The handshake-failure log of one listener."""

    def __init__(self, listener: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.listener = listener
        self._clock = clock
        self._total = TokenBucket(LISTENER_BURST, LISTENER_RATE, LISTENER_BURST, clock())
        self._by_address: dict[str, TokenBucket] = {}
        self.suppressed = 0

    def failed(self, address: str | None, reason: str) -> bool:
        """Log one failure from ``address``; False when the rate limit held it back."""
        now = self._clock()
        key = address or "?"
        bucket = self._by_address.get(key)
        if bucket is None:
            self._forget_full(now)
            bucket = self._by_address[key] = TokenBucket(BURST, PER_ADDRESS_RATE, BURST, now)
        if not bucket.take(now):
            self.suppressed += 1
            return False
        if not self._total.take(now):
            bucket.held += 1  # this address's line was due; it is the listener that is busy
            self.suppressed += 1
            return False
        fields: dict[str, object] = {"listener": self.listener, "client": key, "reason": reason}
        if bucket.held:
            fields["suppressed"] = bucket.held  # this address's lines held back since its last
            bucket.held = 0
        log.info("tls handshake failed", extra={"fields": fields})
        return True

    def _forget_full(self, now: float) -> None:
        if len(self._by_address) < MAX_TRACKED:
            return
        for key, bucket in list(self._by_address.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.capacity:
                del self._by_address[key]
        if len(self._by_address) >= MAX_TRACKED:
            # Every tracked address is still throttled: forget the oldest half rather than grow.
            for key in list(self._by_address)[: MAX_TRACKED // 2]:
                del self._by_address[key]
