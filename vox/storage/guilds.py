"""Queries for guilds, channels, categories, roles, members, overrides, invites, bans and the
guild audit log (protocol.md section 3).

Each public method is one transaction; the sync ``fn`` bodies run in a worker thread. Every
mutation that a moderator performs writes its audit_log row in the same transaction, so an
action and its record commit or roll back together. Permission checks are the services' job:
these methods trust their callers.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vox.errors import NotFound, ValidationError
from vox.protocol.permissions import DEFAULT_EVERYONE
from vox.storage.accounts import now_ms
from vox.storage.base import Conn, Engine, Row

__all__ = [
    "AccessData",
    "ChannelAudience",
    "GuildState",
    "Guilds",
    "JoinOutcome",
    "Visibility",
]

EVERYONE_NAME = "@everyone"

_GUILD_COLS = "g.id, g.name, g.owner_id, g.icon, g.security_settings, g.created_at"
_CHANNEL_COLS = "c.id, c.guild_id, c.name, c.channel_type, c.category_id, c.position, c.created_at"
_ROLE_COLS = "r.id, r.guild_id, r.name, r.permissions, r.position, r.is_default, r.created_at"
_CATEGORY_COLS = "k.id, k.guild_id, k.name, k.position, k.created_at"
_INVITE_COLS = "i.code, i.guild_id, i.inviter_id, i.max_uses, i.uses, i.expires_at, i.created_at"
_MEMBER_SELECT = (
    "SELECT m.guild_id, m.user_id, m.joined_at, m.timeout_until,"
    " u.id, u.username, u.display_name, u.avatar, u.created_at,"
    " (SELECT COUNT(*) FROM system_admins a WHERE a.user_id = u.id) AS is_admin"
    " FROM guild_members m JOIN users u ON u.id = m.user_id"
)
_CHANNEL_ORDER = " ORDER BY c.position, c.created_at, c.id"
_ROLE_ORDER = " ORDER BY r.position, r.created_at, r.id"


class JoinOutcome(enum.Enum):
    JOINED = "joined"
    ALREADY_MEMBER = "already_member"
    INVALID = "invalid"  # unknown, expired, revoked or used up
    BANNED = "banned"


@dataclass(frozen=True, slots=True)
class AccessData:
    """What permission resolution needs about one member of one guild."""

    guild_id: str
    user_id: str
    owner_id: str
    everyone_role_id: str
    # Every role of the guild: id -> (permissions, position).
    roles: dict[str, tuple[int, int]]
    member_role_ids: frozenset[str]
    timeout_until: int | None


@dataclass(frozen=True, slots=True)
class Visibility:
    """A member's access to a guild together with every channel of it and their overrides."""

    guild: Row
    access: AccessData
    channels: list[Row]
    # channel id -> [(role_id, allow, deny)]
    overrides: dict[str, list[tuple[str, int, int]]]


@dataclass(frozen=True, slots=True)
class ChannelAudience:
    """Who might see a channel: a DM's recipients, or every member of the channel's guild with
    what resolving their permissions in it needs."""

    channel: Row
    dm_recipients: list[str]
    members: list[AccessData]
    # [(role_id, allow, deny)] of this channel
    overrides: list[tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class GuildState:
    guild: Row
    channels: list[Row]
    roles: list[Row]
    categories: list[Row]
    overrides: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)


def _audit(
    c: Conn,
    actor_id: str | None,
    action: str,
    guild_id: str | None,
    target_type: str | None,
    target_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    now = now_ms()
    if guild_id is not None:
        # Entries of one guild get strictly increasing times, so "newest first" is the order
        # things happened in even when several land within one millisecond.
        last = c.fetchval("SELECT MAX(created_at) FROM audit_log WHERE guild_id = :g", {"g": guild_id})
        if last is not None and last >= now:
            now = int(last) + 1
    c.execute(
        "INSERT INTO audit_log (id, actor_id, action, target_type, target_id, guild_id, details, created_at)"
        " VALUES (:id, :actor, :action, :ttype, :tid, :g, :details, :now)",
        {
            "id": str(uuid.uuid4()),
            "actor": actor_id,
            "action": action,
            "ttype": target_type,
            "tid": target_id,
            "g": guild_id,
            "details": msgspec.json.encode(details or {}).decode(),
            "now": now,
        },
    )


def _set_clause(changes: dict[str, Any], allowed: frozenset[str]) -> tuple[str, dict[str, Any]]:
    picked = {k: v for k, v in changes.items() if k in allowed}
    return ", ".join(f"{k} = :{k}" for k in picked), picked


def _access(c: Conn, guild_id: str, user_id: str) -> AccessData | None:
    member = c.fetchone(
        "SELECT g.owner_id, m.timeout_until FROM guild_members m JOIN guilds g ON g.id = m.guild_id"
        " WHERE m.guild_id = :g AND m.user_id = :u",
        {"g": guild_id, "u": user_id},
    )
    if member is None:
        return None
    roles = c.fetchall(
        "SELECT id, permissions, position, is_default FROM guild_roles WHERE guild_id = :g", {"g": guild_id}
    )
    held = c.fetchall(
        "SELECT role_id FROM guild_member_roles WHERE guild_id = :g AND user_id = :u",
        {"g": guild_id, "u": user_id},
    )
    return _make_access(guild_id, user_id, member["owner_id"], member["timeout_until"], roles, held)


def _make_access(
    guild_id: str,
    user_id: str,
    owner_id: str,
    timeout_until: int | None,
    roles: list[Row],
    held: list[Row],
) -> AccessData:
    everyone = next((r["id"] for r in roles if bool(r["is_default"])), "")
    return AccessData(
        guild_id=guild_id,
        user_id=user_id,
        owner_id=owner_id,
        everyone_role_id=everyone,
        roles={r["id"]: (int(r["permissions"]), int(r["position"])) for r in roles},
        member_role_ids=frozenset(h["role_id"] for h in held),
        timeout_until=timeout_until,
    )


def _overrides_by_channel(rows: list[Row]) -> dict[str, list[tuple[str, int, int]]]:
    out: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for r in rows:
        out[r["channel_id"]].append((r["role_id"], int(r["allow"]), int(r["deny"])))
    return dict(out)


def _guild_overrides(c: Conn, guild_id: str) -> dict[str, list[tuple[str, int, int]]]:
    return _overrides_by_channel(
        c.fetchall(
            "SELECT o.channel_id, o.role_id, o.allow, o.deny FROM channel_overrides o"
            " JOIN channels c ON c.id = o.channel_id WHERE c.guild_id = :g",
            {"g": guild_id},
        )
    )


def _members(
    c: Conn,
    guild_id: str,
    user_id: str | None = None,
    *,
    after: tuple[Any, str] | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Member rows (joined with their user) plus ``role_ids``, assigned roles in role order."""
    params: dict[str, Any] = {"g": guild_id}
    where = " WHERE m.guild_id = :g"
    if user_id is not None:
        where += " AND m.user_id = :u"
        params["u"] = user_id
    if after is not None:
        where += " AND (m.joined_at > :aj OR (m.joined_at = :aj AND m.user_id > :au))"
        params["aj"], params["au"] = after
    page = "" if limit is None else f" LIMIT {int(limit)}"
    rows = c.fetchall(_MEMBER_SELECT + where + " ORDER BY m.joined_at, m.user_id" + page, params)
    held: dict[str, list[str]] = defaultdict(list)
    if user_id is None and (after is not None or limit is not None):
        # Roles of this page only.
        names = {f"p{i}": r["user_id"] for i, r in enumerate(rows)}
        role_where = " WHERE mr.guild_id = :g AND mr.user_id IN (" + ", ".join(f":{k}" for k in names) + ")"
        role_params: dict[str, Any] = {"g": guild_id, **names}
    else:
        role_where = " WHERE mr.guild_id = :g" + (" AND mr.user_id = :u" if user_id is not None else "")
        role_params = params
    if rows:
        for r in c.fetchall(
            "SELECT mr.user_id, mr.role_id FROM guild_member_roles mr JOIN guild_roles r ON r.id = mr.role_id"
            + role_where
            + _ROLE_ORDER,
            role_params,
        ):
            held[r["user_id"]].append(r["role_id"])
    for row in rows:
        row["role_ids"] = held.get(row["user_id"], [])
    return rows


def _member(c: Conn, guild_id: str, user_id: str) -> Row | None:
    rows = _members(c, guild_id, user_id)
    return rows[0] if rows else None


def _state(c: Conn, guild_id: str, *, with_overrides: bool = False) -> GuildState | None:
    guild = c.fetchone(f"SELECT {_GUILD_COLS} FROM guilds g WHERE g.id = :g", {"g": guild_id})
    if guild is None:
        return None
    return GuildState(
        guild=guild,
        channels=c.fetchall(
            f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.guild_id = :g" + _CHANNEL_ORDER, {"g": guild_id}
        ),
        roles=c.fetchall(
            f"SELECT {_ROLE_COLS} FROM guild_roles r WHERE r.guild_id = :g" + _ROLE_ORDER, {"g": guild_id}
        ),
        categories=c.fetchall(
            f"SELECT {_CATEGORY_COLS} FROM channel_categories k WHERE k.guild_id = :g"
            " ORDER BY k.position, k.created_at, k.id",
            {"g": guild_id},
        ),
        overrides=_guild_overrides(c, guild_id) if with_overrides else {},
    )


def _check_category(c: Conn, guild_id: str, category_id: str | None) -> None:
    if category_id is None:
        return
    found = c.fetchval(
        "SELECT 1 FROM channel_categories WHERE id = :k AND guild_id = :g", {"k": category_id, "g": guild_id}
    )
    if found is None:
        raise ValidationError(
            "category_id does not name a category of this guild", {"category_id": "unknown category"}
        )


class Guilds:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- guilds -----------------------------------------------------------------------------
    async def is_local_user(self, user_id: str) -> bool:
        """False for a federated identity (``home_domain`` set): a guest from another server."""

        def fn(c: Conn) -> bool:
            return bool(
                c.fetchval("SELECT COUNT(*) FROM users WHERE id = :u AND home_domain IS NULL", {"u": user_id})
            )

        return await self.engine.read(fn)

    async def create_guild(self, owner_id: str, name: str, max_guilds: int) -> GuildState | None:
        """Create the guild with its @everyone role, default channels and owner membership.

        Returns None when the server already holds ``max_guilds`` guilds (0: no limit).
        """

        def fn(c: Conn) -> GuildState | None:
            if max_guilds > 0:
                if c.dialect == "postgres":
                    # Serialise "how many guilds exist?" between concurrent creations.
                    c.execute("LOCK TABLE guilds IN SHARE ROW EXCLUSIVE MODE")
                if int(c.fetchval("SELECT COUNT(*) FROM guilds")) >= max_guilds:
                    return None
            now = now_ms()
            guild_id = str(uuid.uuid4())
            c.execute(
                "INSERT INTO guilds (id, name, owner_id, created_at) VALUES (:id, :name, :owner, :now)",
                {"id": guild_id, "name": name, "owner": owner_id, "now": now},
            )
            c.execute(
                "INSERT INTO guild_roles (id, guild_id, name, permissions, position, is_default, created_at)"
                " VALUES (:id, :g, :name, :perms, 0, TRUE, :now)",
                {
                    "id": str(uuid.uuid4()),
                    "g": guild_id,
                    "name": EVERYONE_NAME,
                    "perms": DEFAULT_EVERYONE,
                    "now": now,
                },
            )
            c.execute(
                "INSERT INTO guild_members (guild_id, user_id, joined_at) VALUES (:g, :u, :now)",
                {"g": guild_id, "u": owner_id, "now": now},
            )
            c.executemany(
                "INSERT INTO channels (id, guild_id, name, channel_type, position, created_at)"
                " VALUES (:id, :g, :name, :type, :pos, :now)",
                [
                    {
                        "id": str(uuid.uuid4()),
                        "g": guild_id,
                        "name": "general",
                        "type": "text",
                        "pos": 0,
                        "now": now,
                    },
                    {
                        "id": str(uuid.uuid4()),
                        "g": guild_id,
                        "name": "General",
                        "type": "voice",
                        "pos": 1,
                        "now": now,
                    },
                ],
            )
            _audit(c, owner_id, "guild_create", guild_id, "guild", guild_id, {"name": name})
            return _state(c, guild_id)

        return await self.engine.write(fn)

    async def guild(self, guild_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(f"SELECT {_GUILD_COLS} FROM guilds g WHERE g.id = :g", {"g": guild_id})
        )

    async def guilds_of(self, user_id: str) -> list[Row]:
        return await self.engine.read(
            lambda c: c.fetchall(
                f"SELECT {_GUILD_COLS} FROM guilds g JOIN guild_members m ON m.guild_id = g.id"
                " WHERE m.user_id = :u ORDER BY m.joined_at, g.id",
                {"u": user_id},
            )
        )

    async def guild_ids_of(self, user_id: str) -> list[str]:
        rows = await self.engine.read(
            lambda c: c.fetchall("SELECT guild_id FROM guild_members WHERE user_id = :u", {"u": user_id})
        )
        return [r["guild_id"] for r in rows]

    async def state(self, guild_id: str, *, with_overrides: bool = False) -> GuildState | None:
        return await self.engine.read(lambda c: _state(c, guild_id, with_overrides=with_overrides))

    async def update_guild(self, guild_id: str, actor_id: str, changes: dict[str, Any]) -> Row | None:
        """Set ``name``/``icon``; ``security_settings`` (a dict) is merged into the stored JSON
        object, so settings it does not name keep their values."""
        sets, params = _set_clause(changes, frozenset({"name", "icon"}))
        security: dict[str, Any] = changes.get("security_settings") or {}

        def fn(c: Conn) -> Row | None:
            assignments, values, details = sets, dict(params), dict(params)
            if security:
                lock = " FOR UPDATE" if c.dialect == "postgres" else ""
                raw = c.fetchval("SELECT security_settings FROM guilds WHERE id = :g" + lock, {"g": guild_id})
                if raw is None:
                    return None
                merged = {**json.loads(raw or "{}"), **security}
                assignments = ", ".join(filter(None, [sets, "security_settings = :security_settings"]))
                values["security_settings"] = json.dumps(merged, sort_keys=True)
                details["security_settings"] = security
            if assignments:
                c.execute(f"UPDATE guilds SET {assignments} WHERE id = :g", {**values, "g": guild_id})
                _audit(c, actor_id, "guild_update", guild_id, "guild", guild_id, details)
            return c.fetchone(f"SELECT {_GUILD_COLS} FROM guilds g WHERE g.id = :g", {"g": guild_id})

        return await self.engine.write(fn)

    async def security_settings(self, guild_id: str) -> str | None:
        """The guild's stored security settings (a JSON object as text); None: no such guild."""
        raw = await self.engine.read(
            lambda c: c.fetchval("SELECT security_settings FROM guilds WHERE id = :g", {"g": guild_id})
        )
        return None if raw is None else str(raw)

    async def delete_guild(self, guild_id: str, actor_id: str) -> tuple[Row, list[str]] | None:
        """Delete the guild and, by cascade, everything in it; return the guild as it was and
        the blob keys of its attachments and emoji (the cascade removes the rows that name
        them; the caller removes the blobs). Read in the same transaction, so a file added
        meanwhile cannot be missed."""

        def fn(c: Conn) -> tuple[Row, list[str]] | None:
            guild = c.fetchone(f"SELECT {_GUILD_COLS} FROM guilds g WHERE g.id = :g", {"g": guild_id})
            if guild is None:
                return None
            keys = _blob_keys(c, "m.guild_id", guild_id)
            keys += [
                r["storage_key"]
                for r in c.fetchall(
                    "SELECT storage_key FROM guild_emoji WHERE guild_id = :g", {"g": guild_id}
                )
            ]
            c.execute("DELETE FROM guilds WHERE id = :g", {"g": guild_id})
            _audit(c, actor_id, "guild_delete", guild_id, "guild", guild_id, {"name": guild["name"]})
            return guild, keys

        return await self.engine.write(fn)

    # -- access (what permission resolution reads) ------------------------------------------
    async def access(self, guild_id: str, user_id: str) -> AccessData | None:
        return await self.engine.read(lambda c: _access(c, guild_id, user_id))

    async def channel_access(
        self, channel_id: str, user_id: str
    ) -> tuple[Row, AccessData | None, list[tuple[str, int, int]], bool] | None:
        """(channel, member access or None, its overrides, is a DM recipient); None: no channel."""

        def fn(c: Conn) -> tuple[Row, AccessData | None, list[tuple[str, int, int]], bool] | None:
            channel = c.fetchone(
                f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id}
            )
            if channel is None:
                return None
            if channel["guild_id"] is None:
                recipient = c.fetchval(
                    "SELECT 1 FROM dm_recipients WHERE channel_id = :id AND user_id = :u",
                    {"id": channel_id, "u": user_id},
                )
                return channel, None, [], recipient is not None
            access = _access(c, channel["guild_id"], user_id)
            if access is None:
                return channel, None, [], False
            rows = c.fetchall(
                "SELECT role_id, allow, deny FROM channel_overrides WHERE channel_id = :id",
                {"id": channel_id},
            )
            return channel, access, [(r["role_id"], int(r["allow"]), int(r["deny"])) for r in rows], False

        return await self.engine.read(fn)

    async def channel_audience(self, channel_id: str) -> ChannelAudience | None:
        """Everyone who might view the channel, in a fixed number of queries; None: no channel."""

        def fn(c: Conn) -> ChannelAudience | None:
            channel = c.fetchone(
                f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id}
            )
            if channel is None:
                return None
            if channel["guild_id"] is None:
                rows = c.fetchall(
                    "SELECT user_id FROM dm_recipients WHERE channel_id = :id ORDER BY user_id",
                    {"id": channel_id},
                )
                return ChannelAudience(channel, [r["user_id"] for r in rows], [], [])
            p = {"g": channel["guild_id"]}
            owner = c.fetchval("SELECT owner_id FROM guilds WHERE id = :g", p)
            roles = c.fetchall(
                "SELECT id, permissions, position, is_default FROM guild_roles WHERE guild_id = :g", p
            )
            held: dict[str, list[Row]] = defaultdict(list)
            for r in c.fetchall("SELECT user_id, role_id FROM guild_member_roles WHERE guild_id = :g", p):
                held[r["user_id"]].append(r)
            members = [
                _make_access(p["g"], m["user_id"], owner, m["timeout_until"], roles, held[m["user_id"]])
                for m in c.fetchall(
                    "SELECT user_id, timeout_until FROM guild_members WHERE guild_id = :g ORDER BY user_id", p
                )
            ]
            overrides = c.fetchall(
                "SELECT role_id, allow, deny FROM channel_overrides WHERE channel_id = :id",
                {"id": channel_id},
            )
            return ChannelAudience(
                channel, [], members, [(r["role_id"], int(r["allow"]), int(r["deny"])) for r in overrides]
            )

        return await self.engine.read(fn)

    async def visibility(self, guild_id: str, user_id: str) -> Visibility | None:
        def fn(c: Conn) -> Visibility | None:
            access = _access(c, guild_id, user_id)
            if access is None:
                return None
            guild = c.fetchone(f"SELECT {_GUILD_COLS} FROM guilds g WHERE g.id = :g", {"g": guild_id})
            assert guild is not None
            channels = c.fetchall(
                f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.guild_id = :g" + _CHANNEL_ORDER,
                {"g": guild_id},
            )
            return Visibility(guild, access, channels, _guild_overrides(c, guild_id))

        return await self.engine.read(fn)

    async def user_visibility(self, user_id: str) -> list[Visibility]:
        """Every guild of the user with what resolving its channels needs, in a fixed number of
        queries whatever the number of guilds (gateway identify runs this)."""

        def fn(c: Conn) -> list[Visibility]:
            p = {"u": user_id}
            mine = " JOIN guild_members m ON m.guild_id = {t}.guild_id AND m.user_id = :u"
            guilds = c.fetchall(
                f"SELECT {_GUILD_COLS}, m.timeout_until FROM guilds g"
                " JOIN guild_members m ON m.guild_id = g.id WHERE m.user_id = :u ORDER BY m.joined_at, g.id",
                p,
            )
            roles: dict[str, list[Row]] = defaultdict(list)
            for r in c.fetchall(
                "SELECT r.guild_id, r.id, r.permissions, r.position, r.is_default FROM guild_roles r"
                + mine.format(t="r"),
                p,
            ):
                roles[r["guild_id"]].append(r)
            held: dict[str, list[Row]] = defaultdict(list)
            for r in c.fetchall("SELECT guild_id, role_id FROM guild_member_roles WHERE user_id = :u", p):
                held[r["guild_id"]].append(r)
            channels: dict[str, list[Row]] = defaultdict(list)
            for r in c.fetchall(
                f"SELECT {_CHANNEL_COLS} FROM channels c" + mine.format(t="c") + _CHANNEL_ORDER, p
            ):
                channels[r["guild_id"]].append(r)
            overrides: dict[str, list[Row]] = defaultdict(list)
            for r in c.fetchall(
                "SELECT c.guild_id, o.channel_id, o.role_id, o.allow, o.deny FROM channel_overrides o"
                " JOIN channels c ON c.id = o.channel_id" + mine.format(t="c"),
                p,
            ):
                overrides[r["guild_id"]].append(r)
            out = []
            for g in guilds:
                gid = g["id"]
                timeout = g.pop("timeout_until")
                access = _make_access(gid, user_id, g["owner_id"], timeout, roles[gid], held[gid])
                out.append(Visibility(g, access, channels[gid], _overrides_by_channel(overrides[gid])))
            return out

        return await self.engine.read(fn)

    # -- channels ---------------------------------------------------------------------------
    async def channel(self, channel_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id}
            )
        )

    async def create_channel(
        self,
        guild_id: str,
        actor_id: str,
        name: str,
        channel_type: str,
        category_id: str | None,
        position: int | None,
    ) -> Row:
        def fn(c: Conn) -> Row:
            _check_category(c, guild_id, category_id)
            pos = position
            if pos is None:
                # Appended after the last channel of the guild.
                pos = int(
                    c.fetchval(
                        "SELECT COALESCE(MAX(position), -1) + 1 FROM channels WHERE guild_id = :g",
                        {"g": guild_id},
                    )
                )
            channel_id = str(uuid.uuid4())
            c.execute(
                "INSERT INTO channels (id, guild_id, name, channel_type, category_id, position, created_at)"
                " VALUES (:id, :g, :name, :type, :cat, :pos, :now)",
                {
                    "id": channel_id,
                    "g": guild_id,
                    "name": name,
                    "type": channel_type,
                    "cat": category_id,
                    "pos": pos,
                    "now": now_ms(),
                },
            )
            _audit(
                c,
                actor_id,
                "channel_create",
                guild_id,
                "channel",
                channel_id,
                {"name": name, "channel_type": channel_type},
            )
            row = c.fetchone(f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id})
            assert row is not None
            return row

        return await self.engine.write(fn)

    async def update_channel(self, channel_id: str, actor_id: str, changes: dict[str, Any]) -> Row | None:
        sets, params = _set_clause(changes, frozenset({"name", "category_id", "position"}))

        def fn(c: Conn) -> Row | None:
            row = c.fetchone(f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id})
            if row is None or not sets:
                return row
            if "category_id" in params:
                _check_category(c, row["guild_id"], params["category_id"])
            c.execute(f"UPDATE channels SET {sets} WHERE id = :id", {**params, "id": channel_id})
            _audit(c, actor_id, "channel_update", row["guild_id"], "channel", channel_id, params)
            return c.fetchone(f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id})

        return await self.engine.write(fn)

    async def delete_channel(self, channel_id: str, actor_id: str) -> tuple[Row, list[str]] | None:
        """Delete the channel (its messages go by cascade); return it as it was and the blob
        keys of its attachments, read in the same transaction."""

        def fn(c: Conn) -> tuple[Row, list[str]] | None:
            row = c.fetchone(f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.id = :id", {"id": channel_id})
            if row is None:
                return None
            keys = _blob_keys(c, "m.channel_id", channel_id)
            c.execute("DELETE FROM channels WHERE id = :id", {"id": channel_id})
            _audit(
                c, actor_id, "channel_delete", row["guild_id"], "channel", channel_id, {"name": row["name"]}
            )
            return row, keys

        return await self.engine.write(fn)

    # -- categories -------------------------------------------------------------------------
    async def create_category(self, guild_id: str, actor_id: str, name: str, position: int | None) -> Row:
        def fn(c: Conn) -> Row:
            pos = position
            if pos is None:
                pos = int(
                    c.fetchval(
                        "SELECT COALESCE(MAX(position), -1) + 1 FROM channel_categories WHERE guild_id = :g",
                        {"g": guild_id},
                    )
                )
            category_id = str(uuid.uuid4())
            c.execute(
                "INSERT INTO channel_categories (id, guild_id, name, position, created_at)"
                " VALUES (:id, :g, :name, :pos, :now)",
                {"id": category_id, "g": guild_id, "name": name, "pos": pos, "now": now_ms()},
            )
            _audit(c, actor_id, "category_create", guild_id, "category", category_id, {"name": name})
            row = c.fetchone(
                f"SELECT {_CATEGORY_COLS} FROM channel_categories k WHERE k.id = :id", {"id": category_id}
            )
            assert row is not None
            return row

        return await self.engine.write(fn)

    async def update_category(
        self, guild_id: str, category_id: str, actor_id: str, changes: dict[str, Any]
    ) -> Row | None:
        sets, params = _set_clause(changes, frozenset({"name", "position"}))

        def fn(c: Conn) -> Row | None:
            where = {"id": category_id, "g": guild_id}
            select = f"SELECT {_CATEGORY_COLS} FROM channel_categories k WHERE k.id = :id AND k.guild_id = :g"
            if c.fetchone(select, where) is None:
                return None
            if sets:
                c.execute(
                    f"UPDATE channel_categories SET {sets} WHERE id = :id AND guild_id = :g",
                    {**params, **where},
                )
                _audit(c, actor_id, "category_update", guild_id, "category", category_id, params)
            return c.fetchone(select, where)

        return await self.engine.write(fn)

    async def delete_category(
        self, guild_id: str, category_id: str, actor_id: str
    ) -> tuple[Row, list[Row]] | None:
        """Delete the category; return it and its channels as they are now (uncategorised)."""

        def fn(c: Conn) -> tuple[Row, list[Row]] | None:
            where = {"id": category_id, "g": guild_id}
            row = c.fetchone(
                f"SELECT {_CATEGORY_COLS} FROM channel_categories k WHERE k.id = :id AND k.guild_id = :g",
                where,
            )
            if row is None:
                return None
            moved = [
                r["id"]
                for r in c.fetchall("SELECT id FROM channels WHERE category_id = :id", {"id": category_id})
            ]
            c.execute("DELETE FROM channel_categories WHERE id = :id AND guild_id = :g", where)
            _audit(c, actor_id, "category_delete", guild_id, "category", category_id, {"name": row["name"]})
            channels = [
                ch
                for ch in c.fetchall(
                    f"SELECT {_CHANNEL_COLS} FROM channels c WHERE c.guild_id = :g" + _CHANNEL_ORDER,
                    {"g": guild_id},
                )
                if ch["id"] in moved
            ]
            return row, channels

        return await self.engine.write(fn)

    # -- roles ------------------------------------------------------------------------------
    async def role(self, guild_id: str, role_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {_ROLE_COLS} FROM guild_roles r WHERE r.id = :id AND r.guild_id = :g",
                {"id": role_id, "g": guild_id},
            )
        )

    async def create_role(
        self, guild_id: str, actor_id: str, name: str, permissions: int, position: int
    ) -> Row:
        def fn(c: Conn) -> Row:
            role_id = str(uuid.uuid4())
            c.execute(
                "INSERT INTO guild_roles (id, guild_id, name, permissions, position, is_default, created_at)"
                " VALUES (:id, :g, :name, :perms, :pos, FALSE, :now)",
                {
                    "id": role_id,
                    "g": guild_id,
                    "name": name,
                    "perms": permissions,
                    "pos": position,
                    "now": now_ms(),
                },
            )
            _audit(
                c,
                actor_id,
                "role_create",
                guild_id,
                "role",
                role_id,
                {"name": name, "permissions": permissions, "position": position},
            )
            row = c.fetchone(f"SELECT {_ROLE_COLS} FROM guild_roles r WHERE r.id = :id", {"id": role_id})
            assert row is not None
            return row

        return await self.engine.write(fn)

    async def update_role(
        self, guild_id: str, role_id: str, actor_id: str, changes: dict[str, Any]
    ) -> Row | None:
        sets, params = _set_clause(changes, frozenset({"name", "permissions", "position"}))

        def fn(c: Conn) -> Row | None:
            where = {"id": role_id, "g": guild_id}
            select = f"SELECT {_ROLE_COLS} FROM guild_roles r WHERE r.id = :id AND r.guild_id = :g"
            before = c.fetchone(select, where)
            if before is None or not sets:
                return before
            c.execute(f"UPDATE guild_roles SET {sets} WHERE id = :id AND guild_id = :g", {**params, **where})
            _audit(c, actor_id, "role_update", guild_id, "role", role_id, params)
            return c.fetchone(select, where)

        return await self.engine.write(fn)

    async def delete_role(self, guild_id: str, role_id: str, actor_id: str) -> Row | None:
        def fn(c: Conn) -> Row | None:
            where = {"id": role_id, "g": guild_id}
            row = c.fetchone(
                f"SELECT {_ROLE_COLS} FROM guild_roles r WHERE r.id = :id AND r.guild_id = :g", where
            )
            if row is None:
                return None
            c.execute("DELETE FROM guild_roles WHERE id = :id AND guild_id = :g", where)
            _audit(c, actor_id, "role_delete", guild_id, "role", role_id, {"name": row["name"]})
            return row

        return await self.engine.write(fn)

    # -- members ----------------------------------------------------------------------------
    async def members(
        self, guild_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[Row] | None:
        """Members in join order (then user id); a page of ``limit`` after member ``after``
        (keyset on joined_at, user_id). None when ``after`` is not a member."""

        def fn(c: Conn) -> list[Row] | None:
            if after is None:
                return _members(c, guild_id, limit=limit)
            joined = c.fetchval(
                "SELECT joined_at FROM guild_members WHERE guild_id = :g AND user_id = :u",
                {"g": guild_id, "u": after},
            )
            if joined is None:
                return None
            return _members(c, guild_id, after=(joined, after), limit=limit)

        return await self.engine.read(fn)

    async def member(self, guild_id: str, user_id: str) -> Row | None:
        return await self.engine.read(lambda c: _member(c, guild_id, user_id))

    async def remove_member(
        self, guild_id: str, user_id: str, actor_id: str, action: str | None
    ) -> Row | None:
        """Remove the membership (its roles go with it); return the member as it was.

        ``action`` names the audit entry ("member_kick"); None for a member leaving by themselves.
        """

        def fn(c: Conn) -> Row | None:
            member = _member(c, guild_id, user_id)
            if member is None:
                return None
            c.execute(
                "DELETE FROM guild_members WHERE guild_id = :g AND user_id = :u",
                {"g": guild_id, "u": user_id},
            )
            if action is not None:
                _audit(c, actor_id, action, guild_id, "user", user_id)
            return member

        return await self.engine.write(fn)

    async def ban(self, guild_id: str, user_id: str, actor_id: str, reason: str | None) -> Row | None:
        """Ban the user (a member or not) and end their membership; return the member it was, if any.

        Banning an already banned user keeps the first ban. Raises NotFound for an unknown user.
        """

        def fn(c: Conn) -> Row | None:
            if c.fetchval("SELECT 1 FROM users WHERE id = :u", {"u": user_id}) is None:
                raise NotFound("user not found")
            member = _member(c, guild_id, user_id)
            if member is not None:
                c.execute(
                    "DELETE FROM guild_members WHERE guild_id = :g AND user_id = :u",
                    {"g": guild_id, "u": user_id},
                )
            added = c.execute(
                "INSERT INTO guild_bans (guild_id, user_id, reason, banned_by, created_at)"
                " VALUES (:g, :u, :reason, :actor, :now) ON CONFLICT (guild_id, user_id) DO NOTHING",
                {"g": guild_id, "u": user_id, "reason": reason, "actor": actor_id, "now": now_ms()},
            )
            if added:
                _audit(c, actor_id, "member_ban", guild_id, "user", user_id, {"reason": reason})
            return member

        return await self.engine.write(fn)

    async def unban(self, guild_id: str, user_id: str, actor_id: str) -> bool:
        def fn(c: Conn) -> bool:
            removed = c.execute(
                "DELETE FROM guild_bans WHERE guild_id = :g AND user_id = :u", {"g": guild_id, "u": user_id}
            )
            if removed:
                _audit(c, actor_id, "member_unban", guild_id, "user", user_id)
            return bool(removed)

        return await self.engine.write(fn)

    async def bans(self, guild_id: str) -> list[Row]:
        return await self.engine.read(
            lambda c: c.fetchall(
                "SELECT b.reason, b.banned_by, b.created_at AS banned_at,"
                " u.id, u.username, u.display_name, u.avatar, u.created_at,"
                " (SELECT COUNT(*) FROM system_admins a WHERE a.user_id = u.id) AS is_admin"
                " FROM guild_bans b JOIN users u ON u.id = b.user_id WHERE b.guild_id = :g"
                " ORDER BY b.created_at, u.id",
                {"g": guild_id},
            )
        )

    async def set_timeout(
        self, guild_id: str, user_id: str, until_ms: int | None, actor_id: str
    ) -> Row | None:
        def fn(c: Conn) -> Row | None:
            changed = c.execute(
                "UPDATE guild_members SET timeout_until = :until WHERE guild_id = :g AND user_id = :u",
                {"until": until_ms, "g": guild_id, "u": user_id},
            )
            if not changed:
                return None
            _audit(c, actor_id, "member_timeout", guild_id, "user", user_id, {"until": until_ms})
            return _member(c, guild_id, user_id)

        return await self.engine.write(fn)

    async def set_member_role(
        self, guild_id: str, user_id: str, role_id: str, actor_id: str, *, assigned: bool
    ) -> tuple[Row, bool] | None:
        """Assign (or remove) a role; return (member after, whether anything changed), or None
        when the user is not a member."""

        def fn(c: Conn) -> tuple[Row, bool] | None:
            params = {"g": guild_id, "u": user_id, "r": role_id}
            if c.fetchval("SELECT 1 FROM guild_members WHERE guild_id = :g AND user_id = :u", params) is None:
                return None
            if assigned:
                changed = c.execute(
                    "INSERT INTO guild_member_roles (guild_id, user_id, role_id) VALUES (:g, :u, :r)"
                    " ON CONFLICT (guild_id, user_id, role_id) DO NOTHING",
                    params,
                )
            else:
                changed = c.execute(
                    "DELETE FROM guild_member_roles WHERE guild_id = :g AND user_id = :u AND role_id = :r",
                    params,
                )
            if changed:
                action = "member_role_add" if assigned else "member_role_remove"
                _audit(c, actor_id, action, guild_id, "user", user_id, {"role_id": role_id})
            member = _member(c, guild_id, user_id)
            assert member is not None
            return member, bool(changed)

        return await self.engine.write(fn)

    # -- overrides --------------------------------------------------------------------------
    async def override(self, channel_id: str, role_id: str) -> tuple[int, int] | None:
        row = await self.engine.read(
            lambda c: c.fetchone(
                "SELECT allow, deny FROM channel_overrides WHERE channel_id = :c AND role_id = :r",
                {"c": channel_id, "r": role_id},
            )
        )
        return None if row is None else (int(row["allow"]), int(row["deny"]))

    async def set_override(
        self, guild_id: str, channel_id: str, role_id: str, allow: int, deny: int, actor_id: str
    ) -> None:
        def fn(c: Conn) -> None:
            c.execute(
                "INSERT INTO channel_overrides (channel_id, role_id, allow, deny) VALUES (:c, :r, :a, :d)"
                " ON CONFLICT (channel_id, role_id)"
                " DO UPDATE SET allow = excluded.allow, deny = excluded.deny",
                {"c": channel_id, "r": role_id, "a": allow, "d": deny},
            )
            _audit(
                c,
                actor_id,
                "channel_override_update",
                guild_id,
                "channel",
                channel_id,
                {"role_id": role_id, "allow": allow, "deny": deny},
            )

        await self.engine.write(fn)

    async def delete_override(self, guild_id: str, channel_id: str, role_id: str, actor_id: str) -> bool:
        def fn(c: Conn) -> bool:
            removed = c.execute(
                "DELETE FROM channel_overrides WHERE channel_id = :c AND role_id = :r",
                {"c": channel_id, "r": role_id},
            )
            if removed:
                _audit(
                    c,
                    actor_id,
                    "channel_override_delete",
                    guild_id,
                    "channel",
                    channel_id,
                    {"role_id": role_id},
                )
            return bool(removed)

        return await self.engine.write(fn)

    # -- invites ----------------------------------------------------------------------------
    async def create_invite(
        self, code: str, guild_id: str, inviter_id: str, max_uses: int | None, expires_at: int | None
    ) -> Row | None:
        """Insert the invite; None when the code is already taken (the caller draws another)."""

        def fn(c: Conn) -> Row | None:
            added = c.execute(
                "INSERT INTO invites (code, guild_id, inviter_id, max_uses, expires_at, created_at)"
                " VALUES (:code, :g, :u, :max, :exp, :now) ON CONFLICT (code) DO NOTHING",
                {
                    "code": code,
                    "g": guild_id,
                    "u": inviter_id,
                    "max": max_uses,
                    "exp": expires_at,
                    "now": now_ms(),
                },
            )
            if not added:
                return None
            _audit(
                c,
                inviter_id,
                "invite_create",
                guild_id,
                "invite",
                code,
                {"max_uses": max_uses, "expires_at": expires_at},
            )
            return c.fetchone(f"SELECT {_INVITE_COLS} FROM invites i WHERE i.code = :code", {"code": code})

        return await self.engine.write(fn)

    async def invite(self, code: str) -> Row | None:
        """The invite with its guild's name and icon (for previews), usable or not."""
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {_INVITE_COLS}, g.name AS guild_name, g.icon AS guild_icon FROM invites i"
                " JOIN guilds g ON g.id = i.guild_id WHERE i.code = :code",
                {"code": code},
            )
        )

    async def invites(self, guild_id: str) -> list[Row]:
        return await self.engine.read(
            lambda c: c.fetchall(
                f"SELECT {_INVITE_COLS} FROM invites i WHERE i.guild_id = :g ORDER BY i.created_at, i.code",
                {"g": guild_id},
            )
        )

    async def delete_invite(self, code: str, actor_id: str) -> bool:
        def fn(c: Conn) -> bool:
            row = c.fetchone("SELECT guild_id FROM invites WHERE code = :code", {"code": code})
            if row is None:
                return False
            c.execute("DELETE FROM invites WHERE code = :code", {"code": code})
            _audit(c, actor_id, "invite_delete", row["guild_id"], "invite", code)
            return True

        return await self.engine.write(fn)

    async def join(self, code: str, user_id: str) -> tuple[JoinOutcome, Row | None]:
        """Use the invite: (JOINED, member) or (ALREADY_MEMBER, member) or (INVALID|BANNED, None).

        A member presenting any invite of their guild again consumes no use. A use is only
        counted while the invite is still valid, in the same statement that checks it, so
        concurrent joins never overshoot max_uses.
        """

        def fn(c: Conn) -> tuple[JoinOutcome, Row | None]:
            now = now_ms()
            guild_id = c.fetchval("SELECT guild_id FROM invites WHERE code = :code", {"code": code})
            if guild_id is None:
                return JoinOutcome.INVALID, None
            params = {"g": guild_id, "u": user_id, "now": now, "code": code}
            member = _member(c, guild_id, user_id)
            if member is not None:
                return JoinOutcome.ALREADY_MEMBER, member
            if (
                c.fetchval("SELECT 1 FROM guild_bans WHERE guild_id = :g AND user_id = :u", params)
                is not None
            ):
                return JoinOutcome.BANNED, None
            used = c.execute(
                "UPDATE invites SET uses = uses + 1 WHERE code = :code"
                " AND (max_uses IS NULL OR uses < max_uses) AND (expires_at IS NULL OR expires_at > :now)",
                params,
            )
            if used != 1:
                return JoinOutcome.INVALID, None
            added = c.execute(
                "INSERT INTO guild_members (guild_id, user_id, joined_at) VALUES (:g, :u, :now)"
                " ON CONFLICT (guild_id, user_id) DO NOTHING",
                params,
            )
            if not added:
                # A concurrent join of the same user won: give the use back.
                c.execute("UPDATE invites SET uses = uses - 1 WHERE code = :code", params)
                return JoinOutcome.ALREADY_MEMBER, _member(c, guild_id, user_id)
            return JoinOutcome.JOINED, _member(c, guild_id, user_id)

        return await self.engine.write(fn)

    # -- audit log --------------------------------------------------------------------------
    async def audit_log(self, guild_id: str, limit: int, before: str | None) -> list[Row]:
        """Newest first; ``before`` is an entry id (entries strictly older than it)."""

        def fn(c: Conn) -> list[Row]:
            params: dict[str, Any] = {"g": guild_id, "limit": limit}
            where = "guild_id = :g"
            if before is not None:
                anchor = c.fetchone(
                    "SELECT created_at FROM audit_log WHERE id = :b AND guild_id = :g",
                    {"b": before, "g": guild_id},
                )
                if anchor is None:
                    return []
                where += " AND (created_at < :t OR (created_at = :t AND id < :b))"
                params.update(t=anchor["created_at"], b=before)
            return c.fetchall(
                "SELECT id, actor_id, action, target_type, target_id, guild_id, details, created_at"
                f" FROM audit_log WHERE {where} ORDER BY created_at DESC, id DESC LIMIT :limit",
                params,
            )

        return await self.engine.read(fn)


def _blob_keys(c: Conn, column: str, value: str) -> list[str]:
    """Blob keys of the attachments of every message whose ``column`` is ``value``."""
    rows = c.fetchall(
        "SELECT a.storage_key FROM file_attachments a JOIN messages m ON m.id = a.message_id"
        f" WHERE {column} = :v",
        {"v": value},
    )
    return [r["storage_key"] for r in rows]
