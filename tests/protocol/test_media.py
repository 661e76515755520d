"""The media datagram header and media tokens, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vox.protocol.media import (
    HEADER_SIZE,
    Codec,
    Flags,
    MediaHeader,
    MediaHeaderError,
    MediaToken,
    MediaTokenError,
    MediaType,
    decode_header,
    issue_token,
    route_fields,
    token_key,
    verify_token,
)

u32 = st.integers(0, 0xFFFFFFFF)
u8 = st.integers(0, 0xFF)
u4 = st.integers(0, 0x0F)


def test_header_layout_is_the_contract() -> None:
    h = MediaHeader(
        type=MediaType.SCREEN,
        codec=Codec.AV1_SCREEN,
        flags=Flags.KEYFRAME | Flags.MARKER,
        room_id=0x01020304,
        ssrc=0x0A0B0C0D,
        sequence=0x11223344,
        timestamp=0x55667788,
        spatial_id=2,
        temporal_id=5,
        dtx=True,
    )
    raw = h.encode()
    assert len(raw) == HEADER_SIZE == 22
    assert raw == bytes.fromhex("01 02 03 90 01020304 0a0b0c0d 11223344 55667788 25 80")
    assert decode_header(raw) == h
    assert route_fields(raw) == (1, 2, 3, 0x01020304, 0x0A0B0C0D)


@given(
    type_=u8,
    codec=u8,
    flags=u8,
    room=u32,
    ssrc=u32,
    seq=u32,
    ts=u32,
    spatial=u4,
    temporal=u4,
    dtx=st.booleans(),
    reserved=st.integers(0, 0x7F),
    payload=st.binary(max_size=64),
)
def test_round_trip(
    type_: int,
    codec: int,
    flags: int,
    room: int,
    ssrc: int,
    seq: int,
    ts: int,
    spatial: int,
    temporal: int,
    dtx: bool,
    reserved: int,
    payload: bytes,
) -> None:
    h = MediaHeader(type_, codec, room, ssrc, seq, ts, flags, spatial, temporal, dtx, reserved=reserved)
    datagram = h.encode() + payload
    assert decode_header(datagram) == h
    assert datagram[HEADER_SIZE:] == payload
    assert route_fields(datagram) == (1, type_, codec, room, ssrc)


@pytest.mark.parametrize("size", [0, 1, 11, 21])
def test_truncated_header(size: int) -> None:
    raw = MediaHeader(MediaType.AUDIO, Codec.OPUS, 1, 2).encode()[:size]
    with pytest.raises(MediaHeaderError) as err:
        decode_header(raw)
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    raw = bytearray(MediaHeader(MediaType.AUDIO, Codec.OPUS, 1, 2).encode())
    raw[0] = version
    with pytest.raises(MediaHeaderError) as err:
        decode_header(bytes(raw))
    assert err.value.reason == "bad_version"


@pytest.mark.parametrize(
    "field,value", [("room_id", 1 << 32), ("ssrc", -1), ("spatial_id", 16), ("type", 256), ("reserved", 128)]
)
def test_fields_that_do_not_fit_are_refused(field: str, value: int) -> None:
    h = MediaHeader(**{"type": 0, "codec": 1, "room_id": 1, "ssrc": 1, field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        h.encode()


KEY = token_key(b"s" * 32)
CLAIMS = MediaToken("user-1", room_id=7, ssrc=99, session=3, expires_at=1000.0, nonce=b"n" * 16)


def test_token_round_trip() -> None:
    token = issue_token(KEY, CLAIMS)
    assert token.startswith("v1.") and "\n" not in token
    assert verify_token(KEY, token, now=999.0) == CLAIMS


def test_token_expired() -> None:
    token = issue_token(KEY, CLAIMS)
    with pytest.raises(MediaTokenError) as err:
        verify_token(KEY, token, now=1000.0)
    assert err.value.reason == "expired_token"


def test_token_other_key_or_tampered() -> None:
    token = issue_token(KEY, CLAIMS)
    other = issue_token(token_key(b"t" * 32), CLAIMS)
    body, mac = token[3:].split(".")
    tampered = "v1." + body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    for bad in (other, tampered, "", "v1.", "v1.abc", "v1.!!!.???", "x" * 2000, token + "x"):
        with pytest.raises(MediaTokenError) as err:
            verify_token(KEY, bad, now=0.0)
        assert err.value.reason == "bad_token"
        assert token not in str(err.value)


def test_every_token_differs_in_its_nonce() -> None:
    a = issue_token(KEY, CLAIMS)
    b = issue_token(KEY, MediaToken("user-1", 7, 99, 3, 1000.0, b"m" * 16))
    assert a != b
