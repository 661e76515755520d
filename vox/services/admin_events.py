"""``admin_event``s: what elevated admins watching the gateway (``admin_subscribe``) are told.

Published on the ``admin:events`` topic through the Broker, so an event raised on one daemon
reaches admins connected to any daemon of the deployment. Called after the change committed; a
broker failure is logged, not raised (the change stands).
"""

from __future__ import annotations

from typing import Any

from vox.pubsub import Broker
from vox.services.publish import publish_event
from vox.services.timefmt import iso
from vox.storage.accounts import now_ms

__all__ = ["ADMIN_TOPIC", "KINDS", "publish_admin_event"]

ADMIN_TOPIC = "admin:events"

KINDS = frozenset(
    {
        "user_registered",
        "user_disabled",
        "user_enabled",
        "guild_ban",
        "settings_updated",
        "oidc_provider_created",
        "oidc_provider_updated",
        "oidc_provider_deleted",
    }
)


async def publish_admin_event(
    broker: Broker,
    kind: str,
    *,
    actor_id: str | None,
    target_type: str | None,
    target_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    assert kind in KINDS
    d = {
        "kind": kind,
        "actor_id": actor_id,
        "target_type": target_type,
        "target_id": target_id,
        "details": details or {},
        "created_at": iso(now_ms()),
    }
    await publish_event(broker, (ADMIN_TOPIC,), "admin_event", d)
