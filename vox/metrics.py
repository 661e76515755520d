"""Prometheus metrics owned by one daemon (its own registry, so two daemons in one process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
