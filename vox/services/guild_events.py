"""Publishing guild events through the Broker, so they reach connections on every daemon.

Each event is encoded once (``encode_event``) and published as bytes; who receives it is decided
by topics, never by encoding per receiver. See ``vox.protocol.guild_events`` for the internal
events connections act on, and docs/protocol.md for what clients see.

Publishing happens after the change committed. A broker failure is logged, not raised: the change
stands, and a broker outage already cuts every subscription so clients reconnect and resync.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vox.errors import BrokerError
from vox.protocol.gateway import encode_event, envelope
from vox.protocol.guild_events import GUILD_ACCESS, GUILD_DELETED, GUILD_JOINED, GUILD_LEFT
from vox.pubsub import Broker

log = logging.getLogger("vox.guild_events")


def guild_topic(guild_id: str) -> str:
    return f"guild:{guild_id}"


def user_topic(user_id: str) -> str:
    return f"user:{user_id}"


def channel_topic(channel_id: str) -> str:
    return f"channel:{channel_id}"


class GuildEvents:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def _publish(self, topic: str, type_: str, d: Any) -> None:
        try:
            await self.broker.publish(topic, envelope(encode_event(type_, d)))
        except BrokerError as exc:
            log.warning(
                "event not published", extra={"fields": {"topic": topic, "type": type_, "error": str(exc)}}
            )

    async def guild_updated(self, guild: dict[str, Any]) -> None:
        await self._publish(guild_topic(guild["id"]), "guild_update", guild)

    async def guild_deleted(self, guild: dict[str, Any]) -> None:
        await self._publish(guild_topic(guild["id"]), GUILD_DELETED, {**guild, "deleted": True})

    async def member_joined(self, guild_id: str, member: dict[str, Any], view: dict[str, Any]) -> None:
        """``view`` is the guild as the joiner sees it (GET /guilds/{id} shape).

        The guild-wide event goes out before the joiner's connections subscribe to the guild, so
        they get exactly one member_join: their own, which carries the guild.
        """
        user_id = member["user"]["id"]
        await self._publish(guild_topic(guild_id), "member_join", {**member, "guild_id": guild_id})
        await self._publish(
            user_topic(user_id), GUILD_JOINED, {**member, "guild_id": guild_id, "guild": view}
        )

    async def member_left(self, guild_id: str, member: dict[str, Any], reason: str) -> None:
        """The removed user's connections drop the guild first (which also discards anything of it
        still buffered for them), then the remaining members learn of it."""
        user_id = member["user"]["id"]
        await self._publish(
            user_topic(user_id), GUILD_LEFT, {**member, "guild_id": guild_id, "reason": reason}
        )
        await self._publish(guild_topic(guild_id), "member_leave", {**member, "guild_id": guild_id})

    async def member_updated(self, guild_id: str, member: dict[str, Any]) -> None:
        await self._publish(guild_topic(guild_id), "member_update", {**member, "guild_id": guild_id})

    async def role_event(self, type_: str, role: dict[str, Any]) -> None:
        """role_create / role_update / role_delete; the role object carries its guild_id."""
        await self._publish(guild_topic(role["guild_id"]), type_, role)

    async def channels_changed(
        self,
        guild_id: str,
        channels: Iterable[dict[str, Any]],
        *,
        updated: Iterable[str] = (),
        deleted: Iterable[str] = (),
        reload: bool = False,
        user_id: str | None = None,
    ) -> None:
        """Announce channel changes (or possible visibility changes, ``reload``) to the guild's
        connections, or only to ``user_id``'s when only their access changed."""
        d: dict[str, Any] = {
            "guild_id": guild_id,
            "reload": reload,
            "channels": {ch["id"]: ch for ch in channels},
            "updated": list(updated),
            "deleted": list(deleted),
        }
        topic = user_topic(user_id) if user_id is not None else guild_topic(guild_id)
        await self._publish(topic, GUILD_ACCESS, d)
