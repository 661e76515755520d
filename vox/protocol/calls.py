"""DM calls as an event log (sans-IO): the events, the state they fold into, the rules that turn a
request into an event, and the gateway events each transition announces.

The state machine is the "DM Voice Calls (Event-Sourced)" diagram of the VoiceChat design:

    [*]     --Started-->                          ringing   (the caller is the first participant)
    ringing --Joined (a target accepts)-->        active
    ringing --Declined (the last target left)-->  ended "declined"
    ringing --Declined (other targets remain)-->  ringing   (partial decline)
    ringing --Left (the caller)-->                ended "caller_left"
    ringing --Ended "timeout"-->                  ended
    active  --Joined / Left (others remain)-->    active
    active  --Left (the last participant)-->      ended "last_participant_left"
    active  --Ended-->                            ended     (explicit end)
    ended   --anything but Started-->             ended     (no transition out of ended)

``apply`` is total: an event that does not fit the state (a duplicate join, a decline after
joining, anything after the end) leaves the state as it is, so a log written by racing daemons
still folds to one answer. The ``decide_*`` functions are where requests are judged: repeating an
action that already holds (joining twice, declining twice, leaving when not in the call) is a
no-op (None: nothing to append); a contradictory one (declining once in the call, declining a call
that is no longer ringing, joining an ended call) is 409. Every transition that the log implies
(all declined, caller left, last participant left) is derived by the fold; only the timeout needs
an event of its own (``Ended``), because the passing of time is not otherwise in the log.

One log per DM channel holds its calls one after another: ``Started`` begins a new call, and the
fold forgets what came before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec

from vox.errors import Conflict, NotFound
from vox.services.timefmt import iso  # a pure function: wire timestamps

__all__ = [
    "CallEvent",
    "CallState",
    "Declined",
    "Ended",
    "Joined",
    "Left",
    "Notice",
    "Started",
    "apply",
    "call_object",
    "decide_decline",
    "decide_join",
    "decide_leave",
    "decide_start",
    "decode_event",
    "due",
    "encode_event",
    "fold",
    "notices",
]

Phase = Literal["ringing", "active", "ended"]
# Why a call ended (call_ended d.reason).
TIMEOUT = "timeout"
DECLINED = "declined"
CALLER_LEFT = "caller_left"
LAST_LEFT = "last_participant_left"


# Events: frozen msgspec structs (a tagged union decodes in one step), times in Unix milliseconds.
class Started(msgspec.Struct, frozen=True, tag="started"):
    by: str
    targets: tuple[str, ...]
    at: int
    ring_until: int  # the ringing deadline, fixed by the daemon that started the call


class Joined(msgspec.Struct, frozen=True, tag="joined"):
    user: str
    at: int


class Left(msgspec.Struct, frozen=True, tag="left"):
    user: str
    at: int


class Declined(msgspec.Struct, frozen=True, tag="declined"):
    user: str
    at: int


class Ended(msgspec.Struct, frozen=True, tag="ended"):
    reason: str
    at: int


CallEvent = Started | Joined | Left | Declined | Ended

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CallEvent)


def encode_event(event: CallEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> CallEvent:
    event: CallEvent = _decoder.decode(data)
    return event


@dataclass(frozen=True, slots=True)
class CallState:
    phase: Phase
    started_by: str
    targets: tuple[str, ...]  # the other recipients when the call started
    participants: tuple[str, ...]  # in the call now, in joining order
    declined: tuple[str, ...]  # targets who declined (and have not joined since)
    started_at: int
    ring_until: int
    ended_reason: str | None = None
    ended_at: int | None = None
    events: int = 1  # events of this call in the log, Started included

    @property
    def live(self) -> bool:
        return self.phase != "ended"

    def _end(self, reason: str, at: int) -> CallState:
        return replace(self, phase="ended", participants=(), ended_reason=reason, ended_at=at)


def apply(state: CallState | None, event: CallEvent) -> CallState | None:
    """The state after ``event``. Total: an event that does not fit changes nothing."""
    if isinstance(event, Started):
        return CallState("ringing", event.by, event.targets, (event.by,), (), event.at, event.ring_until)
    if state is None or not state.live:
        return state  # before the first Started (a trimmed log), or after the end
    state = replace(state, events=state.events + 1)
    if isinstance(event, Joined):
        if event.user in state.participants:
            return state
        declined = tuple(u for u in state.declined if u != event.user)
        return replace(
            state, phase="active", participants=(*state.participants, event.user), declined=declined
        )
    if isinstance(event, Left):
        if event.user not in state.participants:
            return state
        rest = tuple(u for u in state.participants if u != event.user)
        if state.phase == "ringing" and event.user == state.started_by:
            return state._end(CALLER_LEFT, event.at)
        if not rest:
            return state._end(LAST_LEFT, event.at)
        return replace(state, participants=rest)
    if isinstance(event, Declined):
        if (
            state.phase != "ringing"
            or event.user not in state.targets
            or event.user in state.participants
            or event.user in state.declined
        ):
            return state
        declined = (*state.declined, event.user)
        if set(declined) >= set(state.targets):
            return replace(state, declined=declined)._end(DECLINED, event.at)
        return replace(state, declined=declined)
    return state._end(event.reason, event.at)


def fold(events: Iterable[CallEvent]) -> CallState | None:
    """The state of the latest call in a log (None: no call was ever started)."""
    state: CallState | None = None
    for event in events:
        state = apply(state, event)
    return state


def due(state: CallState | None, now: int) -> bool:
    """The call is still ringing past its deadline: it must end with reason "timeout"."""
    return state is not None and state.phase == "ringing" and now >= state.ring_until


# -- requests -> events ---------------------------------------------------------------------


def _live(state: CallState | None) -> CallState:
    if state is None:
        raise NotFound("no call in this channel")
    if not state.live:
        raise Conflict("the call has ended")
    return state


def decide_start(
    state: CallState | None, by: str, recipients: Sequence[str], now: int, ring_timeout_ms: int
) -> Started:
    """A new call by ``by`` ringing every other recipient; 409 while one is ringing or active."""
    if state is not None and state.live:
        raise Conflict("a call is already in progress in this channel")
    targets = tuple(r for r in recipients if r != by)
    return Started(by=by, targets=targets, at=now, ring_until=now + ring_timeout_ms)


def decide_join(state: CallState | None, user: str, now: int) -> Joined | None:
    """Join a ringing or active call (any recipient, a target who declined included)."""
    call = _live(state)
    return None if user in call.participants else Joined(user, now)


def decide_decline(state: CallState | None, user: str, now: int) -> Declined | None:
    """Decline a ringing call as one of its targets."""
    call = _live(state)
    if user in call.participants:
        raise Conflict("you are in the call: leave it instead")
    if user in call.declined:
        return None
    if call.phase != "ringing":
        raise Conflict("the call is no longer ringing")
    if user not in call.targets:
        raise Conflict("you were not called")
    return Declined(user, now)


def decide_leave(state: CallState | None, user: str, now: int) -> Left | None:
    """Leave the call; a no-op when not in it (also once it ended)."""
    if state is None:
        raise NotFound("no call in this channel")
    return Left(user, now) if user in state.participants else None


# -- what each transition announces -----------------------------------------------------------

Audience = Literal["targets", "all"]


@dataclass(frozen=True, slots=True)
class Notice:
    """One gateway event: its type, who gets it (the call's targets or every recipient), its d."""

    type: str
    audience: Audience
    d: dict[str, Any]


def notices(channel_id: str, before: CallState | None, event: CallEvent, after: CallState) -> list[Notice]:
    """The gateway events announcing the transition ``before`` --event--> ``after``."""
    out: list[Notice] = []
    participants = list(after.participants)
    if isinstance(event, Started):
        d: dict[str, Any] = {"channel_id": channel_id, "started_by": event.by, "targets": list(event.targets)}
        out.append(Notice("call_ringing", "targets", d | {"ring_until": iso(event.ring_until)}))
    elif isinstance(event, Joined) and before is not None and event.user not in before.participants:
        if before.phase == "ringing":
            d = {"channel_id": channel_id, "started_by": after.started_by, "participants": participants}
            out.append(Notice("call_started", "all", d))
        d = {"channel_id": channel_id, "user_id": event.user, "participants": participants}
        out.append(Notice("call_user_joined", "all", d))
    elif isinstance(event, Left) and before is not None and event.user in before.participants:
        d = {"channel_id": channel_id, "user_id": event.user, "participants": participants}
        out.append(Notice("call_user_left", "all", d))
    elif isinstance(event, Declined) and after.declined != (before.declined if before else ()):
        out.append(Notice("call_declined", "all", {"channel_id": channel_id, "user_id": event.user}))
    if before is not None and before.live and not after.live:
        d = {"channel_id": channel_id, "reason": after.ended_reason}
        out.append(Notice("call_ended", "all", d))
    return out


def call_object(channel_id: str, state: CallState) -> dict[str, Any]:
    """What GET .../call and every call route return."""
    return {
        "channel_id": channel_id,
        "state": state.phase,
        "started_by": state.started_by,
        "participants": list(state.participants),
        "targets": list(state.targets),
        "declined": list(state.declined),
        "started_at": iso(state.started_at),
        "ring_until": iso(state.ring_until),
        "ended_reason": state.ended_reason,
    }
