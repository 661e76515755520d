"""Queries that map messages between servers for relayed edits, deletions and reactions
(docs/federation.md, "Edits, deletions and reactions").

A message is named across servers by the server it was written on and that server's id for
it: ours when ``remote_origin`` is NULL, otherwise (``remote_origin``, ``remote_id``).
"""

from __future__ import annotations

from vox.storage.base import Engine, Row
from vox.storage.dms import one_to_one

__all__ = ["FederatedUpdates"]


class FederatedUpdates:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def origin_of(self, message_id: str) -> Row | None:
        """``remote_origin`` and ``remote_id`` of one message (both NULL when written here)."""
        return await self.engine.read(
            lambda c: c.fetchone(
                "SELECT remote_origin, remote_id FROM messages WHERE id = :id", {"id": message_id}
            )
        )

    async def relayed(self, origin: str, remote_id: str) -> str | None:
        """Our id for the message ``origin`` calls ``remote_id``, if it was relayed here."""
        found = await self.engine.read(
            lambda c: c.fetchval(
                "SELECT id FROM messages WHERE remote_origin = :o AND remote_id = :r",
                {"o": origin, "r": remote_id},
            )
        )
        return None if found is None else str(found)

    async def one_to_one(self, a: str, b: str) -> str | None:
        """The 1:1 DM of two users, if they have one."""
        return await self.engine.read(lambda c: one_to_one(c, a, b))
