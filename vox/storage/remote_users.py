"""Queries for federated identities and messages rebuilt from other servers (docs/federation.md).

A user of another server is a ``users`` row named ``name@domain`` with ``home_domain`` set and
no password; ``remote_user_id`` is their id on their home server. Relayed messages carry
``remote_origin`` and ``remote_id`` beside our own id, and a unique index on the pair makes a
redelivered relay a no-op.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from vox.storage.base import Conn, Engine, Row
from vox.storage.messages import NewMessage

__all__ = ["RemoteProfile", "RemoteUsers"]

_IDENTITY_COLS = (
    "u.id, u.username, u.display_name, u.avatar, u.home_domain, u.remote_user_id, u.disabled, u.created_at"
)


@dataclass(frozen=True, slots=True)
class RemoteProfile:
    """What a home server says about one of its users."""

    name: str
    domain: str
    remote_user_id: str
    display_name: str | None
    avatar: str | None
    # False when only the identity is known (a voucher): the stored profile fields are kept.
    complete: bool = True

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"


class RemoteUsers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def upsert(self, profile: RemoteProfile, now: int) -> Row | None:
        """The local row of a remote user, created or refreshed from ``profile``; None when the
        name is held by a local account (which cannot happen with valid local usernames)."""

        def fn(c: Conn) -> Row | None:
            key = profile.address.lower()
            row = c.fetchone(f"SELECT {_IDENTITY_COLS} FROM users u WHERE u.username_lower = :k", {"k": key})
            if row is None:
                # Two relays naming one new user race here: the loser's insert does nothing.
                c.execute(
                    "INSERT INTO users (id, username, username_lower, display_name, avatar, password_hash,"
                    " status, home_domain, remote_user_id, created_at) VALUES (:id, :name, :k, :dn, :av,"
                    " NULL, 'offline', :dom, :rid, :now) ON CONFLICT (username_lower) DO NOTHING",
                    {
                        "id": str(uuid.uuid4()),
                        "name": profile.address,
                        "k": key,
                        "dn": profile.display_name,
                        "av": profile.avatar,
                        "dom": profile.domain,
                        "rid": profile.remote_user_id,
                        "now": now,
                    },
                )
                row = c.fetchone(
                    f"SELECT {_IDENTITY_COLS} FROM users u WHERE u.username_lower = :k", {"k": key}
                )
            if row is None or row["home_domain"] != profile.domain:
                return None
            wanted = {"dn": profile.display_name, "av": profile.avatar, "rid": profile.remote_user_id}
            if not profile.complete:
                wanted.update(dn=row["display_name"], av=row["avatar"])
            if (row["display_name"], row["avatar"], row["remote_user_id"]) != tuple(wanted.values()):
                c.execute(
                    "UPDATE users SET display_name = :dn, avatar = :av, remote_user_id = :rid WHERE id = :id",
                    {**wanted, "id": row["id"]},
                )
            return c.fetchone(f"SELECT {_IDENTITY_COLS} FROM users u WHERE u.username_lower = :k", {"k": key})

        return await self.engine.write(fn)

    async def by_address(self, address: str) -> Row | None:
        """The local row of a remote user by ``name@domain``, if this server knows them."""
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {_IDENTITY_COLS} FROM users u"
                " WHERE u.username_lower = :k AND u.home_domain IS NOT NULL",
                {"k": address.lower()},
            )
        )

    async def identity(self, user_id: str) -> Row | None:
        """Any user's identity columns (``home_domain`` NULL for local users)."""
        return await self.engine.read(
            lambda c: c.fetchone(f"SELECT {_IDENTITY_COLS} FROM users u WHERE u.id = :id", {"id": user_id})
        )

    async def local_user(self, username: str) -> Row | None:
        """One of this server's own users by name (never a remote identity)."""
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {_IDENTITY_COLS} FROM users u WHERE u.username_lower = :k AND u.home_domain IS NULL",
                {"k": username.lower()},
            )
        )

    async def channel_recipients(self, channel_id: str) -> list[Row]:
        """The identity columns of every recipient of a DM."""
        return await self.engine.read(
            lambda c: c.fetchall(
                f"SELECT {_IDENTITY_COLS} FROM dm_recipients r JOIN users u ON u.id = r.user_id"
                " WHERE r.channel_id = :ch ORDER BY u.id",
                {"ch": channel_id},
            )
        )

    async def remote_contacts(self, user_id: str) -> list[Row]:
        """Remote users who share a DM with ``user_id``: who hears their presence elsewhere."""
        return await self.engine.read(
            lambda c: c.fetchall(
                f"SELECT DISTINCT {_IDENTITY_COLS} FROM dm_recipients mine"
                " JOIN dm_recipients other ON other.channel_id = mine.channel_id AND other.user_id <> :u"
                " JOIN users u ON u.id = other.user_id"
                " WHERE mine.user_id = :u AND u.home_domain IS NOT NULL",
                {"u": user_id},
            )
        )

    async def local_contacts(self, remote_id: str) -> list[str]:
        """Ids of local users who share a DM with the remote user ``remote_id``."""
        rows = await self.engine.read(
            lambda c: c.fetchall(
                "SELECT DISTINCT u.id FROM dm_recipients theirs"
                " JOIN dm_recipients mine ON mine.channel_id = theirs.channel_id AND mine.user_id <> :r"
                " JOIN users u ON u.id = mine.user_id"
                " WHERE theirs.user_id = :r AND u.home_domain IS NULL",
                {"r": remote_id},
            )
        )
        return [str(r["id"]) for r in rows]

    async def insert_relayed(self, new: NewMessage, origin: str, remote_id: str) -> bool:
        """Store a relayed message under our own id; False when (origin, remote_id) is already
        stored (a redelivery), in which case nothing is written."""

        def fn(c: Conn) -> bool:
            inserted = c.execute(
                "INSERT INTO messages (id, channel_id, guild_id, user_id, content, encrypted, nonce,"
                " reply_to, mention_type, mentions, created_at, remote_origin, remote_id)"
                " VALUES (:id, :ch, NULL, :u, :content, :enc, :nonce, NULL, NULL, :mentions, :now,"
                " :origin, :rid) ON CONFLICT DO NOTHING",
                {
                    "id": new.id,
                    "ch": new.channel_id,
                    "u": new.user_id,
                    "content": new.content,
                    "enc": new.encrypted,
                    "nonce": new.nonce,
                    "mentions": json.dumps(list(new.mentions)),
                    "now": new.created_at,
                    "origin": origin,
                    "rid": remote_id,
                },
            )
            return bool(inserted)

        return await self.engine.write(fn)
