"""Permission checks for every guild and channel route (and later, messages, voice, search).

Loads what ``vox.protocol.permissions.resolve`` needs from the Store in one read transaction and
answers the questions routes ask:

- ``guild_permissions(user, guild)``: the member's guild-level bits; NotFound for anyone who is
  not a member (a guild does not exist for outsiders).
- ``channel_permissions(user, channel)``: the bits in that channel and the channel row; NotFound
  when the channel does not exist or the user cannot VIEW_CHANNEL it.
- ``require(perms, bit)``: MissingPermission naming the first missing bit.

Role hierarchy lives here too (``MemberAccess.outranks*``): a member's rank is the highest
position among the roles they hold (``@everyone`` is 0); the owner outranks everyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vox.errors import MissingPermission, NotFound, ValidationError
from vox.protocol.permissions import (
    DM_PERMISSIONS,
    Override,
    Permission,
    first_missing,
    resolve,
)
from vox.services.security import security_settings
from vox.storage.base import Row
from vox.storage.guilds import AccessData, Guilds, Visibility

__all__ = ["ChannelContext", "MemberAccess", "PermissionService", "require", "valid_id"]

MAX_ID_LENGTH = 64


def _now_ms() -> int:
    return int(time.time() * 1000)


def valid_id(value: str) -> bool:
    """Path ids are compared as text; anything longer than an id can be is simply unknown."""
    return 0 < len(value) <= MAX_ID_LENGTH


def require(perms: int, bit: int) -> None:
    """Raise MissingPermission unless ``perms`` holds every bit of ``bit``."""
    missing = first_missing(perms, bit)
    if missing is not None:
        raise MissingPermission(missing)


@dataclass(frozen=True, slots=True)
class MemberAccess:
    """One member's standing in one guild at one instant."""

    data: AccessData
    now_ms: int

    @property
    def guild_id(self) -> str:
        return self.data.guild_id

    @property
    def user_id(self) -> str:
        return self.data.user_id

    @property
    def is_owner(self) -> bool:
        return self.data.owner_id == self.data.user_id

    @property
    def timed_out(self) -> bool:
        until = self.data.timeout_until
        return until is not None and until > self.now_ms

    @property
    def rank(self) -> int:
        """The highest position among the member's roles (0 with only ``@everyone``)."""
        positions = [self.data.roles[r][1] for r in self.data.member_role_ids if r in self.data.roles]
        return max([0, *positions])

    def permissions(self, overrides: Iterable[tuple[str, int, int]] | None = None) -> int:
        """Guild-level bits (``overrides`` None) or the bits in a channel with these overrides."""
        return resolve(
            is_owner=self.is_owner,
            everyone_role_id=self.data.everyone_role_id,
            role_permissions={rid: perms for rid, (perms, _) in self.data.roles.items()},
            member_role_ids=self.data.member_role_ids,
            overrides=None if overrides is None else [Override(r, a, d) for r, a, d in overrides],
            timed_out=self.timed_out,
        )

    def outranks_position(self, position: int) -> bool:
        """May this member manage a role at ``position``? Only one strictly below their rank."""
        return self.is_owner or position < self.rank

    def outranks(self, other: MemberAccess) -> bool:
        """May this member moderate ``other``? Nobody moderates the owner; the owner moderates
        anyone else; others only members whose rank is strictly below their own."""
        if other.is_owner:
            return False
        return self.is_owner or other.rank < self.rank


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """A visible channel, the caller's bits in it and, for guild channels, their guild standing."""

    channel: Row
    permissions: int
    access: MemberAccess | None


def visible_channels(visibility: Visibility, now_ms: int) -> list[Row]:
    access = MemberAccess(visibility.access, now_ms)
    return [
        ch
        for ch in visibility.channels
        if access.permissions(visibility.overrides.get(ch["id"], [])) & Permission.VIEW_CHANNEL
    ]


class PermissionService:
    # Also reachable as ``ctx.permissions.require(perms, bit)``.
    require = staticmethod(require)

    def __init__(self, guilds: Guilds, *, clock: Callable[[], int] = _now_ms) -> None:
        self.guilds = guilds
        self.clock = clock

    async def member_access(self, user_id: str, guild_id: str) -> MemberAccess:
        """The member's standing; NotFound when the guild does not exist or they are not in it."""
        data = await self.guilds.access(guild_id, user_id) if valid_id(guild_id) else None
        if data is None:
            raise NotFound("guild not found")
        return MemberAccess(data, self.clock())

    async def target_access(self, guild_id: str, user_id: str) -> MemberAccess | None:
        """Another user's standing in the guild, or None when they are not a member."""
        data = await self.guilds.access(guild_id, user_id) if valid_id(user_id) else None
        return None if data is None else MemberAccess(data, self.clock())

    async def guild_permissions(self, user_id: str, guild_id: str) -> int:
        return (await self.member_access(user_id, guild_id)).permissions()

    async def channel_context(self, user_id: str, channel_id: str) -> ChannelContext:
        found = await self.guilds.channel_access(channel_id, user_id) if valid_id(channel_id) else None
        if found is None:
            raise NotFound("channel not found")
        channel, data, overrides, dm_recipient = found
        if channel["guild_id"] is None:
            if not dm_recipient:
                raise NotFound("channel not found")
            return ChannelContext(channel, DM_PERMISSIONS, None)
        if data is None:
            raise NotFound("channel not found")
        access = MemberAccess(data, self.clock())
        perms = access.permissions(overrides)
        if not perms & Permission.VIEW_CHANNEL:
            raise NotFound("channel not found")
        return ChannelContext(channel, perms, access)

    async def channel_permissions(self, user_id: str, channel_id: str) -> tuple[int, Row]:
        ctx = await self.channel_context(user_id, channel_id)
        return ctx.permissions, ctx.channel

    async def channel_viewers(self, channel_id: str) -> list[str]:
        """Every user who can VIEW_CHANNEL the channel now (a DM's recipients), by id; empty when
        there is no such channel."""
        audience = await self.guilds.channel_audience(channel_id) if valid_id(channel_id) else None
        if audience is None:
            return []
        if audience.channel["guild_id"] is None:
            return list(audience.dm_recipients)
        now = self.clock()
        return [
            data.user_id
            for data in audience.members
            if MemberAccess(data, now).permissions(audience.overrides) & Permission.VIEW_CHANNEL
        ]

    async def check_encrypted_allowed(self, channel: Row) -> None:
        """ValidationError on ``encrypted`` unless messages with ``encrypted: true`` may be sent in
        ``channel``: always in a DM; in a guild channel only when the guild's security settings
        allow them (``allow_encrypted_messages``, off by default; vox.services.security)."""
        guild_id = channel["guild_id"]
        if guild_id is None:
            return
        raw = await self.guilds.security_settings(guild_id)
        if not security_settings(raw)["allow_encrypted_messages"]:
            raise ValidationError(
                "this guild does not allow encrypted messages",
                {"encrypted": "not allowed in this guild (security_settings.allow_encrypted_messages)"},
            )

    async def visible_channels(self, user_id: str, guild_id: str) -> list[Row] | None:
        """The guild's channels the user can see, in order; None when they are not a member."""
        visibility = await self.guilds.visibility(guild_id, user_id)
        return None if visibility is None else visible_channels(visibility, self.clock())

    async def visible_guilds(self, user_id: str) -> list[tuple[Row, list[Row]]]:
        """Every guild of the user with the channels they can see (one read transaction)."""
        now = self.clock()
        return [(v.guild, visible_channels(v, now)) for v in await self.guilds.user_visibility(user_id)]
