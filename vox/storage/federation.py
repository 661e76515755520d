"""Queries for federation: the durable outbox and the inbox's record of processed deliveries.

The outbox is delivered per destination strictly in id order: a claim starts at the oldest row
of a destination (its head) and leases it with the rows right behind it (a batch), taken by a
conditional UPDATE of the head (``lease_until``, ``lease_owner``) so that of several daemons
sharing the database exactly one delivers a destination at a time. Delivered rows are deleted in
one statement; on a failure the head gets its next attempt time and the leases are given back.
Rows never expire: a peer that is down for days still gets everything, in order, when it returns.
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
    created_at: int  # the head's, so the age of the oldest row owed to this destination


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
                "SELECT o.destination, o.id, o.next_attempt_at, o.lease_until, h.pending, o.created_at"
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
                    int(r["created_at"]),
                )
                for r in rows
            ]

        return await self.engine.read(tx)

    async def claim_batch(
        self, destination: str, owner: str, now: int, lease_ms: int, *, limit: int, max_bytes: int
    ) -> list[OutboxRow]:
        """Lease the destination's oldest rows, at most ``limit`` of them and about ``max_bytes``
        of kind and payload (the head always), in one transaction; [] when the head is not due
        or someone else holds its lease.

        The conditional UPDATE of the head is what makes one daemon of several the destination's
        deliverer; the rows behind the head are leased with it so a second daemon that sees the
        head leased leaves the whole batch alone.
        """

        def tx(c: Conn) -> list[OutboxRow]:
            params = {"destination": destination, "owner": owner, "now": now, "until": now + lease_ms}
            changed = c.execute(
                "UPDATE federation_outbox SET lease_until = :until, lease_owner = :owner"
                " WHERE id = (SELECT MIN(id) FROM federation_outbox WHERE destination = :destination)"
                " AND next_attempt_at <= :now AND (lease_until <= :now OR lease_owner = :owner)",
                params,
            )
            if not changed:
                return []
            found = c.fetchall(
                "SELECT id, destination, kind, payload, created_at, attempts FROM federation_outbox"
                " WHERE destination = :destination ORDER BY id LIMIT :limit",
                {**params, "limit": max(limit, 1)},
            )
            batch: list[OutboxRow] = []
            size = 0
            for r in found:
                size += len(r["kind"]) + len(r["payload"])
                if batch and size > max_bytes:
                    break
                batch.append(
                    OutboxRow(
                        int(r["id"]),
                        r["destination"],
                        r["kind"],
                        r["payload"],
                        int(r["created_at"]),
                        int(r["attempts"]),
                    )
                )
            if len(batch) > 1:
                c.execute(
                    "UPDATE federation_outbox SET lease_until = :until, lease_owner = :owner"
                    " WHERE destination = :destination AND id > :first AND id <= :last",
                    {**params, "first": batch[0].id, "last": batch[-1].id},
                )
            return batch

        return await self.engine.write(tx)

    async def delivered(self, destination: str, first: int, last: int, owner: str) -> int:
        """Delete the rows ``first``..``last`` of a batch this daemon leased, in one statement."""

        def tx(c: Conn) -> int:
            return c.execute(
                "DELETE FROM federation_outbox WHERE destination = :destination"
                " AND id >= :first AND id <= :last AND lease_owner = :owner",
                {"destination": destination, "first": first, "last": last, "owner": owner},
            )

        return await self.engine.write(tx)

    async def failed(
        self, destination: str, head_id: int, owner: str, next_attempt_at: int, error: str
    ) -> int:
        """Record a failed attempt on the head, release this daemon's leases on the destination;
        return the head's attempt count."""

        def tx(c: Conn) -> int:
            c.execute(
                "UPDATE federation_outbox SET attempts = attempts + 1, next_attempt_at = :next,"
                " last_error = :error WHERE id = :id AND lease_owner = :owner",
                {"id": head_id, "owner": owner, "next": next_attempt_at, "error": error[:_ERROR_CHARS]},
            )
            _release(c, destination, owner)
            return int(
                c.fetchval("SELECT attempts FROM federation_outbox WHERE id = :id", {"id": head_id}) or 0
            )

        return await self.engine.write(tx)

    async def release(self, destination: str, owner: str) -> None:
        """Give this daemon's leases on a destination back without counting an attempt."""

        def tx(c: Conn) -> None:
            _release(c, destination, owner)

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

    async def seen(self, origin: str, outbox_ids: list[int]) -> set[int]:
        """Which of ``outbox_ids`` from ``origin`` were already processed (one query)."""
        if not outbox_ids:
            return set()

        def tx(c: Conn) -> set[int]:
            params: dict[str, object] = {"origin": origin}
            names = []
            for i, outbox_id in enumerate(outbox_ids):
                params[f"i{i}"] = outbox_id
                names.append(f":i{i}")
            rows = c.fetchall(
                "SELECT outbox_id FROM federation_inbox_seen WHERE origin = :origin"
                f" AND outbox_id IN ({', '.join(names)})",
                params,
            )
            return {int(r["outbox_id"]) for r in rows}

        return await self.engine.read(tx)

    async def mark_seen(self, origin: str, outbox_ids: list[int], now: int) -> None:
        """Record deliveries as processed, all in one transaction."""
        if not outbox_ids:
            return

        def tx(c: Conn) -> None:
            c.executemany(
                "INSERT INTO federation_inbox_seen (origin, outbox_id, received_at)"
                " VALUES (:origin, :id, :now) ON CONFLICT (origin, outbox_id) DO NOTHING",
                [{"origin": origin, "id": outbox_id, "now": now} for outbox_id in outbox_ids],
            )

        await self.engine.write(tx)

    async def prune_seen(self, before: int) -> int:
        def tx(c: Conn) -> int:
            return c.execute(
                "DELETE FROM federation_inbox_seen WHERE received_at < :before", {"before": before}
            )

        return await self.engine.write(tx)


def _release(c: Conn, destination: str, owner: str) -> None:
    c.execute(
        "UPDATE federation_outbox SET lease_until = 0, lease_owner = NULL"
        " WHERE destination = :destination AND lease_owner = :owner",
        {"destination": destination, "owner": owner},
    )
