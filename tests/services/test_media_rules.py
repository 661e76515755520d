"""The media forwarding rules and the per-sender token bucket, without sockets or a daemon."""

from __future__ import annotations

from typing import Any

from vox.config import Config
from vox.metrics import Metrics
from vox.protocol.media import Codec, MediaHeader, MediaType
from vox.services.media import MediaRoom, MediaService, MediaSession, TokenBucket


class Link:
    def queue_datagram(self, data: bytes) -> bool:
        return True

    def close(self, code: int, reason: str) -> None:
        pass


def service() -> MediaService:
    none: Any = None
    return MediaService(Config(), b"k" * 32, none, none, none, Metrics(), none, none, None)


def room_of(n: int, **perms: bool) -> tuple[MediaRoom, list[MediaSession]]:
    room = MediaRoom("chan", room_id=7)
    sessions = []
    for i in range(n):
        s = MediaSession(
            number=i,
            user_id=f"u{i}",
            username=f"u{i}",
            channel_id="chan",
            room=room,
            ssrc=100 + i,
            conn_id=i,
            send=lambda frame: None,
            can_speak=perms.get("speak", True),
            can_video=perms.get("video", True),
            can_screen=perms.get("screen", True),
            bucket=TokenBucket(50.0, 5.0, 5.0, 0.0),
            link=Link(),
        )
        room.sessions[s.user_id] = s
        sessions.append(s)
    room.refresh()
    return room, sessions


def dgram(s: MediaSession, type_: int = MediaType.AUDIO, codec: int = Codec.OPUS, **kw: Any) -> bytes:
    fields: dict[str, Any] = {"room_id": s.room_id, "ssrc": s.ssrc, **kw}
    return MediaHeader(type_, codec, **fields).encode() + b"p" * 20


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, tokens=3.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token refilled
    assert bucket.take(0.1) is True
    assert bucket.take(100.0) and bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)  # never more than the burst


def test_route_to_every_other_linked_participant() -> None:
    svc = service()
    room, (a, b, c) = room_of(3)
    assert svc.route(a, dgram(a), 0.0) == room.receivers
    assert set(room.receivers) == {a, b, c}  # the transport skips the sender itself
    c.deafened = True
    room.refresh()
    assert set(room.receivers) == {a, b}


def test_drop_reasons() -> None:
    svc = service()
    _room, (a, b) = room_of(2)
    assert svc.route(a, dgram(a)[:21], 0.0) == "truncated"
    assert svc.route(a, b"\x02" + dgram(a)[1:], 0.0) == "bad_version"
    assert svc.route(a, dgram(a, room_id=8), 0.0) == "wrong_room"
    assert svc.route(a, dgram(a, ssrc=b.ssrc), 0.0) == "wrong_ssrc"
    assert svc.route(a, dgram(a, type_=9), 0.0) == "bad_type"
    assert svc.route(a, dgram(a, type_=MediaType.FEC, codec=9), 0.0) == "bad_type"
    assert svc.route(a, dgram(a) + b"x" * 2000, 0.0) == "too_large"
    a.self_muted = True
    assert svc.route(a, dgram(a), 0.0) == "muted"
    assert svc.route(a, dgram(a, type_=MediaType.FEC), 0.0) == "muted"  # Opus FEC is audio
    assert isinstance(svc.route(a, dgram(a, type_=MediaType.VIDEO, codec=Codec.AV1), 0.0), tuple)
    a.ended = True
    assert svc.route(a, dgram(a), 0.0) == "not_in_room"


def test_permissions_per_media_type() -> None:
    svc = service()
    _room, (a, _b) = room_of(2, speak=False, video=False, screen=True)
    assert svc.route(a, dgram(a), 0.0) == "no_permission"
    assert svc.route(a, dgram(a, type_=MediaType.VIDEO, codec=Codec.AV1), 0.0) == "no_permission"
    assert svc.route(a, dgram(a, type_=MediaType.FEC, codec=Codec.AV1), 0.0) == "no_permission"
    assert isinstance(svc.route(a, dgram(a, type_=MediaType.SCREEN, codec=Codec.AV1_SCREEN), 0.0), tuple)
    assert isinstance(svc.route(a, dgram(a, type_=MediaType.RTCP_FEEDBACK), 0.0), tuple)


def test_rate_limit_per_sender() -> None:
    svc = service()
    _room, (a, b) = room_of(2)
    results = [svc.route(a, dgram(a), 0.0) for _ in range(7)]
    assert [r == "rate_limited" for r in results] == [False] * 5 + [True] * 2
    assert isinstance(svc.route(b, dgram(b), 0.0), tuple)  # another sender has its own bucket
