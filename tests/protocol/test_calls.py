"""The DM call state machine, without sockets: every transition of the "DM Voice Calls
(Event-Sourced)" diagram, the request rules (idempotency, 409s) and what each transition
announces."""

from __future__ import annotations

import pytest

from vox.errors import Conflict, NotFound
from vox.protocol.calls import (
    CallState,
    Declined,
    Ended,
    Joined,
    Left,
    Started,
    apply,
    call_object,
    decide_decline,
    decide_join,
    decide_leave,
    decide_start,
    decode_event,
    due,
    encode_event,
    fold,
    notices,
)

ANN, BOB, CAT, DAN = "ann", "bob", "cat", "dan"
START = Started(by=ANN, targets=(BOB, CAT), at=1_000, ring_until=91_000)


def state_of(*events: Started | Joined | Left | Declined | Ended) -> CallState:
    state = fold(events)
    assert state is not None
    return state


def test_started_rings_with_the_caller_as_first_participant() -> None:
    s = state_of(START)
    assert s.phase == "ringing"
    assert s.started_by == ANN and s.targets == (BOB, CAT)
    assert s.participants == (ANN,) and s.declined == ()
    assert s.ring_until == 91_000


def test_no_call_before_started() -> None:
    assert fold([]) is None
    # Events before any Started (the head of a trimmed log) mean nothing.
    assert fold([Joined(BOB, 1), Left(BOB, 2), Declined(CAT, 3), Ended("timeout", 4)]) is None


def test_ringing_to_active_when_a_callee_joins() -> None:
    s = state_of(START, Joined(BOB, 2_000))
    assert s.phase == "active"
    assert s.participants == (ANN, BOB)


def test_partial_decline_keeps_ringing_then_the_other_joins() -> None:
    s = state_of(START, Declined(BOB, 2_000))
    assert s.phase == "ringing"
    assert s.declined == (BOB,)
    s = apply(s, Joined(CAT, 3_000))
    assert s is not None and s.phase == "active" and s.participants == (ANN, CAT)


def test_ringing_to_ended_when_every_target_declined() -> None:
    s = state_of(START, Declined(BOB, 2_000), Declined(CAT, 3_000))
    assert s.phase == "ended"
    assert s.ended_reason == "declined" and s.ended_at == 3_000
    assert s.participants == ()
    one_to_one = state_of(Started(ANN, (BOB,), 0, 90_000), Declined(BOB, 5))
    assert one_to_one.phase == "ended" and one_to_one.ended_reason == "declined"


def test_ringing_to_ended_when_the_caller_leaves() -> None:
    s = state_of(START, Declined(BOB, 2_000), Left(ANN, 3_000))
    assert s.phase == "ended" and s.ended_reason == "caller_left"


def test_ringing_to_ended_on_timeout() -> None:
    s = state_of(START)
    assert not due(s, 90_999)
    assert due(s, 91_000)
    ended = apply(s, Ended("timeout", 91_000))
    assert ended is not None and ended.phase == "ended" and ended.ended_reason == "timeout"
    assert not due(ended, 200_000)
    assert not due(state_of(START, Joined(BOB, 2)), 200_000)  # an active call does not time out
    assert not due(None, 200_000)


def test_active_stays_active_as_people_join_and_leave() -> None:
    s = state_of(START, Joined(BOB, 2), Joined(CAT, 3))
    assert s.phase == "active" and s.participants == (ANN, BOB, CAT)
    s = state_of(START, Joined(BOB, 2), Joined(CAT, 3), Left(ANN, 4))
    # The caller leaving an active call is just someone leaving.
    assert s.phase == "active" and s.participants == (BOB, CAT)
    s = state_of(START, Joined(BOB, 2), Left(BOB, 3), Joined(BOB, 4))
    assert s.phase == "active" and s.participants == (ANN, BOB)


def test_active_to_ended_when_the_last_participant_leaves() -> None:
    s = state_of(START, Joined(BOB, 2), Left(ANN, 3))
    assert s.phase == "active" and s.participants == (BOB,)
    s = apply(s, Left(BOB, 4))
    assert s is not None and s.phase == "ended" and s.ended_reason == "last_participant_left"


def test_active_to_ended_on_an_explicit_end() -> None:
    s = state_of(START, Joined(BOB, 2), Ended("ended", 3))
    assert s.phase == "ended" and s.ended_reason == "ended" and s.participants == ()


@pytest.mark.parametrize(
    "event", [Joined(DAN, 9), Left(ANN, 9), Declined(CAT, 9), Ended("timeout", 9), Joined(ANN, 9)]
)
def test_nothing_leaves_ended(event: Joined | Left | Declined | Ended) -> None:
    ended = state_of(START, Declined(BOB, 2), Declined(CAT, 3))
    assert apply(ended, event) == ended


def test_a_new_started_begins_a_fresh_call() -> None:
    s = state_of(START, Declined(BOB, 2), Declined(CAT, 3), Started(CAT, (ANN, BOB), 10, 100))
    assert s == CallState("ringing", CAT, (ANN, BOB), (CAT,), (), 10, 100)


def test_events_that_do_not_fit_change_nothing_but_the_count() -> None:
    s = state_of(START, Joined(BOB, 2))
    for event in (Joined(BOB, 3), Left(DAN, 3), Declined(BOB, 3), Declined(CAT, 3)):
        after = apply(s, event)
        assert after is not None
        assert (after.phase, after.participants, after.declined) == (s.phase, s.participants, s.declined)
    for not_a_target in (ANN, DAN):
        after = apply(state_of(START), Declined(not_a_target, 2))
        assert after is not None and after.phase == "ringing" and after.declined == ()
    twice = state_of(START, Declined(BOB, 2), Declined(BOB, 3))
    assert twice.phase == "ringing" and twice.declined == (BOB,)


def test_a_decliner_who_joins_is_no_longer_declined() -> None:
    s = state_of(START, Declined(BOB, 2), Joined(BOB, 3))
    assert s.phase == "active" and s.declined == () and s.participants == (ANN, BOB)


def test_events_round_trip_through_msgpack() -> None:
    for event in (START, Joined(BOB, 2), Left(BOB, 3), Declined(CAT, 4), Ended("timeout", 5)):
        assert decode_event(encode_event(event)) == event


# -- requests ---------------------------------------------------------------------------------


def test_start_rings_the_other_recipients_and_refuses_a_second_live_call() -> None:
    started = decide_start(None, ANN, [ANN, BOB, CAT], 1_000, 90_000)
    assert started == START
    with pytest.raises(Conflict):
        decide_start(state_of(START), BOB, [ANN, BOB, CAT], 2_000, 90_000)
    with pytest.raises(Conflict):
        decide_start(state_of(START, Joined(BOB, 2)), BOB, [ANN, BOB, CAT], 2_000, 90_000)
    ended = state_of(START, Left(ANN, 2))
    assert decide_start(ended, BOB, [ANN, BOB, CAT], 5, 10) == Started(BOB, (ANN, CAT), 5, 15)


def test_join_rules() -> None:
    with pytest.raises(NotFound):
        decide_join(None, BOB, 1)
    assert decide_join(state_of(START), BOB, 2) == Joined(BOB, 2)
    assert decide_join(state_of(START, Declined(BOB, 2)), BOB, 3) == Joined(BOB, 3)  # changed their mind
    assert decide_join(state_of(START, Joined(BOB, 2)), BOB, 3) is None  # joining twice: no-op
    assert decide_join(state_of(START), ANN, 2) is None  # the caller is already in it
    with pytest.raises(Conflict):
        decide_join(state_of(START, Left(ANN, 2)), BOB, 3)


def test_decline_rules() -> None:
    with pytest.raises(NotFound):
        decide_decline(None, BOB, 1)
    assert decide_decline(state_of(START), BOB, 2) == Declined(BOB, 2)
    assert decide_decline(state_of(START, Declined(BOB, 2)), BOB, 3) is None  # declining twice: no-op
    with pytest.raises(Conflict):
        decide_decline(state_of(START), ANN, 2)  # the caller
    with pytest.raises(Conflict):
        decide_decline(state_of(START, Joined(BOB, 2)), BOB, 3)  # declining after joining
    with pytest.raises(Conflict):
        decide_decline(state_of(START, Joined(BOB, 2)), CAT, 3)  # no longer ringing
    with pytest.raises(Conflict):
        decide_decline(state_of(START, Left(ANN, 2)), BOB, 3)  # ended


def test_leave_rules() -> None:
    with pytest.raises(NotFound):
        decide_leave(None, BOB, 1)
    assert decide_leave(state_of(START), ANN, 2) == Left(ANN, 2)
    assert decide_leave(state_of(START), BOB, 2) is None  # not in it: no-op
    assert decide_leave(state_of(START, Left(ANN, 2)), ANN, 3) is None  # after the end: no-op


# -- announcements ----------------------------------------------------------------------------


def _announce(
    before: CallState | None, event: Started | Joined | Left | Declined | Ended
) -> list[tuple[str, str]]:
    after = apply(before, event)
    assert after is not None
    return [(n.type, n.audience) for n in notices("c1", before, event, after)]


def test_what_each_transition_announces() -> None:
    ringing = state_of(START)
    assert _announce(None, START) == [("call_ringing", "targets")]
    assert _announce(ringing, Joined(BOB, 2)) == [("call_started", "all"), ("call_user_joined", "all")]
    active = state_of(START, Joined(BOB, 2))
    assert _announce(active, Joined(CAT, 3)) == [("call_user_joined", "all")]
    assert _announce(active, Left(BOB, 3)) == [("call_user_left", "all")]
    assert _announce(ringing, Declined(BOB, 2)) == [("call_declined", "all")]
    partly = state_of(START, Declined(BOB, 2))
    assert _announce(partly, Declined(CAT, 3)) == [("call_declined", "all"), ("call_ended", "all")]
    assert _announce(ringing, Left(ANN, 2)) == [("call_user_left", "all"), ("call_ended", "all")]
    assert _announce(ringing, Ended("timeout", 2)) == [("call_ended", "all")]
    alone = state_of(START, Joined(BOB, 2), Left(ANN, 3))
    assert _announce(alone, Left(BOB, 4)) == [("call_user_left", "all"), ("call_ended", "all")]


def test_announcement_payloads() -> None:
    ringing = state_of(START)
    [ring] = notices("c1", None, START, ringing)
    assert ring.d == {
        "channel_id": "c1",
        "started_by": ANN,
        "targets": [BOB, CAT],
        "ring_until": "1970-01-01T00:01:31.000Z",
    }
    active = apply(ringing, Joined(BOB, 2))
    assert active is not None
    started, joined = notices("c1", ringing, Joined(BOB, 2), active)
    assert started.d == {"channel_id": "c1", "started_by": ANN, "participants": [ANN, BOB]}
    assert joined.d == {"channel_id": "c1", "user_id": BOB, "participants": [ANN, BOB]}
    ended = apply(ringing, Ended("timeout", 5))
    assert ended is not None
    [end] = notices("c1", ringing, Ended("timeout", 5), ended)
    assert end.d == {"channel_id": "c1", "reason": "timeout"}
    assert call_object("c1", active) == {
        "channel_id": "c1",
        "state": "active",
        "started_by": ANN,
        "participants": [ANN, BOB],
        "targets": [BOB, CAT],
        "declined": [],
        "started_at": "1970-01-01T00:00:01.000Z",
        "ring_until": "1970-01-01T00:01:31.000Z",
        "ended_reason": None,
    }
