"""Roles, member role assignment and channel overrides, under the role hierarchy.

Hierarchy (the owner is exempt from all of it):
- a member's rank is the highest position among their roles (``@everyone`` is always 0);
- nobody creates, edits, deletes, assigns, removes or overrides a role at or above their rank,
  nor moves a role to such a position;
- nobody grants bits they do not hold themselves: bits added to a role's permissions or to an
  override's allow/deny, and every bit of a role they assign, must be in their own permissions
  (guild-level for roles, in that channel for overrides). Removing bits is not restricted.
"""

from __future__ import annotations

from typing import Any

from vox.errors import Forbidden, MissingPermission, NotFound, ValidationError
from vox.protocol.permissions import ALL_PERMISSIONS, Permission, first_missing
from vox.services.guild_events import GuildEvents
from vox.services.guild_objects import channel_object, member_object, role_object
from vox.services.guilds import clean_name
from vox.services.permissions import MemberAccess, PermissionService, require, valid_id
from vox.storage.base import Row
from vox.storage.guilds import EVERYONE_NAME, Guilds

__all__ = ["DEFAULT_ROLE_POSITION", "RoleService", "check_bits"]

# New roles go directly above @everyone unless a position is given.
DEFAULT_ROLE_POSITION = 1


def check_bits(value: int, field: str) -> int:
    if value < 0 or value & ~ALL_PERMISSIONS:
        reason = f"only defined permission bits are allowed (0..{ALL_PERMISSIONS})"
        raise ValidationError(f"{field}: {reason}", {field: reason})
    return value


def _grant_check(access: MemberAccess, held: int, granted: int) -> None:
    if access.is_owner:
        return
    missing = first_missing(held, granted)
    if missing is not None:
        raise MissingPermission(missing, f"cannot grant {missing}, which you do not have")


def _rank_check(access: MemberAccess, position: int) -> None:
    if not access.outranks_position(position):
        raise Forbidden("role hierarchy: you can only manage roles below your highest role")


class RoleService:
    def __init__(self, guilds: Guilds, permissions: PermissionService, events: GuildEvents) -> None:
        self.guilds = guilds
        self.permissions = permissions
        self.events = events

    async def _role(self, guild_id: str, role_id: str) -> Row:
        row = await self.guilds.role(guild_id, role_id) if valid_id(role_id) else None
        if row is None:
            raise NotFound("role not found")
        return row

    async def _visibility_changed(self, guild_id: str, user_id: str | None = None) -> None:
        """Who may view which channel may have changed: connections recompute, with every channel
        object at hand for whatever they now have to announce."""
        state = await self.guilds.state(guild_id)
        if state is not None:
            await self.events.channels_changed(
                guild_id, [channel_object(ch) for ch in state.channels], reload=True, user_id=user_id
            )

    # -- roles ------------------------------------------------------------------------------
    async def roles(self, user_id: str, guild_id: str) -> list[dict[str, Any]]:
        await self.permissions.member_access(user_id, guild_id)
        state = await self.guilds.state(guild_id)
        return [] if state is None else [role_object(r) for r in state.roles]

    async def create(
        self, user_id: str, guild_id: str, name: str, permissions: int, position: int | None
    ) -> dict[str, Any]:
        access = await self.permissions.member_access(user_id, guild_id)
        held = access.permissions()
        require(held, Permission.MANAGE_ROLES)
        name = clean_name(name)
        check_bits(permissions, "permissions")
        pos = DEFAULT_ROLE_POSITION if position is None else position
        if pos < 1:
            raise ValidationError("position 0 belongs to @everyone", {"position": "must be at least 1"})
        _rank_check(access, pos)
        _grant_check(access, held, permissions)
        row = await self.guilds.create_role(guild_id, user_id, name, permissions, pos)
        role = role_object(row)
        await self.events.role_event("role_create", role)
        return role

    async def update(
        self, user_id: str, guild_id: str, role_id: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        access = await self.permissions.member_access(user_id, guild_id)
        held = access.permissions()
        require(held, Permission.MANAGE_ROLES)
        role = await self._role(guild_id, role_id)
        _rank_check(access, int(role["position"]))
        if "name" in changes:
            changes["name"] = clean_name(changes["name"])
        if bool(role["is_default"]):
            if changes.get("name", EVERYONE_NAME) != EVERYONE_NAME:
                raise ValidationError("@everyone cannot be renamed", {"name": "@everyone cannot be renamed"})
            if changes.get("position", 0) != 0:
                raise ValidationError("@everyone stays at position 0", {"position": "@everyone stays at 0"})
        elif "position" in changes:
            if changes["position"] < 1:
                raise ValidationError("position 0 belongs to @everyone", {"position": "must be at least 1"})
            _rank_check(access, changes["position"])
        if "permissions" in changes:
            new = check_bits(changes["permissions"], "permissions")
            _grant_check(access, held, new & ~int(role["permissions"]))
        row = await self.guilds.update_role(guild_id, role_id, user_id, changes)
        if row is None:
            raise NotFound("role not found")
        updated = role_object(row)
        if changes:
            await self.events.role_event("role_update", updated)
            if updated["permissions"] != int(role["permissions"]):
                await self._visibility_changed(guild_id)
        return updated

    async def delete(self, user_id: str, guild_id: str, role_id: str) -> None:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_ROLES)
        role = await self._role(guild_id, role_id)
        if bool(role["is_default"]):
            raise ValidationError("@everyone cannot be deleted", {"role_id": "@everyone cannot be deleted"})
        _rank_check(access, int(role["position"]))
        row = await self.guilds.delete_role(guild_id, role_id, user_id)
        if row is None:
            raise NotFound("role not found")
        await self.events.role_event("role_delete", role_object(row))
        await self._visibility_changed(guild_id)

    # -- member roles -----------------------------------------------------------------------
    async def set_member_role(
        self, user_id: str, guild_id: str, target_id: str, role_id: str, *, assigned: bool
    ) -> None:
        access = await self.permissions.member_access(user_id, guild_id)
        held = access.permissions()
        require(held, Permission.MANAGE_ROLES)
        role = await self._role(guild_id, role_id)
        if bool(role["is_default"]):
            raise ValidationError("every member has @everyone", {"role_id": "@everyone is implicit"})
        _rank_check(access, int(role["position"]))
        if assigned:
            _grant_check(access, held, int(role["permissions"]))
        result = (
            await self.guilds.set_member_role(guild_id, target_id, role_id, user_id, assigned=assigned)
            if valid_id(target_id)
            else None
        )
        if result is None:
            raise NotFound("member not found")
        member, changed = result
        if changed:
            await self.events.member_updated(guild_id, member_object(member, self.permissions.clock()))
            await self._visibility_changed(guild_id, user_id=target_id)

    # -- channel overrides ------------------------------------------------------------------
    async def set_override(
        self, user_id: str, channel_id: str, role_id: str, allow: int, deny: int
    ) -> dict[str, Any]:
        ctx = await self.permissions.channel_context(user_id, channel_id)
        if ctx.access is None:
            raise NotFound("role not found")  # a DM has no roles
        require(ctx.permissions, Permission.MANAGE_ROLES)
        guild_id = ctx.channel["guild_id"]
        role = await self._role(guild_id, role_id)
        _rank_check(ctx.access, int(role["position"]))
        check_bits(allow, "allow")
        check_bits(deny, "deny")
        old_allow, old_deny = await self.guilds.override(channel_id, role_id) or (0, 0)
        _grant_check(ctx.access, ctx.permissions, (allow & ~old_allow) | (deny & ~old_deny))
        await self.guilds.set_override(guild_id, channel_id, role_id, allow, deny, user_id)
        await self.events.channels_changed(guild_id, [channel_object(ctx.channel)], reload=True)
        return {"channel_id": channel_id, "role_id": role_id, "allow": allow, "deny": deny}

    async def delete_override(self, user_id: str, channel_id: str, role_id: str) -> None:
        ctx = await self.permissions.channel_context(user_id, channel_id)
        if ctx.access is None:
            raise NotFound("role not found")
        require(ctx.permissions, Permission.MANAGE_ROLES)
        guild_id = ctx.channel["guild_id"]
        role = await self._role(guild_id, role_id)
        _rank_check(ctx.access, int(role["position"]))
        if not await self.guilds.delete_override(guild_id, channel_id, role_id, user_id):
            raise NotFound("override not found")
        await self.events.channels_changed(guild_id, [channel_object(ctx.channel)], reload=True)

    async def overrides(self, user_id: str, channel_id: str) -> list[dict[str, Any]]:
        ctx = await self.permissions.channel_context(user_id, channel_id)
        if ctx.access is None:
            return []
        found = await self.guilds.channel_access(channel_id, user_id)
        rows = [] if found is None else found[2]
        return [{"channel_id": channel_id, "role_id": r, "allow": a, "deny": d} for r, a, d in rows]
