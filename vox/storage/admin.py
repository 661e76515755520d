"""Queries for server administration (protocol.md section 10): system admins, elevated
sessions, the user and guild lists, runtime settings, account disabling and the server-wide
audit log.

Every mutation writes its audit_log row (actor, target, client address, time) in the same
transaction as the change, so the log cannot miss an action that happened nor record one that
did not.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from vox.storage.accounts import now_ms
from vox.storage.base import Conn, Engine, Row

__all__ = ["AdminStore", "Disabled", "server_audit"]

_ADMIN_USER_SELECT = (
    "SELECT u.id, u.username, u.display_name, u.avatar, u.email, u.auth_method, u.mfa_enabled,"
    " u.disabled, u.created_at,"
    " (SELECT COUNT(*) FROM system_admins a WHERE a.user_id = u.id) AS is_admin"
    " FROM users u"
)


def server_audit(
    c: Conn,
    actor_id: str | None,
    action: str,
    target_type: str | None,
    target_id: str | None,
    details: dict[str, Any] | None,
    ip: str | None,
) -> None:
    """One server-wide audit entry (guild_id NULL), inside the caller's transaction."""
    now = now_ms()
    # Strictly after the newest entry, so "newest first" is the order things happened in even
    # when several land within one millisecond (the guild log does the same per guild).
    last = c.fetchval("SELECT MAX(created_at) FROM audit_log")
    if last is not None and int(last) >= now:
        now = int(last) + 1
    c.execute(
        "INSERT INTO audit_log (id, actor_id, action, target_type, target_id, guild_id, details,"
        " created_at, ip) VALUES (:id, :actor, :action, :ttype, :tid, NULL, :details, :now, :ip)",
        {
            "id": str(uuid.uuid4()),
            "actor": actor_id,
            "action": action,
            "ttype": target_type,
            "tid": target_id,
            "details": msgspec.json.encode(details or {}).decode(),
            "now": now,
            "ip": ip,
        },
    )


@dataclass(frozen=True, slots=True)
class Disabled:
    user: Row
    # Sessions this change revoked: their gateway connections are told to close.
    revoked_sessions: list[str]


class AdminStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- admins and elevation -----------------------------------------------------------------
    async def is_admin(self, user_id: str) -> bool:
        # A federated identity (guest from another server) is never an admin here, even if
        # someone put it in system_admins (docs/federation.md).
        found = await self.engine.read(
            lambda c: c.fetchval(
                "SELECT 1 FROM system_admins a JOIN users u ON u.id = a.user_id"
                " WHERE a.user_id = :u AND u.home_domain IS NULL",
                {"u": user_id},
            )
        )
        return found is not None

    async def elevated_until(self, session_id: str) -> int | None:
        """Epoch ms until which ``session_id`` is elevated (may be in the past), or None."""
        value = await self.engine.read(
            lambda c: c.fetchval(
                "SELECT elevated_until FROM elevated_sessions WHERE session_id = :s", {"s": session_id}
            )
        )
        return None if value is None else int(value)

    async def elevate(self, user_id: str, session_id: str, until_ms: int, ip: str | None) -> None:
        def fn(c: Conn) -> None:
            # Delete-then-insert is an upsert both dialects run unchanged.
            c.execute("DELETE FROM elevated_sessions WHERE session_id = :s", {"s": session_id})
            c.execute(
                "INSERT INTO elevated_sessions (session_id, elevated_until) VALUES (:s, :until)",
                {"s": session_id, "until": until_ms},
            )
            server_audit(c, user_id, "admin_elevate", "session", session_id, {"until": until_ms}, ip)

        await self.engine.write(fn)

    # -- users ------------------------------------------------------------------------------
    async def user(self, user_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(_ADMIN_USER_SELECT + " WHERE u.id = :id", {"id": user_id})
        )

    async def users(self, limit: int, after: str | None, query: str | None) -> list[Row]:
        """Users in creation order; ``after`` is a user id, ``query`` a username substring."""

        def fn(c: Conn) -> list[Row]:
            params: dict[str, Any] = {"limit": limit}
            where = ["1 = 1"]
            if after is not None:
                anchor = c.fetchval("SELECT created_at FROM users WHERE id = :a", {"a": after})
                if anchor is None:
                    return []
                where.append("(u.created_at > :t OR (u.created_at = :t AND u.id > :a))")
                params.update(t=anchor, a=after)
            if query:
                # The pattern's own wildcards are escaped: the query is matched literally.
                escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                where.append("u.username_lower LIKE :q ESCAPE '\\'")
                params["q"] = f"%{escaped}%"
            return c.fetchall(
                _ADMIN_USER_SELECT + f" WHERE {' AND '.join(where)} ORDER BY u.created_at, u.id LIMIT :limit",
                params,
            )

        return await self.engine.read(fn)

    async def set_disabled(
        self, actor_id: str | None, user_id: str, disabled: bool, ip: str | None
    ) -> Disabled | None:
        """Disable (revoking every live session) or enable the account; None when unknown."""

        def fn(c: Conn) -> Disabled | None:
            if c.fetchval("SELECT 1 FROM users WHERE id = :u", {"u": user_id}) is None:
                return None
            now = now_ms()
            c.execute("UPDATE users SET disabled = :d WHERE id = :u", {"d": disabled, "u": user_id})
            revoked: list[str] = []
            if disabled:
                revoked = [
                    r["id"]
                    for r in c.fetchall(
                        "SELECT id FROM sessions WHERE user_id = :u AND revoked_at IS NULL",
                        {"u": user_id},
                    )
                ]
                c.execute(
                    "UPDATE sessions SET revoked_at = :now WHERE user_id = :u AND revoked_at IS NULL",
                    {"now": now, "u": user_id},
                )
            action = "user_disable" if disabled else "user_enable"
            server_audit(c, actor_id, action, "user", user_id, {"sessions_revoked": len(revoked)}, ip)
            user = c.fetchone(_ADMIN_USER_SELECT + " WHERE u.id = :id", {"id": user_id})
            assert user is not None
            return Disabled(user, revoked)

        return await self.engine.write(fn)

    # -- guilds -----------------------------------------------------------------------------
    async def guilds(self, limit: int, after: str | None) -> list[Row]:
        def fn(c: Conn) -> list[Row]:
            params: dict[str, Any] = {"limit": limit}
            where = "1 = 1"
            if after is not None:
                anchor = c.fetchval("SELECT created_at FROM guilds WHERE id = :a", {"a": after})
                if anchor is None:
                    return []
                where = "(g.created_at > :t OR (g.created_at = :t AND g.id > :a))"
                params.update(t=anchor, a=after)
            return c.fetchall(
                "SELECT g.id, g.name, g.owner_id, g.icon, g.created_at,"
                " (SELECT COUNT(*) FROM guild_members m WHERE m.guild_id = g.id) AS member_count"
                f" FROM guilds g WHERE {where} ORDER BY g.created_at, g.id LIMIT :limit",
                params,
            )

        return await self.engine.read(fn)

    # -- settings ---------------------------------------------------------------------------
    async def settings(self) -> dict[str, Any]:
        rows = await self.engine.read(lambda c: c.fetchall("SELECT key, value FROM server_settings"))
        out: dict[str, Any] = {}
        for r in rows:
            try:
                out[r["key"]] = msgspec.json.decode(r["value"])
            except msgspec.DecodeError:
                # Older rows stored bare strings (registration_policy); keep them readable.
                out[r["key"]] = r["value"]
        return out

    async def update_settings(self, actor_id: str, changes: dict[str, Any], ip: str | None) -> None:
        def fn(c: Conn) -> None:
            for key, value in changes.items():
                c.execute("DELETE FROM server_settings WHERE key = :k", {"k": key})
                if value is not None:
                    # registration_policy is read elsewhere as plain text; other values are JSON.
                    stored = value if isinstance(value, str) else msgspec.json.encode(value).decode()
                    c.execute(
                        "INSERT INTO server_settings (key, value) VALUES (:k, :v)", {"k": key, "v": stored}
                    )
            server_audit(c, actor_id, "settings_update", "settings", None, changes, ip)

        await self.engine.write(fn)

    # -- audit log --------------------------------------------------------------------------
    async def audit_log(
        self,
        limit: int,
        before: str | None,
        *,
        action: str | None = None,
        actor_id: str | None = None,
        guild_id: str | None = None,
    ) -> list[Row]:
        """Every entry (server-wide and guild ones), newest first; ``before`` is an entry id."""

        def fn(c: Conn) -> list[Row]:
            params: dict[str, Any] = {"limit": limit}
            where = ["1 = 1"]
            if before is not None:
                anchor = c.fetchval("SELECT created_at FROM audit_log WHERE id = :b", {"b": before})
                if anchor is None:
                    return []
                where.append("(created_at < :t OR (created_at = :t AND id < :b))")
                params.update(t=anchor, b=before)
            for column, value in (("action", action), ("actor_id", actor_id), ("guild_id", guild_id)):
                if value is not None:
                    where.append(f"{column} = :{column}")
                    params[column] = value
            return c.fetchall(
                "SELECT id, actor_id, action, target_type, target_id, guild_id, details, ip, created_at"
                f" FROM audit_log WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC"
                " LIMIT :limit",
                params,
            )

        return await self.engine.read(fn)

    # -- command line -----------------------------------------------------------------------
    async def create_admin(self, username: str, password_hash: str) -> tuple[str, bool]:
        """Create ``username`` as a system admin, or make the existing account one.

        Returns (user id, whether the account was created).
        """

        def fn(c: Conn) -> tuple[str, bool]:
            if c.dialect == "postgres":
                c.execute("LOCK TABLE system_admins IN SHARE ROW EXCLUSIVE MODE")
            now = now_ms()
            existing = c.fetchval("SELECT id FROM users WHERE username_lower = :u", {"u": username.lower()})
            created = existing is None
            user_id = str(existing) if existing is not None else str(uuid.uuid4())
            if created:
                c.execute(
                    "INSERT INTO users (id, username, username_lower, password_hash, auth_method,"
                    " created_at) VALUES (:id, :u, :ul, :h, 'local', :now)",
                    {"id": user_id, "u": username, "ul": username.lower(), "h": password_hash, "now": now},
                )
            if c.fetchval("SELECT 1 FROM system_admins WHERE user_id = :u", {"u": user_id}) is None:
                c.execute(
                    "INSERT INTO system_admins (user_id, created_at) VALUES (:u, :now)",
                    {"u": user_id, "now": now},
                )
            server_audit(c, None, "admin_create", "user", user_id, {"via": "cli", "created": created}, None)
            return user_id, created

        return await self.engine.write(fn)

    async def reset_password(self, username: str, password_hash: str) -> tuple[str, list[str]] | None:
        """Set the password and revoke every session; (user id, revoked sessions) or None."""

        def fn(c: Conn) -> tuple[str, list[str]] | None:
            # Remote identities have no password here: they sign in at their home server.
            user_id = c.fetchval(
                "SELECT id FROM users WHERE username_lower = :u AND home_domain IS NULL",
                {"u": username.lower()},
            )
            if user_id is None:
                return None
            c.execute("UPDATE users SET password_hash = :h WHERE id = :u", {"h": password_hash, "u": user_id})
            revoked = [
                r["id"]
                for r in c.fetchall(
                    "SELECT id FROM sessions WHERE user_id = :u AND revoked_at IS NULL", {"u": user_id}
                )
            ]
            c.execute(
                "UPDATE sessions SET revoked_at = :now WHERE user_id = :u AND revoked_at IS NULL",
                {"now": now_ms(), "u": user_id},
            )
            server_audit(c, None, "password_reset", "user", str(user_id), {"via": "cli"}, None)
            return str(user_id), revoked

        return await self.engine.write(fn)
