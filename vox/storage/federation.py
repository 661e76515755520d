"""Queries for federation: the durable outbox and the inbox's record of processed deliveries.

The outbox is delivered per destination strictly in id order: only the oldest row of a
destination (its head) is ever claimed, and a claim is a lease on that row (``lease_until``,
``lease_owner``), taken by a conditional UPDATE so that of several daemons sharing the database
exactly one delivers a destination at a time. A delivered row is deleted; a failed one gets its
next attempt time and its lease back. Rows never expire: a peer that is down for days still gets
everything, in order, when it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from vox.storage.base import Conn, Engine

__all__ = ["FederationStore", "OutboxHead", "OutboxRow"]

_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    destination: str
    kind: str
    payload: str  # JSON text, as enqueued
    created_at: int
    attempts: int


@dataclass(frozen=True, slots=True)
class OutboxHead:
    """The oldest undelivered row of one destination and when it may next be tried."""

    destination: str
    id: int
    next_attempt_at: int
    lease_until: int
    pending: int


class FederationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def enqueue(self, destination: str, kind: str, payload: str, now: int) -> int:
        def tx(c: Conn) -> int:
            row = c.fetchone(
                "INSERT INTO federation_outbox (destination, kind, payload, created_at, next_attempt_at)"
                " VALUES (:destination, :kind, :payload, :now, :now) RETURNING id",
                {"destination": destination, "kind": kind, "payload": payload, "now": now},
            )
            assert row is not None
            return int(row["id"])

        return await self.engine.write(tx)

    async def heads(self) -> list[OutboxHead]:
        def tx(c: Conn) -> list[OutboxHead]:
            rows = c.fetchall(
                "SELECT o.destination, o.id, o.next_attempt_at, o.lease_until, h.pending"
                " FROM federation_outbox o JOIN ("
                "   SELECT destination, MIN(id) AS head, COUNT(*) AS pending"
                "   FROM federation_outbox GROUP BY destination"
                " ) h ON h.head = o.id"
            )
            return [
                OutboxHead(
                    r["destination"],
                    int(r["id"]),
                    int(r["next_attempt_at"]),
                    int(r["lease_until"]),
                    int(r["pending"]),
                )
                for r in rows
            ]

        return await self.engine.read(tx)

    async def claim_head(self, destination: str, owner: str, now: int, lease_ms: int) -> OutboxRow | None:
        """Lease the destination's oldest row if it is due and not leased by someone else."""

        def tx(c: Conn) -> OutboxRow | None:
            params = {"destination": destination, "owner": owner, "now": now, "until": now + lease_ms}
            changed = c.execute(
                "UPDATE federation_outbox SET lease_until = :until, lease_owner = :owner"
                " WHERE id = (SELECT MIN(id) FROM federation_outbox WHERE destination = :destination)"
                " AND next_attempt_at <= :now AND (lease_until <= :now OR lease_owner = :owner)",
                params,
            )
            if not changed:
                return None
            row = c.fetchone(
                "SELECT id, destination, kind, payload, created_at, attempts FROM federation_outbox"
                " WHERE destination = :destination AND lease_owner = :owner ORDER BY id LIMIT 1",
                params,
            )
            if row is None:
                return None
            return OutboxRow(
                int(row["id"]),
                row["destination"],
                row["kind"],
                row["payload"],
                int(row["created_at"]),
                int(row["attempts"]),
            )

        return await self.engine.write(tx)

    async def delivered(self, row_id: int, owner: str) -> None:
        def tx(c: Conn) -> None:
            c.execute(
                "DELETE FROM federation_outbox WHERE id = :id AND lease_owner = :owner",
                {"id": row_id, "owner": owner},
            )

        await self.engine.write(tx)

    async def failed(self, row_id: int, owner: str, next_attempt_at: int, error: str) -> int:
        """Record a failed attempt and release the lease; return the row's attempt count."""

        def tx(c: Conn) -> int:
            c.execute(
                "UPDATE federation_outbox SET attempts = attempts + 1, next_attempt_at = :next,"
                " lease_until = 0, lease_owner = NULL, last_error = :error"
                " WHERE id = :id AND lease_owner = :owner",
                {"id": row_id, "owner": owner, "next": next_attempt_at, "error": error[:_ERROR_CHARS]},
            )
            return int(
                c.fetchval("SELECT attempts FROM federation_outbox WHERE id = :id", {"id": row_id}) or 0
            )

        return await self.engine.write(tx)

    async def release(self, row_id: int, owner: str) -> None:
        """Give a lease back without counting an attempt (the daemon is shutting down)."""

        def tx(c: Conn) -> None:
            c.execute(
                "UPDATE federation_outbox SET lease_until = 0, lease_owner = NULL"
                " WHERE id = :id AND lease_owner = :owner",
                {"id": row_id, "owner": owner},
            )

        await self.engine.write(tx)

    async def pending(self, destination: str) -> int:
        def tx(c: Conn) -> int:
            return int(
                c.fetchval(
                    "SELECT COUNT(*) FROM federation_outbox WHERE destination = :destination",
                    {"destination": destination},
                )
            )

        return await self.engine.read(tx)

    async def seen(self, origin: str, outbox_id: int) -> bool:
        def tx(c: Conn) -> bool:
            return (
                c.fetchval(
                    "SELECT 1 FROM federation_inbox_seen WHERE origin = :origin AND outbox_id = :id",
                    {"origin": origin, "id": outbox_id},
                )
                is not None
            )

        return await self.engine.read(tx)

    async def mark_seen(self, origin: str, outbox_id: int, now: int) -> None:
        def tx(c: Conn) -> None:
            c.execute(
                "INSERT INTO federation_inbox_seen (origin, outbox_id, received_at)"
                " VALUES (:origin, :id, :now) ON CONFLICT (origin, outbox_id) DO NOTHING",
                {"origin": origin, "id": outbox_id, "now": now},
            )

        await self.engine.write(tx)

    async def prune_seen(self, before: int) -> int:
        def tx(c: Conn) -> int:
            return c.execute(
                "DELETE FROM federation_inbox_seen WHERE received_at < :before", {"before": before}
            )

        return await self.engine.write(tx)
