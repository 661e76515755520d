"""Property-based fuzzing of the gateway's sans-IO parsers: whatever a client sends,
``decode_client_frame`` returns a frame or raises GatewayProtocolError with a contract close
code, never anything else (which would surface as a crashed connection)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings
from vox.protocol.cluster import (
    HandoffReply,
    HandoffRequest,
    decode_mark,
    decode_node_message,
    encode_node_message,
    session_owner,
)
from vox.protocol.gateway import (
    CLIENT_TYPES,
    MAX_CLIENT_FRAME_BYTES,
    SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    ClientFrame,
    CloseCode,
    EnvelopeFrames,
    GatewayProtocolError,
    decode_client_frame,
    encode_event,
    envelope,
    open_envelope,
    token_from_subprotocols,
)

# What decode_client_frame may answer a bad frame with (protocol.md section 6 codes).
DECODE_CODES = {CloseCode.DECODE_ERROR, CloseCode.UNKNOWN_TYPE}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)
frame_types = st.sampled_from(sorted(CLIENT_TYPES)) | st.text(max_size=30) | json_values
frames = st.fixed_dictionaries(
    {"type": frame_types},
    optional={"d": json_values, "seq": json_values, "extra": json_values},
)


def _check(data: str | bytes) -> ClientFrame | None:
    try:
        return decode_client_frame(data)
    except GatewayProtocolError as exc:
        assert exc.code in DECODE_CODES, exc.code
        assert exc.reason
        return None


@fuzz_settings(300)
@given(st.text(max_size=200))
@example("\ud800")  # a lone surrogate: not UTF-8 at all
@example('{"type":"identify","d":{"token":"\udfff"}}')
@example('{"type":"identify","d":' + "[" * 5000 + "]" * 5000 + "}")
def test_any_text_is_a_frame_or_a_protocol_error(data: str) -> None:
    _check(data)


@fuzz_settings(100)
@given(st.binary(max_size=200))
def test_binary_frames_are_decode_errors(data: bytes) -> None:
    try:
        decode_client_frame(data)
    except GatewayProtocolError as exc:
        assert exc.code == CloseCode.DECODE_ERROR
    else:
        raise AssertionError("a binary frame was accepted")


@fuzz_settings(400)
@given(frames)
def test_structured_frames_decode_or_fail_with_a_contract_code(raw: dict[str, Any]) -> None:
    frame = _check(json.dumps(raw))
    seq = raw.get("seq")
    well_formed = (
        isinstance(raw["type"], str)
        and raw["type"] in CLIENT_TYPES
        and isinstance(raw.get("d"), dict | None)
        and (seq is None or type(seq) is int)  # any size: a Python int
    )
    if well_formed:
        assert frame == ClientFrame(type=raw["type"], d=raw.get("d"))
    else:
        assert frame is None


@fuzz_settings(30)
@given(st.integers(min_value=1, max_value=30_000), st.sampled_from(["[", "{", '{"a":']))
def test_deep_nesting_is_a_decode_error_not_a_crash(depth: int, opener: str) -> None:
    closer = {"[": "]", "{": "}", '{"a":': "}"}[opener]
    inner = opener * depth + ("1" if opener != "{" else "") + closer * depth
    if opener == "{":
        inner = '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
    _check('{"type":"voice_stats","d":{"x":' + inner + "}}")


def test_size_limit_is_a_decode_error() -> None:
    frame = '{"type":"heartbeat","d":{"x":"' + "a" * MAX_CLIENT_FRAME_BYTES + '"}}'
    try:
        decode_client_frame(frame)
    except GatewayProtocolError as exc:
        assert exc.code == CloseCode.DECODE_ERROR
    else:
        raise AssertionError("an oversize frame was accepted")


@fuzz_settings(200)
@given(st.lists(st.text(max_size=40) | st.sampled_from([SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX]), max_size=6))
def test_subprotocol_offers_parse_without_error(offers: list[str]) -> None:
    offered, token = token_from_subprotocols(tuple(offers))
    assert offered == (SUBPROTOCOL in offers)
    tokens = [o for o in offers if o.startswith(TOKEN_SUBPROTOCOL_PREFIX)]
    assert token == (tokens[-1][len(TOKEN_SUBPROTOCOL_PREFIX) :] if tokens else None)


@fuzz_settings(200)
@given(st.binary(max_size=100))
def test_broker_envelopes_open_or_raise_value_error(payload: bytes) -> None:
    for parse in (open_envelope, lambda p: EnvelopeFrames().frame(p, 1)):
        with contextlib.suppress(ValueError):
            parse(payload)


@fuzz_settings(100)
@given(st.from_regex(r"\A[a-z_]{1,30}\Z"), json_values)
def test_envelopes_round_trip(type_: str, d: Any) -> None:
    event = encode_event(type_, d)
    assert open_envelope(envelope(event)) == event
    framed = json.loads(EnvelopeFrames().frame(envelope(event), 7))
    assert framed == {"type": type_, "seq": 7, "d": json.loads(event.d_json)}


@fuzz_settings(200)
@given(st.binary(max_size=200) | st.builds(lambda n: b"\x91" * n + b"\xc0", st.integers(1, 5000)))
def test_node_messages_decode_or_raise_decode_error(payload: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError):
        decode_node_message(payload)
    with contextlib.suppress(msgspec.DecodeError):
        decode_mark(payload)


@fuzz_settings(100)
@given(
    st.builds(
        HandoffRequest,
        request_id=st.text(max_size=20),
        reply_to=st.text(max_size=20),
        session_id=st.text(max_size=20),
        user_id=st.text(max_size=20),
        auth_session_id=st.text(max_size=20),
        last_seq=st.integers(-(2**63), 2**63 - 1),
        mark=st.text(max_size=20),
        expires_at_ms=st.integers(0, 2**63 - 1),
    )
    | st.builds(
        HandoffReply,
        request_id=st.text(max_size=20),
        ok=st.booleans(),
        reason=st.text(max_size=20),
        seq=st.integers(0, 2**63 - 1),
        events=st.lists(st.binary(max_size=30), max_size=4),
        typing_subscriptions=st.lists(st.text(max_size=10), max_size=3),
        admin_until_ms=st.integers(0, 2**63 - 1),
    )
)
def test_node_messages_round_trip(message: HandoffRequest | HandoffReply) -> None:
    assert decode_node_message(encode_node_message(message)) == message


@fuzz_settings(100)
@given(st.text(max_size=60))
def test_session_owner_never_raises(session_id: str) -> None:
    owner = session_owner(session_id)
    assert owner is None or session_id.endswith("." + owner)
