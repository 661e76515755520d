"""Queries for direct-message channels (protocol.md section 4, "Direct messages, friends, emoji").

A DM is a ``channels`` row with ``channel_type = 'dm'`` and no guild, plus one ``dm_recipients``
row per participant (the creator included). A 1:1 DM is one with exactly two recipients; group
DMs start with at least three and nobody can leave one yet, so the two never mix.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from vox.storage.base import Conn, Engine, Row
from vox.storage.friends import PUBLIC_USER_COLS
from vox.storage.locks import LockScope, serialize

__all__ = ["DmChannel", "Dms", "by_username"]

_CHANNEL_COLS = (
    "c.id, c.guild_id, c.name, c.channel_type, c.category_id, c.position, c.created_at,"
    " (SELECT MAX(m.id) FROM messages m WHERE m.channel_id = c.id AND m.deleted_at IS NULL)"
    " AS last_message_id,"
    " (SELECT MAX(m.created_at) FROM messages m WHERE m.channel_id = c.id AND m.deleted_at IS NULL)"
    " AS last_message_at"
)


@dataclass(frozen=True, slots=True)
class DmChannel:
    channel: Row
    recipients: list[Row]  # public user columns, by_username


def _in(prefix: str, values: Sequence[str]) -> tuple[str, dict[str, str]]:
    names = {f"{prefix}{i}": v for i, v in enumerate(values)}
    return ", ".join(f":{k}" for k in names), names


def _channels(c: Conn, where: str, params: dict[str, str]) -> list[DmChannel]:
    channels = c.fetchall(
        f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.channel_type = 'dm' AND {where}", params
    )
    if not channels:
        return []
    ids, names = _in("c", [ch["id"] for ch in channels])
    recipients: dict[str, list[Row]] = defaultdict(list)
    for row in c.fetchall(
        f"SELECT r.channel_id, {PUBLIC_USER_COLS} FROM dm_recipients r JOIN users u ON u.id = r.user_id"
        f" WHERE r.channel_id IN ({ids})",
        names,
    ):
        recipients[row.pop("channel_id")].append(row)
    return [DmChannel(ch, sorted(recipients[ch["id"]], key=by_username)) for ch in channels]


def by_username(user: Row) -> tuple[str, str]:
    """Code point order of the lower-cased name: the same on every backend, unlike ORDER BY,
    which PostgreSQL applies with the database's collation."""
    return str(user["username"]).lower(), str(user["id"])


def one_to_one(c: Conn, a: str, b: str) -> str | None:
    """The 1:1 DM channel of two users, if they have one."""
    found = c.fetchval(
        "SELECT ra.channel_id FROM dm_recipients ra"
        " JOIN dm_recipients rb ON rb.channel_id = ra.channel_id AND rb.user_id = :b"
        " WHERE ra.user_id = :a"
        " AND (SELECT COUNT(*) FROM dm_recipients rc WHERE rc.channel_id = ra.channel_id) = 2"
        " ORDER BY ra.channel_id LIMIT 1",
        {"a": a, "b": b},
    )
    return None if found is None else str(found)


class Dms:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def existing_users(self, user_ids: Sequence[str]) -> set[str]:
        """Which of ``user_ids`` name a user."""
        if not user_ids:
            return set()
        ids, names = _in("u", user_ids)
        rows = await self.engine.read(
            lambda c: c.fetchall(f"SELECT id FROM users WHERE id IN ({ids})", names)
        )
        return {r["id"] for r in rows}

    async def contacts(self, user_id: str, others: Sequence[str]) -> set[str]:
        """Which of ``others`` share a guild with ``user_id`` or are their (accepted) friends."""
        if not others:
            return set()
        ids, names = _in("o", others)
        params = {**names, "me": user_id}
        rows = await self.engine.read(
            lambda c: c.fetchall(
                "SELECT o.user_id AS id FROM guild_members o"
                " JOIN guild_members mine ON mine.guild_id = o.guild_id AND mine.user_id = :me"
                f" WHERE o.user_id IN ({ids})"
                " UNION SELECT CASE WHEN f.requester_id = :me THEN f.addressee_id ELSE f.requester_id END"
                " FROM friendships f WHERE f.status = 'accepted' AND ("
                f"(f.requester_id = :me AND f.addressee_id IN ({ids}))"
                f" OR (f.addressee_id = :me AND f.requester_id IN ({ids})))",
                params,
            )
        )
        return {r["id"] for r in rows}

    async def open(self, creator_id: str, others: Sequence[str], now: int) -> tuple[DmChannel, bool]:
        """The 1:1 DM of the creator and one other user if it exists, else a new DM of them all;
        returns (dm, created). Callers pass existing, distinct users other than the creator."""

        def fn(c: Conn) -> tuple[DmChannel, bool]:
            if len(others) == 1:
                # Two "open a DM" calls for one pair, from either side and on any daemon, must end
                # with one channel: hold the pair's lock from the lookup to the insert.
                serialize(c, LockScope.DM_PAIR, ":".join(sorted((creator_id, others[0]))))
                existing = one_to_one(c, creator_id, others[0])
                if existing is not None:
                    return _channels(c, "c.id = :id", {"id": existing})[0], False
            channel_id = str(uuid.uuid4())
            c.execute(
                "INSERT INTO channels (id, guild_id, name, channel_type, position, created_at)"
                " VALUES (:id, NULL, NULL, 'dm', 0, :now)",
                {"id": channel_id, "now": now},
            )
            c.executemany(
                "INSERT INTO dm_recipients (channel_id, user_id) VALUES (:c, :u)",
                [{"c": channel_id, "u": u} for u in (creator_id, *others)],
            )
            return _channels(c, "c.id = :id", {"id": channel_id})[0], True

        return await self.engine.write(fn)

    async def recipient_ids(self, channel_id: str) -> list[str]:
        """The ids of a DM's recipients, in id order; empty when no DM has that id."""
        rows = await self.engine.read(
            lambda c: c.fetchall(
                "SELECT user_id FROM dm_recipients WHERE channel_id = :id ORDER BY user_id",
                {"id": channel_id},
            )
        )
        return [r["user_id"] for r in rows]

    async def of(self, user_id: str) -> list[DmChannel]:
        """Every DM ``user_id`` is a recipient of, the latest activity (message or creation) first."""
        dms = await self.engine.read(
            lambda c: _channels(
                c, "c.id IN (SELECT channel_id FROM dm_recipients WHERE user_id = :me)", {"me": user_id}
            )
        )

        def activity(dm: DmChannel) -> tuple[int, str]:
            last = dm.channel["last_message_at"]
            return (int(last) if last is not None else int(dm.channel["created_at"]), dm.channel["id"])

        return sorted(dms, key=activity, reverse=True)
