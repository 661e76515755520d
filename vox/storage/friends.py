"""Queries for friendships and friend requests (protocol.md section 4, "Direct messages, friends,
emoji").

One ``friendships`` row per unordered pair of users (a unique index guarantees it): ``pending``
while it is a request from ``requester_id`` to ``addressee_id``, ``accepted`` once they are
friends. A request id is that row's id, so accepting keeps the id and declining, cancelling or
unfriending deletes the row. Rules (who may do what) are the service's; these methods trust
their callers, but every change is conditional on the state it expects, so two concurrent
requests can never both act on the same row.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from vox.errors import StorageError
from vox.storage.base import Conn, Engine, Row

__all__ = ["PUBLIC_USER_COLS", "Friends", "Friendship", "RequestOutcome"]

# What ``vox.services.users.public_user`` reads, for a users table aliased ``u``.
PUBLIC_USER_COLS = (
    "u.id, u.username, u.display_name, u.avatar, u.created_at,"
    " (SELECT COUNT(*) FROM system_admins a WHERE a.user_id = u.id) AS is_admin"
)

_FRIENDSHIP_COLS = "f.id, f.requester_id, f.addressee_id, f.status, f.created_at, f.accepted_at"

_ATTEMPTS = 3


def _pair(alias: str = "f.") -> str:
    """The row of the unordered pair (:a, :b)."""
    r, a = f"{alias}requester_id", f"{alias}addressee_id"
    return f"(({r} = :a AND {a} = :b) OR ({r} = :b AND {a} = :a))"


class RequestOutcome(enum.Enum):
    CREATED = "created"  # a new pending request
    ACCEPTED = "accepted"  # the other user's pending request to the caller was accepted instead
    ALREADY_FRIENDS = "already_friends"
    ALREADY_REQUESTED = "already_requested"


@dataclass(frozen=True, slots=True)
class Friendship:
    """A friendships row with both users (public user columns), read in the same transaction."""

    row: Row
    requester: Row
    addressee: Row

    @property
    def id(self) -> str:
        return str(self.row["id"])

    def other(self, user_id: str) -> Row:
        """The user of this pair who is not ``user_id``."""
        return self.addressee if self.requester["id"] == user_id else self.requester


def _user(c: Conn, user_id: str) -> Row:
    row = c.fetchone(f"SELECT {PUBLIC_USER_COLS} FROM users u WHERE u.id = :id", {"id": user_id})
    assert row is not None  # friendships rows reference users, which are never deleted
    return row


def _load(c: Conn, row: Row) -> Friendship:
    return Friendship(row, _user(c, row["requester_id"]), _user(c, row["addressee_id"]))


def _by_id(c: Conn, friendship_id: str) -> Row | None:
    return c.fetchone(f"SELECT {_FRIENDSHIP_COLS} FROM friendships f WHERE f.id = :id", {"id": friendship_id})


def _accept(c: Conn, friendship_id: str, addressee_id: str, now: int) -> Friendship | None:
    changed = c.execute(
        "UPDATE friendships SET status = 'accepted', accepted_at = :now"
        " WHERE id = :id AND addressee_id = :me AND status = 'pending'",
        {"now": now, "id": friendship_id, "me": addressee_id},
    )
    if changed != 1:
        return None
    row = _by_id(c, friendship_id)
    assert row is not None
    return _load(c, row)


class Friends:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def request(
        self, requester_id: str, addressee_id: str, now: int
    ) -> tuple[RequestOutcome, Friendship | None]:
        """Ask ``addressee_id`` to be friends, or accept their pending request to ``requester_id``."""

        def fn(c: Conn) -> tuple[RequestOutcome, Friendship | None]:
            pair = {"a": requester_id, "b": addressee_id}
            for _ in range(_ATTEMPTS):
                # ON CONFLICT, not a prior SELECT: with a concurrent request for the same pair in
                # flight, PostgreSQL waits for it here and then does nothing, and the SELECT below
                # (a new snapshot under READ COMMITTED) sees the winner's row.
                inserted = c.execute(
                    "INSERT INTO friendships (id, requester_id, addressee_id, status, created_at)"
                    " VALUES (:id, :a, :b, 'pending', :now) ON CONFLICT DO NOTHING",
                    {"id": str(uuid.uuid4()), **pair, "now": now},
                )
                row = c.fetchone(f"SELECT {_FRIENDSHIP_COLS} FROM friendships f WHERE {_pair()}", pair)
                if row is None:
                    continue  # the row that blocked the insert was deleted meanwhile
                if inserted == 1:
                    return RequestOutcome.CREATED, _load(c, row)
                if row["status"] == "accepted":
                    return RequestOutcome.ALREADY_FRIENDS, None
                if row["requester_id"] == requester_id:
                    return RequestOutcome.ALREADY_REQUESTED, None
                accepted = _accept(c, row["id"], requester_id, now)
                if accepted is not None:
                    return RequestOutcome.ACCEPTED, accepted
                # Cancelled or accepted by a concurrent request: look again.
            raise StorageError("friend request: the pair's row kept changing under this transaction")

        return await self.engine.write(fn)

    async def get(self, friendship_id: str) -> Row | None:
        return await self.engine.read(lambda c: _by_id(c, friendship_id))

    async def accept(self, friendship_id: str, addressee_id: str, now: int) -> Friendship | None:
        """Accept a pending request addressed to ``addressee_id``; None when there is no such request."""
        return await self.engine.write(lambda c: _accept(c, friendship_id, addressee_id, now))

    async def delete_request(self, friendship_id: str, user_id: str) -> bool:
        """Delete a pending request that ``user_id`` sent or received (cancel or decline)."""
        changed = await self.engine.write(
            lambda c: c.execute(
                "DELETE FROM friendships WHERE id = :id AND status = 'pending'"
                " AND (requester_id = :me OR addressee_id = :me)",
                {"id": friendship_id, "me": user_id},
            )
        )
        return changed == 1

    async def unfriend(self, user_id: str, other_id: str) -> bool:
        changed = await self.engine.write(
            lambda c: c.execute(
                f"DELETE FROM friendships WHERE status = 'accepted' AND {_pair('')}",
                {"a": user_id, "b": other_id},
            )
        )
        return changed == 1

    async def of(self, user_id: str) -> list[Row]:
        """Every friendship or request involving ``user_id``, each with the other user's public
        columns (``id`` is that user's) and the friendship's as ``f_*``."""
        return await self.engine.read(
            lambda c: c.fetchall(
                f"SELECT {PUBLIC_USER_COLS}, f.id AS f_id, f.requester_id AS f_requester_id,"
                " f.status AS f_status, f.created_at AS f_created_at, f.accepted_at AS f_accepted_at"
                " FROM friendships f JOIN users u ON u.id ="
                " CASE WHEN f.requester_id = :me THEN f.addressee_id ELSE f.requester_id END"
                " WHERE f.requester_id = :me OR f.addressee_id = :me",
                {"me": user_id},
            )
        )
