"""The QUIC media transport's wire formats (protocol.md section 9), sans-IO.

Two things cross the wire here:

- the **datagram header**: 22 bytes, big-endian, in front of every media payload::

      0 version  1 type  2 codec  3 flags  4-7 room id  8-11 ssrc  12-15 sequence
      16-19 timestamp  20 spatial id (high 4 bits) | temporal id (low 4 bits)  21 bit7 DTX

  The server reads only what it routes on (``route_fields``: version, type, codec, room id,
  ssrc) and forwards the datagram unchanged; ``MediaHeader`` is the full, typed view for
  clients, tests and tools.

- the **media token**: ``v1.<payload>.<mac>``, both parts base64url without padding. The payload
  is ``!IIQd16s`` (room id, ssrc, session number, expiry as Unix seconds, 16 random bytes that
  make every token unique) followed by the user id in UTF-8; the MAC is HMAC-SHA256 over the
  payload with a key derived from the server secret (``token_key``). Tokens are compared in
  constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = [
    "ALPN",
    "HEADER",
    "HEADER_SIZE",
    "MAX_DATAGRAM_BYTES",
    "VERSION",
    "Codec",
    "Flags",
    "MediaHeader",
    "MediaHeaderError",
    "MediaToken",
    "MediaTokenError",
    "MediaType",
    "decode_header",
    "encode_header",
    "issue_token",
    "route_fields",
    "token_key",
    "verify_token",
]

ALPN = "vox-media/1"
VERSION = 1
HEADER = struct.Struct("!BBBBIIIIBB")
HEADER_SIZE = HEADER.size  # 22
_ROUTE = struct.Struct("!BBB1xII")  # version, type, codec, room id, ssrc: all the server reads
U32 = 0xFFFFFFFF
# Largest datagram (header + payload) the server forwards: it must fit one QUIC packet of the
# smallest size every path carries (1200 bytes) after the short header, AEAD tag and frame header.
MAX_DATAGRAM_BYTES = 1100


class MediaType(enum.IntEnum):
    AUDIO = 0
    VIDEO = 1
    SCREEN = 2
    FEC = 3
    RTCP_FEEDBACK = 4


class Codec(enum.IntEnum):
    OPUS = 1
    AV1 = 2
    AV1_SCREEN = 3


class Flags(enum.IntFlag):
    KEYFRAME = 0x80
    END_OF_FRAME = 0x40
    FEC = 0x20
    MARKER = 0x10
    DEPENDENCY_DESCRIPTOR = 0x08


class MediaHeaderError(ValueError):
    """A datagram that cannot be a media datagram; ``reason`` is the metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaHeader:
    type: int
    codec: int
    room_id: int
    ssrc: int
    sequence: int = 0
    timestamp: int = 0
    flags: int = 0
    spatial_id: int = 0
    temporal_id: int = 0
    dtx: bool = False
    version: int = VERSION
    reserved: int = 0  # the low 7 bits of byte 21, carried through unchanged

    def encode(self) -> bytes:
        return encode_header(self)


def encode_header(h: MediaHeader) -> bytes:
    """The 22 header bytes; ValueError when a field does not fit its width."""
    for name, value, limit in (
        ("version", h.version, 0xFF),
        ("type", h.type, 0xFF),
        ("codec", h.codec, 0xFF),
        ("flags", h.flags, 0xFF),
        ("room_id", h.room_id, U32),
        ("ssrc", h.ssrc, U32),
        ("sequence", h.sequence, U32),
        ("timestamp", h.timestamp, U32),
        ("spatial_id", h.spatial_id, 0x0F),
        ("temporal_id", h.temporal_id, 0x0F),
        ("reserved", h.reserved, 0x7F),
    ):
        if not 0 <= value <= limit:
            raise ValueError(f"{name} {value} does not fit (0..{limit})")
    return HEADER.pack(
        h.version,
        h.type,
        h.codec,
        h.flags,
        h.room_id,
        h.ssrc,
        h.sequence,
        h.timestamp,
        (h.spatial_id << 4) | h.temporal_id,
        (0x80 if h.dtx else 0) | h.reserved,
    )


def decode_header(data: bytes) -> MediaHeader:
    """The header at the start of a datagram; MediaHeaderError when truncated or another version."""
    if len(data) < HEADER_SIZE:
        raise MediaHeaderError("truncated", f"{len(data)} bytes, a header needs {HEADER_SIZE}")
    version, type_, codec, flags, room_id, ssrc, seq, ts, layers, last = HEADER.unpack_from(data)
    if version != VERSION:
        raise MediaHeaderError("bad_version", f"version {version}, expected {VERSION}")
    return MediaHeader(
        type=type_,
        codec=codec,
        room_id=room_id,
        ssrc=ssrc,
        sequence=seq,
        timestamp=ts,
        flags=flags,
        spatial_id=layers >> 4,
        temporal_id=layers & 0x0F,
        dtx=bool(last & 0x80),
        version=version,
        reserved=last & 0x7F,
    )


def route_fields(data: bytes) -> tuple[int, int, int, int, int]:
    """(version, type, codec, room id, ssrc) of a datagram at least HEADER_SIZE long.

    The forwarding path's parse: one unpack, no object. A shorter datagram is MediaHeaderError,
    as in decode_header (the forwarding path counts it as truncated before it gets here).
    """
    if len(data) < HEADER_SIZE:
        raise MediaHeaderError("truncated", f"{len(data)} bytes, a header needs {HEADER_SIZE}")
    fields: tuple[int, int, int, int, int] = _ROUTE.unpack_from(data)
    return fields


# -- tokens ---------------------------------------------------------------------------------------

_TOKEN_FIXED = struct.Struct("!IIQd16s")
_TOKEN_PREFIX = "v1."  # noqa: S105 (a format marker, not a secret)
_MAX_TOKEN_CHARS = 512


class MediaTokenError(ValueError):
    """A refused media token; ``reason`` is the metrics label (never the token itself)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaToken:
    user_id: str
    room_id: int
    ssrc: int
    session: int  # the media session this token opens (a join); one connection per session
    expires_at: float  # Unix seconds
    nonce: bytes


def token_key(server_secret: bytes) -> bytes:
    """The MAC key of media tokens, derived so that it is used for nothing else."""
    return hmac.new(server_secret, b"vox media token key v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(key: bytes, token: MediaToken) -> str:
    if len(token.nonce) != 16:
        raise ValueError("a token nonce is 16 bytes")
    payload = _TOKEN_FIXED.pack(
        token.room_id, token.ssrc, token.session, token.expires_at, token.nonce
    ) + token.user_id.encode("utf-8")
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_TOKEN_PREFIX}{_b64(payload)}.{_b64(mac)}"


def verify_token(key: bytes, text: str, now: float) -> MediaToken:
    """The token's claims when its MAC is right and it has not expired; MediaTokenError otherwise.

    ``now`` is Unix seconds (the caller's clock, so tests can move it).
    """
    if len(text) > _MAX_TOKEN_CHARS or not text.startswith(_TOKEN_PREFIX):
        raise MediaTokenError("bad_token", "not a media token")
    body, dot, mac_text = text[len(_TOKEN_PREFIX) :].partition(".")
    if not dot:
        raise MediaTokenError("bad_token", "not a media token")
    try:
        payload, mac = _unb64(body), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise MediaTokenError("bad_token", "not a media token") from None
    if _b64(payload) != body or _b64(mac) != mac_text:
        # The decoder skips stray characters and the spare bits of the last one: only the one
        # canonical spelling is the token, so no altered string passes as it.
        raise MediaTokenError("bad_token", "not a media token")
    expected = hmac.new(key, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise MediaTokenError("bad_token", "the token's signature does not match")
    if len(payload) <= _TOKEN_FIXED.size:
        raise MediaTokenError("bad_token", "not a media token")
    room_id, ssrc, session, expires_at, nonce = _TOKEN_FIXED.unpack_from(payload)
    try:
        user_id = payload[_TOKEN_FIXED.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise MediaTokenError("bad_token", "not a media token") from None
    if not now < expires_at:
        raise MediaTokenError("expired_token", "the media token has expired")
    return MediaToken(user_id, room_id, ssrc, session, expires_at, nonce)
