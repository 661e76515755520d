"""Operational routes: health, metrics, gateway discovery (protocol.md sections 0 and 11)."""

from __future__ import annotations

import logging

import trio
from quart import Blueprint, Response

from vox.api import ctx
from vox.api.spec import documented
from vox.errors import VoxError
from vox.protocol.gateway import PROTOCOL_VERSION

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
async def healthz() -> tuple[dict[str, str], int]:
    c = ctx()
    storage = await _check("storage", c.store.ping())
    pubsub = await _check("pubsub", c.broker.ping())
    blobs = await _check("blobs", c.blobs.ping())
    healthy = storage == pubsub == blobs == "ok"
    body = {
        "status": "ok" if healthy else "degraded",
        "storage": storage,
        "pubsub": pubsub,
        "blobs": blobs,
        "storage_backend": c.store.engine.dialect,
        "pubsub_backend": "redis" if c.config.redis_url else "memory",
    }
    return body, 200 if healthy else 503


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
