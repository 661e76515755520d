"""Leaving, kicks, bans and timeouts, and the guild's audit log.

Moderating someone needs the bit and rank: nobody moderates the owner or themselves, and a
non-owner only moderates members whose highest role is strictly below their own. Every action
is written to the audit log in the same transaction as the change (vox.storage.guilds).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import msgspec

from vox.errors import Conflict, Forbidden, NotFound, ValidationError
from vox.protocol.permissions import Permission
from vox.services.admin_events import publish_admin_event
from vox.services.guild_events import GuildEvents
from vox.services.guild_objects import member_object
from vox.services.permissions import MemberAccess, PermissionService, require, valid_id
from vox.services.timefmt import iso
from vox.services.users import public_user
from vox.storage.guilds import Guilds

__all__ = ["MAX_TIMEOUT", "ModerationService"]

log = logging.getLogger("vox.moderation")

MAX_TIMEOUT = dt.timedelta(days=28)


class ModerationService:
    def __init__(self, guilds: Guilds, permissions: PermissionService, events: GuildEvents) -> None:
        self.guilds = guilds
        self.permissions = permissions
        self.events = events

    async def _target(self, access: MemberAccess, target_id: str, verb: str) -> MemberAccess:
        if target_id == access.user_id:
            raise ValidationError(f"you cannot {verb} yourself", {"user_id": f"cannot {verb} yourself"})
        target = await self.permissions.target_access(access.guild_id, target_id)
        if target is None:
            raise NotFound("member not found")
        if not access.outranks(target):
            raise Forbidden(
                f"role hierarchy: you cannot {verb} a member whose highest role is not below yours"
            )
        return target

    async def remove_member(self, user_id: str, guild_id: str, target_id: str) -> None:
        """Leave when ``target_id`` is the caller, else kick (KICK_MEMBERS)."""
        access = await self.permissions.member_access(user_id, guild_id)
        if target_id == user_id:
            if access.is_owner:
                raise Conflict("the owner cannot leave the guild; delete it instead")
            left = await self.guilds.remove_member(guild_id, user_id, user_id, None)
            if left is not None:
                await self.events.member_left(
                    guild_id, member_object(left, self.permissions.clock()), "leave"
                )
            return
        require(access.permissions(), Permission.KICK_MEMBERS)
        await self._target(access, target_id, "kick")
        kicked = await self.guilds.remove_member(guild_id, target_id, user_id, "member_kick")
        if kicked is None:
            raise NotFound("member not found")
        log.info(
            "member kicked", extra={"fields": {"guild_id": guild_id, "user_id": target_id, "by": user_id}}
        )
        await self.events.member_left(guild_id, member_object(kicked, self.permissions.clock()), "kick")

    async def ban(self, user_id: str, guild_id: str, target_id: str, reason: str | None) -> None:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.BAN_MEMBERS)
        if not valid_id(target_id):
            raise NotFound("user not found")
        if target_id == user_id:
            raise ValidationError("you cannot ban yourself", {"user_id": "cannot ban yourself"})
        if await self.permissions.target_access(guild_id, target_id) is not None:
            await self._target(access, target_id, "ban")
        removed = await self.guilds.ban(guild_id, target_id, user_id, reason)
        log.info("user banned", extra={"fields": {"guild_id": guild_id, "user_id": target_id, "by": user_id}})
        await publish_admin_event(
            self.events.broker,
            "guild_ban",
            actor_id=user_id,
            target_type="user",
            target_id=target_id,
            details={"guild_id": guild_id, "reason": reason},
        )
        if removed is not None:
            await self.events.member_left(guild_id, member_object(removed, self.permissions.clock()), "ban")

    async def unban(self, user_id: str, guild_id: str, target_id: str) -> None:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.BAN_MEMBERS)
        if not valid_id(target_id) or not await self.guilds.unban(guild_id, target_id, user_id):
            raise NotFound("ban not found")

    async def bans(self, user_id: str, guild_id: str) -> list[dict[str, Any]]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.BAN_MEMBERS)
        return [
            {
                "user": public_user(r),
                "reason": r["reason"],
                "banned_by": r["banned_by"],
                "created_at": iso(r["banned_at"]),
            }
            for r in await self.guilds.bans(guild_id)
        ]

    async def timeout(
        self, user_id: str, guild_id: str, target_id: str, until: dt.datetime | None
    ) -> dict[str, Any]:
        """Time the member out until ``until`` (aware, in the future, at most 28 days ahead), or
        clear their timeout with None."""
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.TIMEOUT_MEMBERS)
        await self._target(access, target_id, "time out")
        until_ms: int | None = None
        if until is not None:
            if until.tzinfo is None or until.utcoffset() is None:
                raise ValidationError("until needs a time zone (RFC 3339)", {"until": "missing time zone"})
            until_ms = int(until.timestamp() * 1000)
            now = self.permissions.clock()
            if until_ms <= now:
                raise ValidationError("until must be in the future", {"until": "must be in the future"})
            if until_ms > now + int(MAX_TIMEOUT.total_seconds() * 1000):
                raise ValidationError("a timeout lasts at most 28 days", {"until": "at most 28 days ahead"})
        row = await self.guilds.set_timeout(guild_id, target_id, until_ms, user_id)
        if row is None:
            raise NotFound("member not found")
        member = member_object(row, self.permissions.clock())
        await self.events.member_updated(guild_id, member)
        return member

    async def audit_log(
        self, user_id: str, guild_id: str, limit: int, before: str | None
    ) -> list[dict[str, Any]]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.VIEW_AUDIT_LOG)
        if before is not None and not valid_id(before):
            return []
        return [
            {
                "id": r["id"],
                "actor_id": r["actor_id"],
                "action": r["action"],
                "target_type": r["target_type"],
                "target_id": r["target_id"],
                "details": msgspec.json.decode(r["details"]),
                "created_at": iso(r["created_at"]),
            }
            for r in await self.guilds.audit_log(guild_id, limit, before)
        ]
