"""Invites: create (CREATE_INVITE), list (MANAGE_GUILD), preview, join, revoke.

Codes are 10 random characters of [A-Za-z0-9] (about 59 bits), drawn from ``secrets``. An invite
is usable while it is not expired and has uses left; an unusable or revoked invite is simply
not found (404). Banned users cannot join (403).
"""

from __future__ import annotations

import logging
import secrets
import string
from typing import Any

from vox.errors import Forbidden, NotFound
from vox.protocol.permissions import Permission
from vox.services.guild_events import GuildEvents
from vox.services.guild_objects import invite_object, member_object
from vox.services.guilds import GuildService
from vox.services.permissions import PermissionService, require
from vox.storage.base import Row
from vox.storage.guilds import Guilds, JoinOutcome

__all__ = ["CODE_LENGTH", "MAX_EXPIRES_IN_S", "MAX_USES", "InviteService", "new_code"]

log = logging.getLogger("vox.invites")

CODE_LENGTH = 10
CODE_ALPHABET = string.ascii_letters + string.digits
MAX_USES = 10_000
MAX_EXPIRES_IN_S = 30 * 86_400
_CODE_ATTEMPTS = 5


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def valid_code(code: str) -> bool:
    return 0 < len(code) <= 64


class InviteService:
    def __init__(
        self,
        guilds: Guilds,
        permissions: PermissionService,
        events: GuildEvents,
        guild_service: GuildService,
    ) -> None:
        self.guilds = guilds
        self.permissions = permissions
        self.events = events
        self.guild_service = guild_service

    def _usable(self, row: Row) -> bool:
        expires_at = row["expires_at"]
        if expires_at is not None and expires_at <= self.permissions.clock():
            return False
        return row["max_uses"] is None or int(row["uses"]) < int(row["max_uses"])

    async def create(
        self, user_id: str, guild_id: str, max_uses: int | None, expires_in_s: int | None
    ) -> dict[str, Any]:
        """``max_uses`` and ``expires_in_s`` of 0 or None mean unlimited and never."""
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.CREATE_INVITE)
        expires_at = self.permissions.clock() + expires_in_s * 1000 if expires_in_s else None
        for _ in range(_CODE_ATTEMPTS):
            row = await self.guilds.create_invite(new_code(), guild_id, user_id, max_uses or None, expires_at)
            if row is not None:
                return invite_object(row)
        raise RuntimeError("could not draw an unused invite code")  # astronomically unlikely

    async def for_guild(self, user_id: str, guild_id: str) -> list[dict[str, Any]]:
        access = await self.permissions.member_access(user_id, guild_id)
        require(access.permissions(), Permission.MANAGE_GUILD)
        return [invite_object(r) for r in await self.guilds.invites(guild_id)]

    async def preview(self, code: str) -> dict[str, Any]:
        """What an invite leads to, for anyone signed in who holds the code."""
        row = await self.guilds.invite(code) if valid_code(code) else None
        if row is None or not self._usable(row):
            raise NotFound("invite not found or no longer valid")
        return {
            **invite_object(row),
            "guild": {"id": row["guild_id"], "name": row["guild_name"], "icon": row["guild_icon"]},
        }

    async def join(self, user_id: str, code: str) -> dict[str, Any]:
        if not valid_code(code):
            raise NotFound("invite not found or no longer valid")
        outcome, row = await self.guilds.join(code, user_id)
        if outcome is JoinOutcome.INVALID:
            raise NotFound("invite not found or no longer valid")
        if outcome is JoinOutcome.BANNED:
            raise Forbidden("you are banned from this guild")
        assert row is not None
        guild_id = row["guild_id"]
        member = member_object(row, self.permissions.clock())
        if outcome is JoinOutcome.JOINED:
            log.info("member joined", extra={"fields": {"guild_id": guild_id, "user_id": user_id}})
            view = await self.guild_service.view(user_id, guild_id)
            await self.events.member_joined(guild_id, member, view)
        return {**member, "guild_id": guild_id}

    async def announce_join(self, user_id: str, guild_id: str) -> None:
        """Publish member_join for a membership made elsewhere (registration with an invite)."""
        row = await self.guilds.member(guild_id, user_id)
        if row is None:
            return
        member = member_object(row, self.permissions.clock())
        view = await self.guild_service.view(user_id, guild_id)
        await self.events.member_joined(guild_id, member, view)

    async def revoke(self, user_id: str, code: str) -> None:
        """The invite's creator may revoke it; anyone else needs MANAGE_GUILD."""
        row = await self.guilds.invite(code) if valid_code(code) else None
        if row is None:
            raise NotFound("invite not found")
        access = await self.permissions.member_access(user_id, row["guild_id"])
        if row["inviter_id"] != user_id:
            require(access.permissions(), Permission.MANAGE_GUILD)
        if not await self.guilds.delete_invite(code, user_id):
            raise NotFound("invite not found")
