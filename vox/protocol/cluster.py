"""What the daemons of one deployment tell each other (sans-IO): gateway session ids that name
their node, and the messages of a session handoff (a client resuming on another node).

Handoff, over the Broker (``node:{id}`` is each node's own topic):

    taker B                                   owner A
    subscribe the session's topics (a fresh session, its events held back)
    HandoffRequest  -> node:{A}
                                              HANDOFF_MARK -> user:{uid}  (seen in order by both)
                                              stop the session at the mark, take its ring
                                     <- HandoffReply (seq, events after last_seq) on node:{B}
    drop what it held up to the mark, keep what came after, carry on from seq

Both sessions read ``user:{uid}`` and the broker delivers every topic to every node in one
publish order, so the mark splits the event stream exactly: what came before it is in A's ring,
what came after it reached B's subscription. No event is lost or repeated, and events need no id.
"""

from __future__ import annotations

import secrets
import uuid

import msgspec

# The internal event (vox.nurseries.session) that splits a session's stream at the handoff.
HANDOFF_MARK = "_handoff_mark"
NODE_ID_BYTES = 6


def new_node_id() -> str:
    """A fresh id for each daemon start: a restarted daemon never inherits a dead one's records."""
    return secrets.token_hex(NODE_ID_BYTES)


def node_topic(node_id: str) -> str:
    return f"node:{node_id}"


def new_session_id(node_id: str) -> str:
    """A gateway session id naming the node that holds the session, so a resume that arrives at
    another node knows whom to ask without a per-session record in the Ephemeral store."""
    return f"{uuid.uuid4()}.{node_id}" if node_id else str(uuid.uuid4())


def session_owner(session_id: str) -> str | None:
    """The node named by a session id; None for an id without one (or a malformed id)."""
    _, sep, node_id = session_id.rpartition(".")
    if not sep or len(node_id) != 2 * NODE_ID_BYTES:
        return None
    return node_id


class HandoffRequest(msgspec.Struct, tag="handoff_request", frozen=True):
    request_id: str
    reply_to: str  # the taker's node id
    session_id: str
    user_id: str
    auth_session_id: str  # the resuming token's session: it must be the session's own
    last_seq: int
    mark: str  # nonce carried by HANDOFF_MARK
    # Wall clock (epoch ms) after which the taker no longer waits: a request that reaches a node
    # late (it was stalled) must not end a session nobody will take over.
    expires_at_ms: int


class HandoffMark(msgspec.Struct, frozen=True):
    session_id: str
    mark: str


class HandoffReply(msgspec.Struct, tag="handoff_reply", frozen=True):
    request_id: str
    ok: bool
    reason: str = ""
    seq: int = 0
    # Envelopes (vox.protocol.gateway.envelope) of the events after last_seq, in seq order.
    events: list[bytes] = []
    typing_subscriptions: list[str] = []
    admin_until_ms: int = 0


NodeMessage = HandoffRequest | HandoffReply

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(NodeMessage)


def encode_node_message(message: NodeMessage) -> bytes:
    return _encoder.encode(message)


def decode_node_message(payload: bytes) -> NodeMessage:
    """Raises msgspec.DecodeError (a ValueError) for anything that is not a node message."""
    message: NodeMessage = _decoder.decode(payload)
    return message


def encode_mark(mark: HandoffMark) -> bytes:
    return msgspec.json.encode(mark)


def decode_mark(d_json: bytes) -> HandoffMark:
    return msgspec.json.decode(d_json, type=HandoffMark)
