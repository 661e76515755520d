"""Guilds, their channels and categories, and member listing (protocol.md section 3).

Every method takes the acting user first, loads their standing (NotFound for non-members, so a
guild or hidden channel does not exist for them), checks permissions, and only then reads or
changes anything. Changes publish their gateway events after they commit.
"""

from __future__ import annotations

import logging
from typing import Any

from vox.errors import Forbidden, NotFound, ValidationError
from vox.protocol.permissions import Permission
from vox.services.guild_events import GuildEvents
from vox.services.guild_objects import (
    category_object,
    channel_object,
    guild_object,
    member_object,
    role_object,
)
from vox.services.permissions import MemberAccess, PermissionService, require, valid_id
from vox.services.security import validate_patch as validate_security_patch
from vox.storage.guilds import Guilds, GuildState

__all__ = ["NAME_MAX", "GuildService", "clean_name"]

log = logging.getLogger("vox.guilds")

NAME_MAX = 100
# Members per page of GET /guilds/{id}/members (also the most a page may hold).
MEMBERS_PAGE = 1000


def clean_name(value: str, field: str = "name") -> str:
    """Names (guild, channel, category, role) are trimmed, then must be 1-100 characters."""
    name = value.strip()
    if not 1 <= len(name) <= NAME_MAX:
        reason = f"must be 1-{NAME_MAX} characters after trimming"
        raise ValidationError(f"{field} {reason}", {field: reason})
    return name


def visible_ids(access: MemberAccess, state: GuildState) -> list[str]:
    return [
        ch["id"]
        for ch in state.channels
        if access.permissions(state.overrides.get(ch["id"], [])) & Permission.VIEW_CHANNEL
    ]


class GuildService:
    def __init__(
        self, guilds: Guilds, permissions: PermissionService, events: GuildEvents, *, max_guilds: int
    ) -> None:
        self.guilds = guilds
        self.permissions = permissions
        self.events = events
        self.max_guilds = max_guilds

    # -- guilds -----------------------------------------------------------------------------
    async def create(self, user_id: str, name: str) -> dict[str, Any]:
        if not await self.guilds.is_local_user(user_id):
            # A guest visits this server's communities; founding new ones (and the storage and
            # moderation duty that comes with them) is for its own users.
            raise Forbidden("guests from other servers cannot create guilds here")
        state = await self.guilds.create_guild(user_id, clean_name(name), self.max_guilds)
        if state is None:
            raise Forbidden(f"this server allows at most {self.max_guilds} guild(s)")
        guild_id = state.guild["id"]
        log.info("guild created", extra={"fields": {"guild_id": guild_id, "owner_id": user_id}})
        view = self._view(state, [ch["id"] for ch in state.channels])
        member = await self.guilds.member(guild_id, user_id)
        if member is not None:
            await self.events.member_joined(guild_id, member_object(member, self.permissions.clock()), view)
        return view

    async def mine(self, user_id: str) -> list[dict[str, Any]]:
        return [guild_object(g) for g in await self.guilds.guilds_of(user_id)]

    async def view(self, user_id: str, guild_id: str) -> dict[str, Any]:
        """The guild as this member sees it: the guild object plus the channels they can view,
        every role and every category."""
        access = await self.permissions.member_access(user_id, guild_id)
        state = await self.guilds.state(guild_id, with_overrides=True)
        if state is None:
            raise NotFound("guild not found")
        return self._view(state, visible_ids(access, state))

    @staticmethod
    def _view(state: GuildState, visible: list[str]) -> dict[str, Any]:
        shown = set(visible)
        return {
            **guild_object(state.guild),
            "channels": [channel_object(ch) for ch in state.channels if ch["id"] in shown],
            "roles": [role_object(r) for r in state.roles],
            "categories": [category_object(k) for k in state.categories],
        }

    async def update(self, user_id: str, guild_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_GUILD)
        if "name" in changes:
            changes["name"] = clean_name(changes["name"])
        if "security_settings" in changes:
            changes["security_settings"] = validate_security_patch(changes["security_settings"])
            if not changes["security_settings"]:
                del changes["security_settings"]
        row = await self.guilds.update_guild(guild_id, user_id, changes)
        if row is None:
            raise NotFound("guild not found")
        guild = guild_object(row)
        if changes:
            await self.events.guild_updated(guild)
        return guild

    async def delete(self, user_id: str, guild_id: str) -> list[str]:
        """Owner only. Returns the blob keys of the guild's files, for the caller to remove."""
        access = await self.permissions.member_access(user_id, guild_id)
        if not access.is_owner:
            raise Forbidden("only the guild owner can delete it")
        deleted = await self.guilds.delete_guild(guild_id, user_id)
        if deleted is None:
            raise NotFound("guild not found")
        row, keys = deleted
        log.info("guild deleted", extra={"fields": {"guild_id": guild_id}})
        await self.events.guild_deleted(guild_object(row))
        return keys

    # -- channels ---------------------------------------------------------------------------
    async def channels(self, user_id: str, guild_id: str) -> list[dict[str, Any]]:
        visible = await self.permissions.visible_channels(user_id, guild_id) if valid_id(guild_id) else None
        if visible is None:
            raise NotFound("guild not found")
        return [channel_object(ch) for ch in visible]

    async def create_channel(
        self,
        user_id: str,
        guild_id: str,
        name: str,
        channel_type: str,
        category_id: str | None,
        position: int | None,
    ) -> dict[str, Any]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_CHANNELS)
        row = await self.guilds.create_channel(
            guild_id, user_id, clean_name(name), channel_type, category_id, position
        )
        channel = channel_object(row)
        # A new channel has no overrides yet, but who may view it still depends on each
        # member's roles: every connection decides for itself.
        await self.events.channels_changed(guild_id, [channel], reload=True)
        return channel

    async def update_channel(self, user_id: str, channel_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        perms, _ = await self.permissions.channel_permissions(user_id, channel_id)
        require(perms, Permission.MANAGE_CHANNELS)
        if "name" in changes:
            changes["name"] = clean_name(changes["name"])
        row = await self.guilds.update_channel(channel_id, user_id, changes)
        if row is None:
            raise NotFound("channel not found")
        channel = channel_object(row)
        if changes:
            # Name, category and position never change who may view it: no recomputation.
            await self.events.channels_changed(row["guild_id"], [channel], updated=[channel_id])
        return channel

    async def delete_channel(self, user_id: str, channel_id: str) -> list[str]:
        """MANAGE_CHANNELS. Returns the blob keys of the channel's attachments, for the caller
        to remove."""
        perms, _ = await self.permissions.channel_permissions(user_id, channel_id)
        require(perms, Permission.MANAGE_CHANNELS)
        deleted = await self.guilds.delete_channel(channel_id, user_id)
        if deleted is None:
            raise NotFound("channel not found")
        row, keys = deleted
        await self.events.channels_changed(row["guild_id"], [channel_object(row)], deleted=[channel_id])
        return keys

    async def my_permissions(self, user_id: str, channel_id: str) -> int:
        perms, _ = await self.permissions.channel_permissions(user_id, channel_id)
        return perms

    # -- categories -------------------------------------------------------------------------
    async def categories(self, user_id: str, guild_id: str) -> list[dict[str, Any]]:
        await self.permissions.member_access(user_id, guild_id)
        state = await self.guilds.state(guild_id)
        return [] if state is None else [category_object(k) for k in state.categories]

    async def create_category(
        self, user_id: str, guild_id: str, name: str, position: int | None
    ) -> dict[str, Any]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_CHANNELS)
        row = await self.guilds.create_category(guild_id, user_id, clean_name(name), position)
        await self._categories_changed(guild_id)
        return category_object(row)

    async def update_category(
        self, user_id: str, guild_id: str, category_id: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_CHANNELS)
        if "name" in changes:
            changes["name"] = clean_name(changes["name"])
        row = await self.guilds.update_category(guild_id, category_id, user_id, changes)
        if row is None:
            raise NotFound("category not found")
        if changes:
            await self._categories_changed(guild_id)
        return category_object(row)

    async def delete_category(self, user_id: str, guild_id: str, category_id: str) -> None:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_CHANNELS)
        deleted = await self.guilds.delete_category(guild_id, category_id, user_id)
        if deleted is None:
            raise NotFound("category not found")
        _, moved = deleted
        await self._categories_changed(guild_id)
        if moved:
            channels = [channel_object(ch) for ch in moved]
            await self.events.channels_changed(guild_id, channels, updated=[ch["id"] for ch in channels])

    async def _categories_changed(self, guild_id: str) -> None:
        """Categories have no event of their own in the contract: guild_update carries them."""
        state = await self.guilds.state(guild_id)
        if state is not None:
            await self.events.guild_updated(
                {**guild_object(state.guild), "categories": [category_object(k) for k in state.categories]}
            )

    # -- members ----------------------------------------------------------------------------
    async def members(
        self, user_id: str, guild_id: str, *, after: str | None = None, limit: int = MEMBERS_PAGE
    ) -> list[dict[str, Any]]:
        """Members in join order, at most ``limit``, those after member ``after`` when given."""
        await self.permissions.member_access(user_id, guild_id)
        if after is not None and not valid_id(after):
            raise ValidationError("after must be a user id", {"after": "not a user id"})
        rows = await self.guilds.members(guild_id, after=after, limit=limit)
        if rows is None:
            raise ValidationError("after is not a member of this guild", {"after": "not a member"})
        now = self.permissions.clock()
        return [member_object(m, now) for m in rows]

    async def member(self, user_id: str, guild_id: str, target_id: str) -> dict[str, Any]:
        await self.permissions.member_access(user_id, guild_id)
        row = await self.guilds.member(guild_id, target_id) if valid_id(target_id) else None
        if row is None:
            raise NotFound("member not found")
        return member_object(row, self.permissions.clock())
