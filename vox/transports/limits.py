"""How many TCP connections each listener holds, in total and per client address.

One ``ConnectionLimits`` per daemon (it lives in the Context) keeps a tally for every listener that
registered with it (REST, gateway). A connection is counted from accept until its socket closes,
so sockets that never send a byte count too: that is exactly what an abusive client holds.

Admission has three outcomes:

- ``ADMIT``: under both the total and the per-address limit; counted.
- ``REFUSE``: over a limit; the connection is answered politely (REST: 503 ``server_full``, the
  gateway: handshake then close 4012) so a well-behaved client learns to back off. At most
  ``REFUSING_MAX`` refusals per listener are in progress at once; each one lasts at most a header
  or handshake timeout.
- ``DROP``: over a limit while that many refusals are already under way; the socket is closed at
  once, so a flood cannot hold more file descriptors than the limits plus the refusals.

Sans-IO: the listeners call ``admit`` and ``release``; nothing here waits or touches a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["REFUSING_MAX", "Admission", "ConnectionLimits", "ListenerLimits", "Verdict", "peer_ip"]

# Polite refusals in progress per listener; beyond it a refused socket is closed at once.
REFUSING_MAX = 128


def peer_ip(stream: trio.abc.Stream) -> str | None:
    """The client address of an accepted TCP (or TLS over TCP) stream; None once it is gone."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    if sock is None:
        return None
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


class Verdict(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"
    DROP = "drop"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    reason: str  # "" when admitted, else "per_ip" or "total"


class ListenerLimits:
    """The tally of one listener: open connections, per address, and refusals under way."""

    def __init__(self, name: str, *, total: int, per_ip: int) -> None:
        if total < 1 or per_ip < 1:
            raise ValueError("connection limits must be at least 1")
        self.name = name
        self.total = total
        self.per_ip = per_ip
        self.open = 0
        self.refusing = 0
        self._by_ip: dict[str, int] = {}
        self.refused: dict[str, int] = {"per_ip": 0, "total": 0, "dropped": 0}

    def from_ip(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)

    def admit(self, ip: str) -> Admission:
        held = self._by_ip.get(ip, 0)
        if self.open < self.total and held < self.per_ip:
            self.open += 1
            self._by_ip[ip] = held + 1
            return Admission(Verdict.ADMIT, "")
        reason = "total" if self.open >= self.total else "per_ip"
        if self.refusing >= REFUSING_MAX:
            self.refused["dropped"] += 1
            return Admission(Verdict.DROP, reason)
        self.refusing += 1
        self.refused[reason] += 1
        return Admission(Verdict.REFUSE, reason)

    def release(self, ip: str, admission: Admission) -> None:
        if admission.verdict is Verdict.REFUSE:
            self.refusing -= 1
        elif admission.verdict is Verdict.ADMIT:
            self.open -= 1
            left = self._by_ip[ip] - 1
            if left:
                self._by_ip[ip] = left
            else:
                del self._by_ip[ip]  # the table only holds addresses with an open connection

    @contextmanager
    def hold(self, ip: str) -> Iterator[Admission]:
        """Admit one connection from ``ip`` for the duration of the block."""
        admission = self.admit(ip)
        try:
            yield admission
        finally:
            self.release(ip, admission)


class ConnectionLimits:
    """Every listener's tally, for one daemon; also exported as Prometheus metrics."""

    def __init__(self) -> None:
        self.listeners: dict[str, ListenerLimits] = {}
        self._registries: set[int] = set()

    def listener(self, name: str, *, total: int, per_ip: int) -> ListenerLimits:
        """The tally of listener ``name``, created on first use (a restart of the listener in the
        same daemon keeps counting where it was)."""
        found = self.listeners.get(name)
        if found is None:
            found = self.listeners[name] = ListenerLimits(name, total=total, per_ip=per_ip)
        return found

    def export_to(self, registry: CollectorRegistry) -> None:
        """Serve the tallies from ``registry`` (once per registry, whoever asks first)."""
        if id(registry) not in self._registries:
            self._registries.add(id(registry))
            registry.register(_LimitsCollector(self))


class _LimitsCollector(Collector):
    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        open_ = GaugeMetricFamily(
            "vox_connections", "Open TCP connections admitted, by listener.", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "vox_connections_refused",
            "TCP connections refused (per_ip, total) or closed at once (dropped), by listener.",
            labels=["listener", "reason"],
        )
        for name, tally in sorted(self.limits.listeners.items()):
            open_.add_metric([name], tally.open)
            for reason, count in sorted(tally.refused.items()):
                refused.add_metric([name, reason], count)
        yield open_
        yield refused

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
