"""Presence: online/away/busy/offline and rich presence (activity), across every daemon.

A user is online while at least one of their gateway sessions lives on any daemon: sessions are
counted in the Ephemeral store (shared through Redis when several daemons run), in total and per
daemon (``node_users:{node}``), so that when a daemon dies the others take its share off the
totals (``reap``, vox.services.nodes) and tell who went offline. The status a
user picks is stored (it survives reconnects); ``offline`` as a choice means invisible. The
activity lives in the Ephemeral store only, for as long as the user is connected.

Updates go to ``guild:{id}`` of every guild of the user (their co-members), to ``user:{id}`` of
every friend, and, for changes the user makes (status, activity), to the user's own
``user:{id}`` (their other devices); coming online and going offline are not echoed to oneself.
Someone who shares two guilds with the user hears an update once per guild; updates carry the
whole state, so a client simply applies the latest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from vox.ephemeral import Ephemeral
from vox.protocol.gateway import encode_event, envelope
from vox.pubsub import Broker
from vox.storage.accounts import Accounts

log = logging.getLogger("vox.presence")

STATUSES = ("online", "away", "busy", "offline")
# A daemon that dies without decrementing leaves a count behind; it lapses after this long
# without any connect/disconnect of that user.
COUNT_TTL_S = 24 * 3600.0
ACTIVITY_TYPES = ("playing", "streaming", "listening", "watching", "competing", "custom")
MAX_ACTIVITY_TEXT = 128


class Activity(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    name: str
    details: str | None = None


def validate_activity(raw: Any) -> dict[str, Any] | None:
    """The activity object of set_activity, or ValueError with the reason."""
    if raw is None:
        return None
    try:
        activity = msgspec.convert(raw, type=Activity)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    if activity.type not in ACTIVITY_TYPES:
        raise ValueError(f"activity.type must be one of {', '.join(ACTIVITY_TYPES)}")
    if not 1 <= len(activity.name) <= MAX_ACTIVITY_TEXT:
        raise ValueError("activity.name must be 1-128 characters")
    if activity.details is not None and len(activity.details) > MAX_ACTIVITY_TEXT:
        raise ValueError("activity.details must be at most 128 characters")
    return msgspec.to_builtins(activity)  # type: ignore[no-any-return]


def node_users_key(node_id: str) -> str:
    """The counter map of one daemon's sessions per user."""
    return f"node_users:{node_id}"


class PresenceService:
    def __init__(
        self, accounts: Accounts, ephemeral: Ephemeral, broker: Broker, *, node_id: str = ""
    ) -> None:
        self.accounts = accounts
        self.ephemeral = ephemeral
        self.broker = broker
        self.node_id = node_id
        # This daemon's sessions per user: what node_users:{node} should say, to restore it.
        self.local: Counter[str] = Counter()
        # Set when federation is on: (user id, event type, d) of each update, for contacts of
        # the user on other servers.
        self.relay: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None

    async def _publish(self, user_id: str, type_: str, d: dict[str, Any], *, to_self: bool = True) -> None:
        payload = envelope(encode_event(type_, d))
        guilds, friends = await self.accounts.presence_audience(user_id)
        topics = [f"guild:{g}" for g in guilds] + [f"user:{f}" for f in friends]
        if to_self:
            topics.append(f"user:{user_id}")
        for topic in topics:
            await self.broker.publish(topic, payload)
        if self.relay is not None and type_ != "patch":
            await self.relay(user_id, type_, d)

    async def _activity(self, user_id: str) -> Any:
        raw = await self.ephemeral.get(f"presence:activity:{user_id}")
        return None if raw is None else msgspec.json.decode(raw)

    async def _shown_status(self, user_id: str) -> str:
        preferred = await self.accounts.preferred_status(user_id)
        return "offline" if preferred == "offline" else preferred

    async def connected(self, user_id: str) -> None:
        self.local[user_id] += 1
        if self.node_id:
            await self.ephemeral.hincr(node_users_key(self.node_id), user_id, 1, COUNT_TTL_S)
        count = await self.ephemeral.incr(f"presence:sessions:{user_id}", 1, COUNT_TTL_S)
        if count == 1:
            status = await self._shown_status(user_id)
            await self._publish(
                user_id,
                "presence_update",
                {"user_id": user_id, "status": status, "activity": None},
                to_self=False,
            )

    async def disconnected(self, user_id: str) -> None:
        self.local[user_id] -= 1
        if self.local[user_id] <= 0:
            del self.local[user_id]
        if self.node_id:
            await self.ephemeral.hincr(node_users_key(self.node_id), user_id, -1, COUNT_TTL_S)
        await self.reap(user_id, 1)

    async def restore(self) -> None:
        """This daemon was presumed dead and reaped while its sessions lived on: count them in
        again (announcing online where that makes a user online again)."""
        for user_id, sessions in list(self.local.items()):
            await self.ephemeral.hincr(node_users_key(self.node_id), user_id, sessions, COUNT_TTL_S)
            count = await self.ephemeral.incr(f"presence:sessions:{user_id}", sessions, COUNT_TTL_S)
            if count == sessions:
                status = await self._shown_status(user_id)
                d = {"user_id": user_id, "status": status, "activity": None}
                await self._publish(user_id, "presence_update", d, to_self=False)

    async def reap(self, user_id: str, sessions: int) -> None:
        """Take ``sessions`` off the user's count (theirs on a daemon that died, or one that just
        ended); announce offline when none is left anywhere."""
        count = await self.ephemeral.incr(f"presence:sessions:{user_id}", -sessions, COUNT_TTL_S)
        if count <= 0:
            await self.ephemeral.delete(f"presence:sessions:{user_id}")
            await self.ephemeral.delete(f"presence:activity:{user_id}")
            await self._publish(
                user_id,
                "presence_update",
                {"user_id": user_id, "status": "offline", "activity": None},
                to_self=False,
            )

    async def set_status(self, user_id: str, status: str) -> None:
        await self.accounts.set_preferred_status(user_id, status)
        activity = None if status == "offline" else await self._activity(user_id)
        await self._publish(
            user_id, "presence_update", {"user_id": user_id, "status": status, "activity": activity}
        )

    async def set_activity(self, user_id: str, activity: dict[str, Any] | None) -> None:
        key = f"presence:activity:{user_id}"
        if activity is None:
            await self.ephemeral.delete(key)
        else:
            await self.ephemeral.set(key, msgspec.json.encode(activity), COUNT_TTL_S)
        if await self._shown_status(user_id) != "offline":
            await self._publish(user_id, "rich_presence_update", {"user_id": user_id, "activity": activity})

    async def user_patched(self, user_id: str, diff: dict[str, Any]) -> None:
        """Profile changes reach whoever sees the user's presence, and their own devices."""
        if diff:
            await self._publish(user_id, "patch", {"entity_type": "user", "entity_id": user_id, "diff": diff})

    async def status_of(self, user_id: str) -> dict[str, Any]:
        raw = await self.ephemeral.get(f"presence:sessions:{user_id}")
        online = raw is not None and int(raw) > 0
        status = await self._shown_status(user_id) if online else "offline"
        activity = await self._activity(user_id) if status != "offline" else None
        return {"user_id": user_id, "status": status, "activity": activity}
