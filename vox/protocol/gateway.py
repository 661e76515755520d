"""Gateway frames (protocol.md section 6), sans-IO: decode client frames, encode server frames.

A frame is a JSON text frame ``{"type": str, "seq": int (server events only), "d": object|null}``.
Server events are encoded once per event: ``encode_event`` renders the ``d`` part to bytes and
``frame_bytes`` splices a per-connection ``seq`` around it without re-encoding, so fanning one
event out to N connections costs N small byte concatenations, not N JSON encodes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

PROTOCOL_VERSION = 1
SUBPROTOCOL = "vox.v1"
TOKEN_SUBPROTOCOL_PREFIX = "access_token."  # noqa: S105 (a prefix, not a secret)
MAX_CLIENT_FRAME_BYTES = 64 * 1024


class CloseCode(enum.IntEnum):
    GOING_AWAY = 1001
    UNKNOWN_ERROR = 4000
    UNKNOWN_TYPE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    RATE_LIMITED = 4008
    SESSION_TIMEOUT = 4009
    VERSION_MISMATCH = 4011
    SERVER_FULL = 4012


CLIENT_TYPES = frozenset(
    {
        "identify",
        "resume",
        "heartbeat",
        "subscribe",
        "unsubscribe",
        "typing",
        "stop_typing",
        "set_status",
        "set_activity",
        "voice_join",
        "voice_leave",
        "voice_answer",
        "voice_ice_candidate",
        "voice_mute",
        "voice_unmute",
        "voice_screen_share_start",
        "voice_screen_share_stop",
        "voice_stats",
        "mls_relay",
        "admin_subscribe",
    }
)


class GatewayProtocolError(Exception):
    """A client frame that breaks the protocol; carries the close code to answer it with."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str
    d: dict[str, Any] | None


class _RawFrame(msgspec.Struct):
    type: str
    d: dict[str, Any] | None = None
    seq: int | None = None


_decoder = msgspec.json.Decoder(_RawFrame)
_encoder = msgspec.json.Encoder()


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Parse one client frame or raise GatewayProtocolError (4002 decode, 4001 unknown type)."""
    if isinstance(data, bytes):
        raise GatewayProtocolError(CloseCode.DECODE_ERROR, "frames must be JSON text, not binary")
    if len(data) > MAX_CLIENT_FRAME_BYTES:
        raise GatewayProtocolError(CloseCode.DECODE_ERROR, "frame too large")
    try:
        raw = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise GatewayProtocolError(CloseCode.DECODE_ERROR, f"invalid frame: {exc}") from None
    except RecursionError:
        # msgspec stops at about 1,000 levels of nesting this way, and that fits in one frame.
        raise GatewayProtocolError(CloseCode.DECODE_ERROR, "invalid frame: nested too deeply") from None
    except UnicodeEncodeError:
        # Lone surrogates: a str that is not UTF-8 (the WebSocket layer never hands us one).
        raise GatewayProtocolError(CloseCode.DECODE_ERROR, "invalid frame: not UTF-8") from None
    if raw.type not in CLIENT_TYPES:
        raise GatewayProtocolError(CloseCode.UNKNOWN_TYPE, f"unknown frame type {raw.type[:64]!r}")
    return ClientFrame(type=raw.type, d=raw.d)


@dataclass(frozen=True, slots=True)
class Event:
    """A server event encoded once: ``type`` plus the JSON bytes of its ``d``."""

    type: str
    d_json: bytes

    def frame(self, seq: int | None) -> bytes:
        return frame_bytes(self.type, self.d_json, seq)

    def text_frame(self, seq: int | None) -> str:
        return frame_bytes(self.type, self.d_json, seq).decode()


def encode_event(type_: str, d: Any) -> Event:
    return Event(type=type_, d_json=_encoder.encode(d))


def frame_bytes(type_: str, d_json: bytes, seq: int | None) -> bytes:
    # Event types are fixed snake_case names from the protocol, so they need no JSON escaping.
    seq_part = b"null" if seq is None else str(seq).encode()
    return b'{"type":"' + type_.encode() + b'","seq":' + seq_part + b',"d":' + d_json + b"}"


class EnvelopeFrames:
    """Text frames for broker envelopes, with the envelope split and decoded once for all the
    sessions it reaches rather than once per session.

    The broker hands every subscriber the same payload object and the sessions frame it one
    after another, so remembering only the last payload catches nearly every repeat.
    """

    __slots__ = ("_head", "_payload", "_tail")

    def __init__(self) -> None:
        self._payload: bytes | None = None
        self._head = self._tail = ""

    def frame(self, payload: bytes, seq: int) -> str:
        if payload is not self._payload:
            type_, sep, d_json = payload.partition(b"\x00")
            if not sep:
                raise ValueError("not a Vox broker envelope")
            self._head = '{"type":"' + type_.decode() + '","seq":'
            self._tail = ',"d":' + d_json.decode() + "}"
            self._payload = payload
        return self._head + str(seq) + self._tail


def control_frame(type_: str, d: Any = None) -> str:
    """A control frame (hello, ready, heartbeat_ack...) as text; these carry no seq."""
    return frame_bytes(type_, _encoder.encode(d), None).decode()


def token_from_subprotocols(proposed: tuple[str, ...]) -> tuple[bool, str | None]:
    """(offers vox.v1, token or None) from a ``Sec-WebSocket-Protocol`` offer list."""
    offers = SUBPROTOCOL in proposed
    token = None
    for item in proposed:
        if item.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            token = item[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return offers, token


# -- broker envelopes ---------------------------------------------------------------------------
# What travels over the Broker between services and gateway connections: the event type, a NUL,
# then the already-encoded ``d``. Types starting with "_" are internal (e.g. "_session_revoked")
# and are acted on by the connection, never forwarded to the client.

INTERNAL_PREFIX = "_"


def envelope(event: Event) -> bytes:
    return event.type.encode() + b"\x00" + event.d_json


def open_envelope(payload: bytes) -> Event:
    type_, sep, d_json = payload.partition(b"\x00")
    if not sep:
        raise ValueError("not a Vox broker envelope")
    return Event(type=type_.decode(), d_json=d_json)
