"""The resume replay ring of a gateway session, without sockets."""

from __future__ import annotations

import json
from typing import Any, cast

from vox.nurseries.session import REPLAY_EVENTS, GatewaySession, SessionRegistry
from vox.protocol.gateway import encode_event, envelope
from vox.pubsub import Message
from vox.services.auth import Identity


def _session() -> GatewaySession:
    return GatewaySession(
        cast(Any, None), Identity("u", "s"), SessionRegistry(cast(Any, None), cast(Any, None))
    )


def test_replay_returns_exactly_the_missed_frames() -> None:
    session = _session()
    sent: list[str] = []
    session.attach(sent.append, lambda code, reason: None)
    for i in range(5):
        session.emit(encode_event("message_new", {"n": i}))
    # broker messages are kept as they are and framed when replayed
    session._deliver(Message("channel:c", envelope(encode_event("message_new", {"n": 5}))))
    assert [json.loads(f)["seq"] for f in sent] == [1, 2, 3, 4, 5, 6]
    replay = session.replay_after(3)
    assert replay == sent[3:]
    assert [json.loads(f)["d"]["n"] for f in replay or []] == [3, 4, 5]
    assert session.replay_after(6) == []
    assert session.replay_after(7) is None  # from the future
    assert session.replay_after(-1) is None


def test_replay_refuses_once_events_fell_out_of_the_ring() -> None:
    session = _session()
    for i in range(REPLAY_EVENTS + 5):
        session.emit(encode_event("message_new", {"n": i}))  # detached: kept for resume only
    assert session.replay_after(0) is None
    assert session.replay_after(4) is None
    frames = session.replay_after(5)
    assert frames is not None and len(frames) == REPLAY_EVENTS
    assert json.loads(frames[0])["seq"] == 6
