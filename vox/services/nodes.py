"""This daemon among the others of a deployment: its id, its liveness record, the voice rooms it
hosts, and the cleanup after daemons that died.

Records in the Ephemeral store (Redis when several daemons run; in process, and trivially
consistent, for one):

- ``node:{id}`` -> the node's advertised gateway URL, with a TTL of ``node_ttl_s``, renewed every
  ``node_heartbeat_s``. Its absence is what "dead" means.
- ``cluster:nodes``: a counter map with a field per node that registered and has not been reaped
  or deregistered, so the sweepers know which records to look for.
- ``node_users:{id}``: the node's gateway sessions per user (kept by vox.services.presence).
- ``voice_room:{channel_id}`` -> "{node id} {gateway URL}": the node whose SFU hosts the room
  (a voice room's media lives on one node), TTL ``node_ttl_s``, renewed while the room lives;
  ``node_rooms:{id}`` lists the rooms a node claimed.

Every node sweeps every ``node_sweep_s``: a registered node whose ``node:{id}`` is gone is reaped
once (whoever wins ``SET NX cluster:reaping:{id}``): its sessions come off the presence counts,
with presence_update offline for whoever has none left, and its voice room records go. A kill -9
is therefore noticed within ``node_ttl_s`` + ``node_sweep_s`` (20 s by default).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from vox.config import Config
from vox.ephemeral import Ephemeral
from vox.errors import BrokerError
from vox.services.presence import PresenceService, node_users_key

log = logging.getLogger("vox.nodes")

NODES_KEY = "cluster:nodes"
# The registry of nodes outlives any node; each heartbeat renews it.
NODES_TTL_S = 7 * 86_400.0
# A claimed voice room that did not come to life (the join failed) is released after this long.
ROOM_GRACE_S = 15.0
# A reaper that dies mid-way leaves its claim; another takes over once it lapses.
REAP_CLAIM_S = 60.0


def node_key(node_id: str) -> str:
    return f"node:{node_id}"


def node_rooms_key(node_id: str) -> str:
    return f"node_rooms:{node_id}"


def voice_room_key(channel_id: str) -> str:
    return f"voice_room:{channel_id}"


class NodeRegistry:
    def __init__(self, config: Config, ephemeral: Ephemeral, presence: PresenceService, node_id: str) -> None:
        self.config = config
        self.ephemeral = ephemeral
        self.presence = presence
        self.node_id = node_id
        # Advertised to clients sent here for a voice room; set once the gateway is bound.
        self.gateway_url = ""
        # Voice rooms claimed here -> when last seen in use (trio clock).
        self.rooms: dict[str, float] = {}
        # Which voice rooms this node's SFU and media rooms hold now (set by the root nursery).
        self.live_rooms: Callable[[], set[str]] = set
        self.reaped = 0

    # -- liveness -----------------------------------------------------------------------------
    async def heartbeat(self) -> None:
        await self.ephemeral.set(node_key(self.node_id), self.gateway_url.encode(), self.config.node_ttl_s)
        if await self.ephemeral.hincr(NODES_KEY, self.node_id, 0, NODES_TTL_S) == 0:
            # Reaped while alive (stalled past node_ttl_s, or Redis lost the record): the others
            # took this node's sessions off the presence counts; count them in again.
            log.warning("this node was presumed dead by the others; registering again")
            await self.ephemeral.hincr(NODES_KEY, self.node_id, 1, NODES_TTL_S)
            await self.presence.restore()
        await self._refresh_rooms()

    async def is_alive(self, node_id: str) -> bool:
        return node_id == self.node_id or await self.ephemeral.get(node_key(node_id)) is not None

    async def sweep(self) -> None:
        for node_id in await self.ephemeral.hgetall(NODES_KEY):
            if not await self.is_alive(node_id):
                await self.reap(node_id)

    async def reap(self, node_id: str) -> bool:
        """Clean up after a dead node, unless another sweeper got there first; True if this did."""
        claim = f"cluster:reaping:{node_id}"
        if not await self.ephemeral.set_if_absent(claim, self.node_id.encode(), REAP_CLAIM_S):
            return False
        users = await self.ephemeral.hgetall(node_users_key(node_id))
        for user_id, sessions in users.items():
            await self.presence.reap(user_id, sessions)
        rooms = await self.ephemeral.hgetall(node_rooms_key(node_id))
        for channel_id in rooms:
            record = await self.ephemeral.get(voice_room_key(channel_id))
            if record is not None and record.split(b" ", 1)[0] == node_id.encode():
                await self.ephemeral.delete_if_equal(voice_room_key(channel_id), record)
        await self.ephemeral.delete(node_users_key(node_id))
        await self.ephemeral.delete(node_rooms_key(node_id))
        await self.ephemeral.hdel(NODES_KEY, node_id)
        self.reaped += 1
        log.info(
            "reaped a dead node",
            extra={"fields": {"node": node_id, "users": len(users), "rooms": len(rooms)}},
        )
        return True

    async def deregister(self) -> None:
        """A graceful stop: the sessions ended already (presence went offline through them)."""
        for channel_id in list(self.rooms):
            await self._release(channel_id)
        await self.ephemeral.delete(node_rooms_key(self.node_id))
        await self.ephemeral.delete(node_users_key(self.node_id))
        await self.ephemeral.hdel(NODES_KEY, self.node_id)
        await self.ephemeral.delete(node_key(self.node_id))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.ephemeral.hincr(NODES_KEY, self.node_id, 1, NODES_TTL_S)
        await self.heartbeat()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, self.config.node_heartbeat_s, self.heartbeat)
            nursery.start_soon(self._every, self.config.node_sweep_s, self.sweep)

    async def _every(self, period_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(period_s)
            try:
                await job()
            except BrokerError as exc:
                # Redis is away for a moment: try again next period rather than stop the daemon.
                log.warning("node upkeep failed", extra={"fields": {"error": str(exc)}})

    # -- voice rooms ----------------------------------------------------------------------------
    def _room_record(self) -> bytes:
        return f"{self.node_id} {self.gateway_url}".encode()

    async def claim_room(self, channel_id: str) -> str | None:
        """Claim the voice room for this node; None when it is (now) here, else the gateway URL
        of the live node that hosts it. A dead node's record is taken over."""
        key, mine = voice_room_key(channel_id), self._room_record()
        for _ in range(3):
            if await self.ephemeral.set_if_absent(key, mine, self.config.node_ttl_s):
                await self.ephemeral.hincr(node_rooms_key(self.node_id), channel_id, 1, NODES_TTL_S)
                self.rooms[channel_id] = trio.current_time()
                return None
            record = await self.ephemeral.get(key)
            if record is None:
                continue  # expired in between: try again
            owner, _, url = record.decode().partition(" ")
            if owner == self.node_id:
                self.rooms[channel_id] = trio.current_time()
                return None
            if await self.is_alive(owner):
                return url
            await self.ephemeral.delete_if_equal(key, record)
        return None

    async def _release(self, channel_id: str) -> None:
        self.rooms.pop(channel_id, None)
        await self.ephemeral.delete_if_equal(voice_room_key(channel_id), self._room_record())
        await self.ephemeral.hdel(node_rooms_key(self.node_id), channel_id)

    async def _refresh_rooms(self) -> None:
        if not self.rooms:
            return
        live, now = self.live_rooms(), trio.current_time()
        for channel_id, seen in list(self.rooms.items()):
            if channel_id in live:
                self.rooms[channel_id] = now
                await self.ephemeral.set(
                    voice_room_key(channel_id), self._room_record(), self.config.node_ttl_s
                )
            elif now - seen > ROOM_GRACE_S:
                await self._release(channel_id)


@asynccontextmanager
async def open_nodes(
    config: Config, ephemeral: Ephemeral, presence: PresenceService, node_id: str
) -> AsyncIterator[NodeRegistry]:
    """Register this node, keep it alive and sweep for dead ones while the block runs; on exit
    (after the gateway ended its sessions) take it out of the registry."""
    nodes = NodeRegistry(config, ephemeral, presence, node_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(nodes.run)
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                try:
                    await nodes.deregister()
                except BrokerError as exc:
                    log.warning("could not deregister this node", extra={"fields": {"error": str(exc)}})
