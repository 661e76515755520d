"""Gateway resume across nodes: a client that resumes on node B a session that node A holds.

A session stays on the node that created it, and its id names that node
(vox.protocol.cluster.new_session_id), so steady state costs nothing: no per-session record is
written anywhere. Only a resume that arrives at another node does work, and the handoff is the
one described in vox.protocol.cluster: B starts a session of its own for the identity (its
subscriptions in place, its events held back by a gate), asks A over A's node topic, A publishes
the mark on ``user:{id}``, stops its session when the mark comes through it and replies with its
seq and the events after ``last_seq``; B drops what it held up to the mark, adopts A's events and
seq, delivers what came after the mark, and the connection replays and sends ``resumed``.

When A is dead, does not hold the session (expired, or another resume took it), the token is not
the session's, or nothing answers within ``handoff_timeout_s``, the resume fails like a local
one that finds no session: 4009, and the client identifies again.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field

import trio

from vox.context import Context
from vox.errors import BrokerError, SubscriberLagged
from vox.nurseries.session import GatewaySession, SessionRegistry
from vox.protocol.cluster import (
    HANDOFF_MARK,
    HandoffMark,
    HandoffReply,
    HandoffRequest,
    decode_mark,
    decode_node_message,
    encode_mark,
    encode_node_message,
    node_topic,
    session_owner,
)
from vox.protocol.gateway import CloseCode, Event, envelope, open_envelope
from vox.pubsub import Message
from vox.services.auth import Identity
from vox.services.guild_events import user_topic
from vox.services.nodes import NodeRegistry

log = logging.getLogger("vox.gateway")

# After a failure to subscribe to its node topic, the taker retries after this long.
RESUBSCRIBE_S = 1.0


@dataclass(eq=False)
class _Gate:
    """Takes a taken-over session's events while the handoff runs: before the mark they are in
    the giver's ring already (dropped), after it they are new (held, delivered once adopted)."""

    session_id: str  # the session being taken over (the giver's id)
    mark: str
    marked: trio.Event = field(default_factory=trio.Event)
    held: list[Message | Event] = field(default_factory=list)

    def __call__(self, item: Message | Event) -> None:
        if self.marked.is_set():
            self.held.append(item)

    def on_mark(self, event: Event) -> None:
        mark = decode_mark(event.d_json)
        if mark.session_id == self.session_id and mark.mark == self.mark:
            self.marked.set()


@dataclass(eq=False)
class _Waiting:
    reply: HandoffReply | None = None
    arrived: trio.Event = field(default_factory=trio.Event)


def _events_after(session: GatewaySession, last_seq: int) -> list[bytes] | None:
    """The envelopes of the session's events after ``last_seq``; None when some are not kept."""
    missed = session.seq - last_seq
    if last_seq < 0 or missed < 0 or missed > len(session.ring):
        return None
    items = list(session.ring)[len(session.ring) - missed :]
    return [item.payload if isinstance(item, Message) else envelope(item) for item in items]


class SessionTaker:
    """Both sides of the handoff for this node: it answers requests for the sessions held here
    and asks other nodes for theirs. Runs in the gateway's session nursery."""

    def __init__(self, ctx: Context, registry: SessionRegistry, nodes: NodeRegistry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.nodes = nodes
        self.timeout_s = ctx.config.handoff_timeout_s
        self._waiting: dict[str, _Waiting] = {}
        self._scope = trio.CancelScope()

    def close(self) -> None:
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        with self._scope:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        async with self.ctx.broker.subscribe([node_topic(self.nodes.node_id)]) as sub:
                            if not started:
                                task_status.started()
                                started = True
                            async for message in sub:
                                self._dispatch(nursery, message.payload)
                    except (SubscriberLagged, BrokerError) as exc:
                        if not started:
                            raise
                        # A lost request is answered by the requester's timeout; carry on.
                        log.warning("node topic subscription failed", extra={"fields": {"error": str(exc)}})
                    await trio.sleep(RESUBSCRIBE_S)

    def _dispatch(self, nursery: trio.Nursery, payload: bytes) -> None:
        try:
            message = decode_node_message(payload)
        except ValueError:
            log.warning("ignored a malformed node message")
            return
        if isinstance(message, HandoffRequest):
            nursery.start_soon(self._give, message)
        else:
            waiting = self._waiting.get(message.request_id)
            if waiting is not None and waiting.reply is None:
                waiting.reply = message
                waiting.arrived.set()

    async def _reply(self, to: str, reply: HandoffReply) -> None:
        try:
            await self.ctx.broker.publish(node_topic(to), encode_node_message(reply))
        except BrokerError as exc:
            log.warning("handoff reply failed", extra={"fields": {"error": str(exc)}})

    # -- the giving side ----------------------------------------------------------------------
    async def _give(self, request: HandoffRequest) -> None:
        # Less than the taker waits, so that a reply it would no longer read is not even tried.
        left_s = (request.expires_at_ms - time.time() * 1000) / 1000 - 0.2 * self.timeout_s
        if left_s <= 0:
            log.info("ignored an expired handoff request", extra={"fields": {"node": request.reply_to}})
            return
        session = self.registry.get(request.session_id)
        identity = Identity(request.user_id, request.auth_session_id)
        if session is None or session.ended is not None or session.identity != identity:
            await self._reply(
                request.reply_to, HandoffReply(request.request_id, ok=False, reason="no_session")
            )
            return
        if session.on_mark is not None or session.gate is not None:
            await self._reply(request.reply_to, HandoffReply(request.request_id, ok=False, reason="busy"))
            return
        result: list[HandoffReply] = []
        marked = trio.Event()

        def on_mark(event: Event) -> None:
            mark = decode_mark(event.d_json)
            if mark.session_id != session.session_id or mark.mark != request.mark or result:
                return
            # Everything published before the mark has been through this session: its ring is
            # complete up to here, and the taker has everything after.
            events = _events_after(session, request.last_seq)
            if events is None:
                result.append(HandoffReply(request.request_id, ok=False, reason="too_old"))
            else:
                result.append(
                    HandoffReply(
                        request.request_id,
                        ok=True,
                        seq=session.seq,
                        events=events,
                        typing_subscriptions=sorted(session.typing_subscriptions),
                        admin_until_ms=session.admin_until_ms,
                    )
                )
            marked.set()
            session.end(CloseCode.SESSION_TIMEOUT, "session resumed elsewhere")

        session.on_mark = on_mark
        try:
            mark = HandoffMark(session.session_id, request.mark)
            await self.ctx.broker.publish(
                user_topic(session.user_id), envelope(Event(HANDOFF_MARK, encode_mark(mark)))
            )
            with trio.move_on_after(left_s):
                await marked.wait()
        except BrokerError as exc:
            log.warning("handoff mark failed", extra={"fields": {"error": str(exc)}})
        finally:
            session.on_mark = None
        reply = result[0] if result else HandoffReply(request.request_id, ok=False, reason="timeout")
        await self._reply(request.reply_to, reply)

    # -- the taking side ----------------------------------------------------------------------
    async def take_over(self, identity: Identity, session_id: str, last_seq: int) -> GatewaySession | None:
        """A session of this node continuing ``session_id`` of another node, with every event
        after ``last_seq`` in its ring; None when it cannot be had (the client gets 4009)."""
        owner = session_owner(session_id)
        if owner is None or owner == self.nodes.node_id:
            return None
        try:
            if not await self.nodes.is_alive(owner):
                return None
            return await self._take(identity, session_id, last_seq, owner)
        except Exception as exc:
            # The session could not start (revoked meanwhile, the broker failed): the resume
            # fails. (A group holding a Cancelled is no Exception and passes.)
            log.warning(
                "gateway resume from another node failed", extra={"fields": {"error": type(exc).__name__}}
            )
            return None

    async def _take(
        self, identity: Identity, session_id: str, last_seq: int, owner: str
    ) -> GatewaySession | None:
        gate = _Gate(session_id, secrets.token_hex(8))
        session, _ = await self.registry.start(identity, gate=gate)
        session.on_mark = gate.on_mark
        request = HandoffRequest(
            request_id=str(uuid.uuid4()),
            reply_to=self.nodes.node_id,
            session_id=session_id,
            user_id=identity.user_id,
            auth_session_id=identity.session_id,
            last_seq=last_seq,
            mark=gate.mark,
            expires_at_ms=int(time.time() * 1000 + self.timeout_s * 1000),
        )
        waiting = _Waiting()
        self._waiting[request.request_id] = waiting
        try:
            await self.ctx.broker.publish(node_topic(owner), encode_node_message(request))
            with trio.move_on_after(self.timeout_s):
                await waiting.arrived.wait()
                if waiting.reply is not None and waiting.reply.ok:
                    await gate.marked.wait()
        finally:
            del self._waiting[request.request_id]
            session.on_mark = None
        reply = waiting.reply
        if reply is None or not reply.ok or not gate.marked.is_set() or session.ended is not None:
            log.info(
                "gateway resume from another node failed",
                extra={"fields": {"node": owner, "reason": reply.reason if reply else "no answer"}},
            )
            session.end()
            return None
        await self._adopt(session, gate, reply)
        log.info("gateway session taken over", extra={"fields": {"node": owner, "events": len(reply.events)}})
        return session

    async def _adopt(self, session: GatewaySession, gate: _Gate, reply: HandoffReply) -> None:
        session.ring.clear()
        session.ring.extend(open_envelope(e) for e in reply.events)
        session.seq = reply.seq
        for channel_id in reply.typing_subscriptions:
            session.subscribe(channel_id)
        if reply.admin_until_ms > time.time() * 1000:
            await session.follow_admin(reply.admin_until_ms)
        # No checkpoint from here on: nothing can be delivered between the held events and the
        # ones that follow them.
        session.gate = None
        for item in gate.held:
            session.emit(item)
