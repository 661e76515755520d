"""Server administration (protocol.md section 10): system admins with an elevated session.

Elevation is sudo-style: ``elevate`` re-checks the password (and the TOTP code when MFA is on)
and marks the *login session* elevated for ``elevation_s`` (15 minutes by default); another
session of the same admin is not elevated. Every other admin operation first requires a system
admin (403 ``forbidden``) and then a live elevation (403 ``elevation_required``), before any data
is read. Every change is audited in its own transaction (vox.storage.admin) and announced to
elevated admins as an ``admin_event``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from vox.config import Config, cors_origin_set
from vox.errors import Forbidden, NotFound, ValidationError
from vox.pubsub import Broker
from vox.services.admin_events import publish_admin_event
from vox.services.auth import POLICIES, AuthService, Identity, session_revoked_event
from vox.services.guild_events import user_topic
from vox.services.timefmt import iso
from vox.storage.admin import AdminStore
from vox.storage.base import Row

__all__ = ["AdminService", "ElevationRequired", "admin_user_object"]

log = logging.getLogger("vox.admin")


class ElevationRequired(Forbidden):
    code = "elevation_required"


def admin_user_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "display_name": row["display_name"],
        "avatar": row["avatar"],
        "is_admin": bool(row["is_admin"]),
        "created_at": iso(row["created_at"]),
        "email": row["email"],
        "auth_method": row["auth_method"],
        "mfa_enabled": bool(row["mfa_enabled"]),
        "disabled": bool(row["disabled"]),
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


class AdminService:
    def __init__(
        self, store: AdminStore, auth: AuthService, broker: Broker, config: Config, *, elevation_s: float
    ) -> None:
        self.store = store
        self.auth = auth
        self.broker = broker
        self.config = config
        self.elevation_ms = int(elevation_s * 1000)

    # -- guards -----------------------------------------------------------------------------
    async def require_admin(self, who: Identity) -> None:
        if not await self.store.is_admin(who.user_id):
            raise Forbidden("only system admins may do this")

    async def require_elevated(self, who: Identity) -> int:
        """Epoch ms until which the caller's session stays elevated; 403 unless it is now."""
        await self.require_admin(who)
        until = await self.store.elevated_until(who.session_id)
        if until is None or until <= _now_ms():
            raise ElevationRequired("re-authenticate with POST /api/v1/admin/elevate first")
        return until

    async def elevate(self, who: Identity, password: str, code: str | None, ip: str | None) -> dict[str, Any]:
        await self.require_admin(who)
        await self.auth.reauthenticate(who.user_id, password, code)
        until = _now_ms() + self.elevation_ms
        await self.store.elevate(who.user_id, who.session_id, until, ip)
        log.info("admin session elevated", extra={"fields": {"user_id": who.user_id}})
        return {"elevated_until": iso(until)}

    # -- users ------------------------------------------------------------------------------
    async def users(self, limit: int, after: str | None, query: str | None) -> list[dict[str, Any]]:
        return [admin_user_object(r) for r in await self.store.users(limit, after, query)]

    async def set_disabled(
        self, who: Identity, user_id: str, disabled: bool, ip: str | None
    ) -> dict[str, Any]:
        if disabled and user_id == who.user_id:
            raise ValidationError("you cannot disable your own account", {"user_id": "yourself"})
        result = await self.store.set_disabled(who.user_id, user_id, disabled, ip)
        if result is None:
            raise NotFound("user not found")
        # Each live gateway connection of those sessions closes (4004) on every daemon.
        for session_id in result.revoked_sessions:
            await self.broker.publish(user_topic(user_id), session_revoked_event(session_id))
        log.info(
            "user disabled" if disabled else "user enabled",
            extra={"fields": {"user_id": user_id, "by": who.user_id}},
        )
        await publish_admin_event(
            self.broker,
            "user_disabled" if disabled else "user_enabled",
            actor_id=who.user_id,
            target_type="user",
            target_id=user_id,
            details={"username": result.user["username"]},
        )
        return admin_user_object(result.user)

    # -- guilds -----------------------------------------------------------------------------
    async def guilds(self, limit: int, after: str | None) -> list[dict[str, Any]]:
        return [
            {
                "id": r["id"],
                "name": r["name"],
                "owner_id": r["owner_id"],
                "icon": r["icon"],
                "member_count": int(r["member_count"]),
                "created_at": iso(r["created_at"]),
            }
            for r in await self.store.guilds(limit, after)
        ]

    # -- settings ---------------------------------------------------------------------------
    async def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "registration_policy": await self.auth.registration_policy(),
            # Limits come from the configuration (see docs/operations.md); shown, not editable.
            "limits": {
                "max_guilds": c.max_guilds,
                "max_request_bytes": c.max_request_bytes,
                "max_upload_bytes": c.max_upload_bytes,
                "max_gateway_connections": c.max_gateway_connections,
                "max_one_time_keys": c.max_one_time_keys,
                "voice_room_limit": c.voice_room_limit,
                "max_connections": c.max_connections,
                "max_connections_per_ip": c.max_connections_per_ip,
                "http_header_timeout_s": c.http_header_timeout_s,
                "http_body_timeout_s": c.http_body_timeout_s,
                "http_keepalive_timeout_s": c.http_keepalive_timeout_s,
                "ws_handshake_timeout_s": c.ws_handshake_timeout_s,
                "gateway_identify_timeout_s": c.gateway_identify_timeout_s,
                "gateway_queue_frames": c.gateway_queue_frames,
                "gateway_queue_bytes": c.gateway_queue_bytes,
            },
            # Whether TLS is on, never which files serve it: key paths are not an admin's business
            # in a browser, and their contents never leave the daemon.
            "transport": {
                "tls": bool(c.tls_cert or c.tls_self_signed),
                "cors_origins": sorted(cors_origin_set(c.cors_origins)),
            },
            "storage": {"sqlite_synchronous": c.sqlite_synchronous},
        }

    async def update_settings(self, who: Identity, changes: dict[str, Any], ip: str | None) -> dict[str, Any]:
        policy = changes.get("registration_policy")
        if policy is not None and policy not in POLICIES:
            raise ValidationError("unknown registration_policy", {"registration_policy": "unknown value"})
        if changes:
            await self.store.update_settings(who.user_id, changes, ip)
            await publish_admin_event(
                self.broker,
                "settings_updated",
                actor_id=who.user_id,
                target_type="settings",
                target_id=None,
                details=changes,
            )
        return await self.settings()

    # -- audit log --------------------------------------------------------------------------
    async def audit_log(
        self,
        limit: int,
        before: str | None,
        *,
        action: str | None,
        actor_id: str | None,
        guild_id: str | None,
    ) -> list[dict[str, Any]]:
        rows = await self.store.audit_log(limit, before, action=action, actor_id=actor_id, guild_id=guild_id)
        return [
            {
                "id": r["id"],
                "actor_id": r["actor_id"],
                "action": r["action"],
                "target_type": r["target_type"],
                "target_id": r["target_id"],
                "guild_id": r["guild_id"],
                "details": msgspec.json.decode(r["details"]) if r["details"] else {},
                "ip": r["ip"],
                "created_at": iso(r["created_at"]),
            }
            for r in rows
        ]
