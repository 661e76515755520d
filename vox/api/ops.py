"""Operational routes: health, metrics, gateway discovery (protocol.md sections 0 and 11)."""

from __future__ import annotations

import logging
import time

import trio
from quart import Blueprint, Response

from vox.api import ctx
from vox.api.spec import documented
from vox.errors import VoxError
from vox.protocol.gateway import PROTOCOL_VERSION
from vox.services.federation import OutboxState

bp = Blueprint("ops", __name__)
log = logging.getLogger("vox.health")

HEALTH_TIMEOUT_S = 2.0


async def _check(name: str, probe: object) -> str:
    try:
        with trio.fail_after(HEALTH_TIMEOUT_S):
            await probe  # type: ignore[misc]
    except (VoxError, OSError, trio.TooSlowError) as exc:
        log.warning("health check failed", extra={"fields": {"component": name, "error": type(exc).__name__}})
        return "error"
    return "ok"


@bp.get("/healthz")
@documented("Health of the daemon and its backends", auth=False, ok=(200, 503))
async def healthz() -> tuple[dict[str, object], int]:
    c = ctx()
    storage = await _check("storage", c.store.ping())
    pubsub = await _check("pubsub", c.broker.ping())
    blobs = await _check("blobs", c.blobs.ping())
    healthy = storage == pubsub == blobs == "ok"
    body: dict[str, object] = {
        "status": "ok" if healthy else "degraded",
        "storage": storage,
        "pubsub": pubsub,
        "blobs": blobs,
        "storage_backend": c.store.engine.dialect,
        "pubsub_backend": "redis" if c.config.redis_url else "memory",
    }
    if c.federation is not None:
        # What the delivery worker last saw (no query here); a backlog is not ill health.
        body["federation_outbox"] = federation_outbox(c.federation.outbox_state, time.time_ns() // 1_000_000)
    return body, 200 if healthy else 503


def federation_outbox(state: OutboxState, now_ms: int) -> dict[str, object]:
    oldest = (now_ms - state.oldest_created_at) / 1000 if state.oldest_created_at else 0.0
    return {
        "pending": state.pending,
        "oldest_age_s": round(max(oldest, 0.0), 3),
        "checked_age_s": round((now_ms - state.checked_at) / 1000, 3) if state.checked_at else None,
    }


@bp.get("/metrics")
@documented("Prometheus metrics", auth=False, returns="text")
async def metrics() -> Response:
    return Response(ctx().metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/api/v1/gateway")
@documented("Where the gateway and media listeners are", auth=False)
async def gateway_info() -> dict[str, object]:
    c = ctx()
    addrs = c.addresses
    cfg = c.config
    gateway = cfg.public_gateway_url or (addrs.gateway_url if addrs else "")
    media = cfg.public_media_url or (addrs.media_url if addrs and addrs.media_url else None)
    return {"url": gateway, "media_url": media, "protocol_version": PROTOCOL_VERSION}
