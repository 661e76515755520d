"""Queries for users, sessions, MFA state and registration (protocol.md section 2).

Each public method is one transaction; the sync ``_fn`` bodies run in a worker thread.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass
from typing import Any

from vox.errors import Conflict, IntegrityError
from vox.storage.base import Conn, Engine, Row


def now_ms() -> int:
    return int(time.time() * 1000)


class RegistrationBlocked(enum.Enum):
    INVITE_INVALID = "invite_invalid"


@dataclass(frozen=True, slots=True)
class NewUser:
    username: str
    password_hash: str | None
    email: str | None = None
    display_name: str | None = None
    auth_method: str = "local"
    external_id: str | None = None
    invite_code: str | None = None


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    REUSED = "reused"  # an already-rotated token: the session has been revoked
    UNKNOWN = "unknown"  # never issued, expired or revoked


@dataclass(frozen=True, slots=True)
class Refresh:
    outcome: RefreshOutcome
    session_id: str | None = None
    user_id: str | None = None


class Accounts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- users ------------------------------------------------------------------------------
    async def create_user(self, new: NewUser) -> tuple[Row, bool, str | None] | RegistrationBlocked:
        """Insert the user; the first user ever becomes a system admin. Returns (user, is_admin,
        id of the guild the invite joined them to).

        Raises Conflict when the username (or email) is taken, case-insensitively.
        """

        def fn(c: Conn) -> tuple[Row, bool, str | None] | RegistrationBlocked:
            if c.dialect == "postgres":
                # Serialise "is this the first user?" between concurrent registrations.
                c.execute("LOCK TABLE system_admins IN SHARE ROW EXCLUSIVE MODE")
            now = now_ms()
            invite_guild: str | None = None
            if new.invite_code is not None:
                changed = c.execute(
                    "UPDATE invites SET uses = uses + 1 WHERE code = :code"
                    " AND (max_uses IS NULL OR uses < max_uses)"
                    " AND (expires_at IS NULL OR expires_at > :now)",
                    {"code": new.invite_code, "now": now},
                )
                if changed != 1:
                    return RegistrationBlocked.INVITE_INVALID
                invite_guild = c.fetchval(
                    "SELECT guild_id FROM invites WHERE code = :code", {"code": new.invite_code}
                )
            user_id = str(uuid.uuid4())
            row = {
                "id": user_id,
                "username": new.username,
                "username_lower": new.username.lower(),
                "email": new.email,
                "email_lower": new.email.lower() if new.email else None,
                "display_name": new.display_name,
                "password_hash": new.password_hash,
                "auth_method": new.auth_method,
                "external_id": new.external_id,
                "created_at": now,
            }
            try:
                c.execute(
                    "INSERT INTO users (id, username, username_lower, email, email_lower, display_name,"
                    " password_hash, auth_method, external_id, created_at) VALUES (:id, :username,"
                    " :username_lower, :email, :email_lower, :display_name, :password_hash, :auth_method,"
                    " :external_id, :created_at)",
                    row,
                )
            except IntegrityError:
                taken = c.fetchval(
                    "SELECT 1 FROM users WHERE username_lower = :u", {"u": row["username_lower"]}
                )
                field = "username" if taken else "email"
                raise Conflict(f"that {field} is already taken", field=field) from None
            is_admin = c.fetchval("SELECT 1 FROM system_admins") is None
            if is_admin:
                c.execute(
                    "INSERT INTO system_admins (user_id, created_at) VALUES (:u, :now)",
                    {"u": user_id, "now": now},
                )
            if invite_guild is not None:
                c.execute(
                    "INSERT INTO guild_members (guild_id, user_id, joined_at) VALUES (:g, :u, :now)",
                    {"g": invite_guild, "u": user_id, "now": now},
                )
            user = c.fetchone(_USER_SELECT + " WHERE u.id = :id", {"id": user_id})
            assert user is not None
            return user, is_admin, invite_guild

        return await self.engine.write(fn)

    async def any_user(self) -> bool:
        # Remote identities (guests, DM contacts from other servers) do not count: the first
        # account registered here still bootstraps the server.
        found = await self.engine.read(
            lambda c: c.fetchval("SELECT 1 FROM users WHERE home_domain IS NULL LIMIT 1")
        )
        return found is not None

    async def presence_audience(self, user_id: str) -> tuple[list[str], list[str]]:
        """(guild ids of the user, ids of their accepted friends): who hears their presence."""

        def fn(c: Conn) -> tuple[list[str], list[str]]:
            guilds = [
                r["guild_id"]
                for r in c.fetchall("SELECT guild_id FROM guild_members WHERE user_id = :u", {"u": user_id})
            ]
            friends = [
                r["other"]
                for r in c.fetchall(
                    "SELECT CASE WHEN requester_id = :u THEN addressee_id ELSE requester_id END AS other"
                    " FROM friendships WHERE status = 'accepted'"
                    " AND (requester_id = :u OR addressee_id = :u)",
                    {"u": user_id},
                )
            ]
            return guilds, friends

        return await self.engine.read(fn)

    async def dm_channel_ids(self, user_id: str) -> list[str]:
        return await self.engine.read(
            lambda c: [
                r["channel_id"]
                for r in c.fetchall("SELECT channel_id FROM dm_recipients WHERE user_id = :u", {"u": user_id})
            ]
        )

    async def preferred_status(self, user_id: str) -> str:
        status = await self.engine.read(
            lambda c: c.fetchval("SELECT status FROM users WHERE id = :u", {"u": user_id})
        )
        return str(status or "online")

    async def set_preferred_status(self, user_id: str, status: str) -> None:
        await self.engine.write(
            lambda c: c.execute("UPDATE users SET status = :s WHERE id = :u", {"s": status, "u": user_id})
        )

    async def user_by_id(self, user_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(_USER_SELECT + " WHERE u.id = :id", {"id": user_id})
        )

    async def user_by_username(self, username: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(_USER_SELECT + " WHERE u.username_lower = :u", {"u": username.lower()})
        )

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.engine.write(
            lambda c: c.execute(
                "UPDATE users SET password_hash = :h WHERE id = :id", {"h": password_hash, "id": user_id}
            )
        )

    async def update_profile(self, user_id: str, changes: dict[str, Any]) -> Row | None:
        allowed = {k: v for k, v in changes.items() if k in {"display_name", "avatar"}}

        def fn(c: Conn) -> Row | None:
            if allowed:
                sets = ", ".join(f"{k} = :{k}" for k in allowed)
                c.execute(f"UPDATE users SET {sets} WHERE id = :id", {**allowed, "id": user_id})
            return c.fetchone(_USER_SELECT + " WHERE u.id = :id", {"id": user_id})

        return await self.engine.write(fn)

    async def registration_policy(self) -> str | None:
        return await self.engine.read(
            lambda c: c.fetchval("SELECT value FROM server_settings WHERE key = 'registration_policy'")
        )

    async def user_guilds(self, user_id: str) -> list[Row]:
        return await self.engine.read(
            lambda c: c.fetchall(
                "SELECT g.id, g.name, g.owner_id, g.icon, g.created_at FROM guilds g"
                " JOIN guild_members m ON m.guild_id = g.id WHERE m.user_id = :u ORDER BY g.created_at",
                {"u": user_id},
            )
        )

    # -- sessions ---------------------------------------------------------------------------
    async def create_session(
        self, user_id: str, refresh_hash: str, ip: str | None, user_agent: str | None, ttl_ms: int
    ) -> str:
        session_id = str(uuid.uuid4())
        now = now_ms()
        await self.engine.write(
            lambda c: c.execute(
                "INSERT INTO sessions (id, user_id, refresh_hash, ip, user_agent, created_at, last_used_at,"
                " expires_at) VALUES (:id, :u, :h, :ip, :ua, :now, :now, :exp)",
                {
                    "id": session_id,
                    "u": user_id,
                    "h": refresh_hash,
                    "ip": ip,
                    "ua": user_agent,
                    "now": now,
                    "exp": now + ttl_ms,
                },
            )
        )
        return session_id

    async def rotate_refresh(self, presented_hash: str, new_hash: str, ttl_ms: int) -> Refresh:
        def fn(c: Conn) -> Refresh:
            now = now_ms()
            session = c.fetchone(
                "SELECT id, user_id, expires_at, revoked_at FROM sessions WHERE refresh_hash = :h",
                {"h": presented_hash},
            )
            if session is None:
                used = c.fetchone(
                    "SELECT s.id, s.user_id FROM session_refresh_history h"
                    " JOIN sessions s ON s.id = h.session_id"
                    " WHERE h.refresh_hash = :h",
                    {"h": presented_hash},
                )
                if used is None:
                    return Refresh(RefreshOutcome.UNKNOWN)
                c.execute(
                    "UPDATE sessions SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
                    {"now": now, "id": used["id"]},
                )
                return Refresh(RefreshOutcome.REUSED, used["id"], used["user_id"])
            if session["revoked_at"] is not None or session["expires_at"] <= now:
                return Refresh(RefreshOutcome.UNKNOWN)
            # Compare-and-swap on the current hash: of two concurrent refreshes with one token,
            # exactly one rotates; the other then finds the token in the history (reuse).
            changed = c.execute(
                "UPDATE sessions SET refresh_hash = :new, last_used_at = :now, expires_at = :exp"
                " WHERE id = :id AND refresh_hash = :old AND revoked_at IS NULL",
                {
                    "new": new_hash,
                    "now": now,
                    "exp": now + ttl_ms,
                    "id": session["id"],
                    "old": presented_hash,
                },
            )
            if changed != 1:
                return Refresh(RefreshOutcome.UNKNOWN)
            c.execute(
                "INSERT INTO session_refresh_history (refresh_hash, session_id, rotated_at)"
                " VALUES (:h, :s, :now)",
                {"h": presented_hash, "s": session["id"], "now": now},
            )
            return Refresh(RefreshOutcome.ROTATED, session["id"], session["user_id"])

        return await self.engine.write(fn)

    async def session_state(self, session_id: str) -> Row | None:
        """The session with its user's disabled flag: what every authenticated request checks."""
        return await self.engine.read(
            lambda c: c.fetchone(
                "SELECT s.id, s.user_id, s.expires_at, s.revoked_at, u.disabled FROM sessions s"
                " JOIN users u ON u.id = s.user_id WHERE s.id = :id",
                {"id": session_id},
            )
        )

    async def revoke_session(self, session_id: str, user_id: str) -> bool:
        return bool(
            await self.engine.write(
                lambda c: c.execute(
                    "UPDATE sessions SET revoked_at = :now"
                    " WHERE id = :id AND user_id = :u AND revoked_at IS NULL",
                    {"now": now_ms(), "id": session_id, "u": user_id},
                )
            )
        )

    async def list_sessions(self, user_id: str) -> list[Row]:
        return await self.engine.read(
            lambda c: c.fetchall(
                "SELECT id, created_at, last_used_at, ip, user_agent FROM sessions"
                " WHERE user_id = :u AND revoked_at IS NULL AND expires_at > :now ORDER BY created_at",
                {"u": user_id, "now": now_ms()},
            )
        )

    # -- MFA --------------------------------------------------------------------------------
    async def set_mfa_secret(self, user_id: str, sealed: str | None, enabled: bool) -> None:
        await self.engine.write(
            lambda c: c.execute(
                "UPDATE users SET mfa_secret_enc = :s, mfa_enabled = :e, mfa_last_step = NULL WHERE id = :id",
                {"s": sealed, "e": enabled, "id": user_id},
            )
        )

    async def accept_mfa_step(self, user_id: str, step: int, *, enable: bool = False) -> bool:
        """Record ``step`` as used unless it (or a later one) already was: replay protection."""
        sql = "UPDATE users SET mfa_last_step = :step"
        if enable:
            sql += ", mfa_enabled = TRUE"
        sql += " WHERE id = :id AND (mfa_last_step IS NULL OR mfa_last_step < :step)"
        return bool(await self.engine.write(lambda c: c.execute(sql, {"step": step, "id": user_id})))


_USER_SELECT = (
    "SELECT u.id, u.username, u.display_name, u.avatar, u.email, u.password_hash, u.mfa_enabled,"
    " u.mfa_secret_enc, u.disabled, u.created_at,"
    " (SELECT COUNT(*) FROM system_admins a WHERE a.user_id = u.id) AS is_admin"
    " FROM users u"
)
