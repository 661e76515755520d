"""Prometheus metrics owned by one daemon (its own registry, so two daemons in one process never mix)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class MediaSnapshot:
    connections: int = 0
    participants: int = 0
    received: int = 0
    forwarded: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    auth_failures: Mapping[str, int] = field(default_factory=dict)
    # (upper bound in seconds, cumulative count) per bucket, the last bound +Inf; and the sum.
    forward_delay: tuple[tuple[float, int], ...] = ()
    forward_delay_sum: float = 0.0


class MediaCollector(Collector):
    """The QUIC media counters, read at scrape time from plain ints the forwarding path keeps:
    a prometheus ``Counter.inc()`` per datagram would take a lock on the hot path."""

    def __init__(self) -> None:
        self.source: Callable[[], MediaSnapshot] | None = None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        data = self.source() if self.source is not None else MediaSnapshot()
        connections = GaugeMetricFamily("vox_media_connections", "Open QUIC media connections.")
        connections.add_metric([], data.connections)
        yield connections
        participants = GaugeMetricFamily(
            "vox_media_participants", "Participants in voice rooms over the QUIC media transport."
        )
        participants.add_metric([], data.participants)
        yield participants
        received = CounterMetricFamily(
            "vox_media_datagrams_received", "Media datagrams received from authenticated QUIC connections."
        )
        received.add_metric([], data.received)
        yield received
        forwarded = CounterMetricFamily(
            "vox_media_datagrams_forwarded", "Media datagrams forwarded (one per receiver)."
        )
        forwarded.add_metric([], data.forwarded)
        yield forwarded
        dropped = CounterMetricFamily(
            "vox_media_datagrams_dropped", "Media datagrams dropped, by reason.", labels=["reason"]
        )
        for reason, count in sorted(data.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        refused = CounterMetricFamily(
            "vox_media_auth_failures",
            "QUIC media connections refused or closed before or at authentication, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(data.auth_failures.items()):
            refused.add_metric([reason], count)
        yield refused
        if data.forward_delay:
            delay = HistogramMetricFamily(
                "vox_media_forward_delay_seconds",
                "Time from reading a batch of datagrams off the socket to sending what they made for "
                "each receiver (once per receiver and batch, weighted by its datagrams).",
            )
            buckets = [("+Inf" if math.isinf(b) else repr(b), c) for b, c in data.forward_delay]
            delay.add_metric([], buckets, data.forward_delay_sum)
            yield delay

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "vox_http_requests_total",
            "REST requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "vox_http_request_duration_seconds",
            "REST request latency by method and route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.gateway_connections = Gauge(
            "vox_gateway_connections", "Open gateway WebSocket connections.", registry=self.registry
        )
        self.gateway_events_sent = Counter(
            "vox_gateway_events_sent_total",
            "Server frames written to gateway clients.",
            registry=self.registry,
        )
        self.gateway_closes = Counter(
            "vox_gateway_closes_total",
            "Gateway connections closed, by close code.",
            ["code"],
            registry=self.registry,
        )
        self.voice_abandoned_peers = Counter(
            "vox_voice_abandoned_peers_total",
            "WebRTC peer connections that did not close within voice_close_timeout_s and were abandoned.",
            registry=self.registry,
        )
        self.voice_peers = Gauge("vox_voice_peers", "WebRTC peers in voice rooms.", registry=self.registry)
        self.voice_loop_tasks = Gauge(
            "vox_voice_asyncio_tasks",
            "asyncio tasks alive on the SFU's trio_asyncio loop.",
            registry=self.registry,
        )
        self.voice_forwarded = Gauge(
            "vox_voice_forwarded_frames",
            "Encoded media frames handed to outbound WebRTC tracks since start (one per receiver).",
            registry=self.registry,
        )

        # Federation (docs/federation.md): labelled by peer domain, a bounded set (verified peers).
        self.federation_outbox_pending = Gauge(
            "vox_federation_outbox_pending",
            "Outbox rows waiting for delivery, by destination (as the delivery worker last saw them).",
            ["destination"],
            registry=self.registry,
        )
        self.federation_deliveries = Counter(
            "vox_federation_deliveries_total",
            "Outbox rows a peer acknowledged (processed or finally refused), by destination.",
            ["destination"],
            registry=self.registry,
        )
        self.federation_delivery_failures = Counter(
            "vox_federation_delivery_failures_total",
            "Delivery attempts that left rows queued for a retry, by destination.",
            ["destination"],
            registry=self.registry,
        )
        self.federation_inbox_items = Counter(
            "vox_federation_inbox_items_total",
            "Inbox deliveries received, by origin and outcome "
            "(ok, duplicate, refused, unknown_kind, failed, in_progress).",
            ["origin", "outcome"],
            registry=self.registry,
        )

        self.media = MediaCollector()
        self.registry.register(self.media)

    def render(self) -> bytes:
        return generate_latest(self.registry)
