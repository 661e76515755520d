"""Serialising check-then-write transactions that no unique constraint can guard.

Some rules span several rows ("at most one 1:1 DM per pair of users", "at most N emoji per
guild"), so a constraint cannot enforce them and two concurrent transactions could both pass the
check. ``serialize(c, scope, key)`` makes such transactions on the same ``(scope, key)`` run one
after the other:

- SQLite: nothing to do; every write transaction already holds the database's single write lock
  from its start (``BEGIN IMMEDIATE``).
- PostgreSQL: a transaction-scoped advisory lock, released at commit or rollback, so it holds
  across daemons sharing the database. The two-integer form lives in a different lock space from
  the single-bigint one the migrator takes. Keys are hashed to 32 bits; two keys that collide
  merely wait for each other.
"""

from __future__ import annotations

import enum
import hashlib

from vox.storage.base import Conn

__all__ = ["LockScope", "serialize"]


class LockScope(enum.IntEnum):
    """The first half of an advisory lock key: one value per kind of rule."""

    DM_PAIR = 1
    GUILD_EMOJI = 2


def _key32(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big", signed=True)


def serialize(c: Conn, scope: LockScope, key: str) -> None:
    """Wait until no other write transaction holds ``(scope, key)``; hold it until this one ends."""
    if c.dialect == "postgres":
        c.fetchval(
            "SELECT pg_advisory_xact_lock(CAST(:scope AS INTEGER), CAST(:key AS INTEGER))",
            {"scope": int(scope), "key": _key32(key)},
        )
