"""Property-based fuzzing of the QUIC media wire formats (sans-IO): datagram headers parse or
raise MediaHeaderError, valid headers round-trip, and media tokens verify only untouched."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings
from vox.protocol.media import (
    HEADER_SIZE,
    VERSION,
    MediaHeader,
    MediaHeaderError,
    MediaToken,
    MediaTokenError,
    decode_header,
    encode_header,
    issue_token,
    route_fields,
    token_key,
    verify_token,
)

KEY = token_key(b"fuzzing server secret")
NOW = 1_700_000_000.0
u8, u4, u7 = st.integers(0, 0xFF), st.integers(0, 0x0F), st.integers(0, 0x7F)
u32 = st.integers(0, 0xFFFFFFFF)

headers = st.builds(
    MediaHeader,
    type=u8,
    codec=u8,
    room_id=u32,
    ssrc=u32,
    sequence=u32,
    timestamp=u32,
    flags=u8,
    spatial_id=u4,
    temporal_id=u4,
    dtx=st.booleans(),
    reserved=u7,
)
tokens = st.builds(
    MediaToken,
    user_id=st.text(min_size=1, max_size=40),
    room_id=u32,
    ssrc=u32,
    session=st.integers(0, 2**64 - 1),
    expires_at=st.floats(NOW + 1, NOW + 10**6),
    nonce=st.binary(min_size=16, max_size=16),
)


@fuzz_settings(400)
@given(st.binary(max_size=2 * HEADER_SIZE))
def test_any_datagram_parses_or_raises_header_error(data: bytes) -> None:
    try:
        header = decode_header(data)
    except MediaHeaderError as exc:
        assert exc.reason in {"truncated", "bad_version"}
        assert len(data) < HEADER_SIZE or data[0] != VERSION
        return
    assert header.encode() == data[:HEADER_SIZE]
    # The forwarding path reads the same fields as the full parse.
    assert route_fields(data) == (header.version, header.type, header.codec, header.room_id, header.ssrc)


@fuzz_settings(300)
@given(st.binary(max_size=2 * HEADER_SIZE))
def test_route_fields_of_any_datagram_or_header_error(data: bytes) -> None:
    try:
        fields = route_fields(data)
    except MediaHeaderError as exc:
        assert exc.reason == "truncated"
        assert len(data) < HEADER_SIZE
    else:
        assert len(data) >= HEADER_SIZE
        assert fields == (data[0], data[1], data[2], *struct.unpack("!II", data[4:12]))


@fuzz_settings(300)
@given(headers, st.binary(max_size=64))
def test_valid_headers_round_trip(header: MediaHeader, payload: bytes) -> None:
    data = encode_header(header) + payload
    assert len(data) == HEADER_SIZE + len(payload)
    assert decode_header(data) == header
    assert route_fields(data) == (VERSION, header.type, header.codec, header.room_id, header.ssrc)


@fuzz_settings(100)
@given(headers, st.sampled_from(["room_id", "ssrc", "type", "spatial_id", "reserved"]), st.integers(1, 2**40))
def test_out_of_range_fields_are_refused_on_encode(header: MediaHeader, name: str, excess: int) -> None:
    limit = {"room_id": 0xFFFFFFFF, "ssrc": 0xFFFFFFFF, "type": 0xFF, "spatial_id": 0x0F, "reserved": 0x7F}
    for value in (limit[name] + excess, -excess):
        fields = {f: getattr(header, f) for f in MediaHeader.__dataclass_fields__}
        fields[name] = value
        try:
            encode_header(MediaHeader(**fields))
        except ValueError:
            continue
        raise AssertionError(f"{name}={value} was encoded")


@fuzz_settings(400)
@given(st.text(max_size=600) | st.builds(lambda t: "v1." + t, st.text(max_size=200)))
def test_any_string_is_refused_with_a_token_error(text: str) -> None:
    try:
        verify_token(KEY, text, NOW)
    except MediaTokenError as exc:
        assert exc.reason in {"bad_token", "expired_token"}
    else:
        raise AssertionError("a token nobody issued was accepted")


@fuzz_settings(200)
@given(tokens)
def test_issued_tokens_verify_until_they_expire(token: MediaToken) -> None:
    text = issue_token(KEY, token)
    assert verify_token(KEY, text, NOW) == token
    try:
        verify_token(KEY, text, token.expires_at)
    except MediaTokenError as exc:
        assert exc.reason == "expired_token"
    else:
        raise AssertionError("an expired token was accepted")


@fuzz_settings(300)
@given(tokens, st.data())
def test_any_bit_flip_is_refused(token: MediaToken, data: st.DataObject) -> None:
    raw = bytearray(issue_token(KEY, token).encode("ascii"))
    bit = data.draw(st.integers(0, 8 * len(raw) - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    try:
        tampered = raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # not even text: it could not reach verify_token
    try:
        verify_token(KEY, tampered, NOW)
    except MediaTokenError as exc:
        assert exc.reason == "bad_token"
    else:
        raise AssertionError(f"a tampered token was accepted (bit {bit})")


@fuzz_settings(100)
@given(tokens, st.binary(min_size=32, max_size=32))
def test_another_key_is_refused(token: MediaToken, secret: bytes) -> None:
    other = token_key(secret)
    try:
        verify_token(other, issue_token(KEY, token), NOW)
    except MediaTokenError as exc:
        assert exc.reason == "bad_token"
    else:
        raise AssertionError("a token verified under another key")
