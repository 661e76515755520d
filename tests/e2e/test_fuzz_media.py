"""Property-based fuzzing of the live QUIC media listener: hypothesis builds batches of media
datagrams (headers from strategies: right or forged room and ssrc, any version, type and codec,
any payload size, and raw noise) sent as QUIC DATAGRAM frames by an authenticated speaker, plus
plain UDP garbage and Initial-shaped noise sent straight to the media port, and media tokens
presented on fresh connections (random text, bit flips of a real token, lines that are not ASCII).

After every example a listener in the same room still receives the speaker's next valid datagram
(the receive loop is alive and forwarding), and it has received nothing the routing rules refuse.
At the end, once the clients are gone, the daemon's task tree and its media and gateway gauges
are back at their baseline, and nothing was logged at ERROR.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st

from tests.e2e.guild_helpers import Api, voice_room
from tests.e2e.live_daemon import LiveDaemon, live_daemon
from tests.e2e.media_helpers import Gateway, Inbox, datagram, gateway, metric_value, metrics_text
from tests.fuzzing import fuzz_settings
from vox.protocol.media import HEADER_SIZE, MAX_DATAGRAM_BYTES, VERSION, MediaHeader, route_fields
from vox.transports.quic import CloseCode
from vox.transports.quic_client import MediaClient, MediaClientError, open_media_client

u8, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF)
# Largest DATAGRAM frame the test client sends: it must fit one QUIC packet, or aioquic keeps it
# queued; still above MAX_DATAGRAM_BYTES, so "too large" is covered.
CLIENT_DATAGRAM_MAX = 1120
REFUSALS = {"bad_token", "expired_token", "unknown_session", "session_mismatch", "session_claimed"}


@dataclass
class Room:
    api: Api
    speaker: dict[str, Any]  # voice_media_session of the speaker
    listener: dict[str, Any]
    speaker_client: MediaClient
    inbox: Inbox
    releases: list[trio.Event]
    sent: set[bytes]
    marker: int = 1_000_000


def media_datagrams(room: Room) -> st.SearchStrategy[bytes]:
    s, other = room.speaker, room.listener
    headers = st.builds(
        MediaHeader,
        type=st.sampled_from([0, 1, 2, 3, 4]) | u8,
        codec=st.sampled_from([1, 2, 3]) | u8,
        room_id=st.sampled_from([s["room_id"]]) | u32,
        ssrc=st.sampled_from([s["ssrc"], other["ssrc"]]) | u32,
        sequence=u32,
        timestamp=u32,
        flags=u8,
        spatial_id=st.integers(0, 15),
        temporal_id=st.integers(0, 15),
        dtx=st.booleans(),
        version=st.sampled_from([VERSION]) | u8,
        reserved=st.integers(0, 0x7F),
    )
    framed = st.builds(
        lambda h, p: h.encode() + p, headers, st.binary(max_size=CLIENT_DATAGRAM_MAX - HEADER_SIZE)
    )
    return framed | st.binary(max_size=CLIENT_DATAGRAM_MAX)


def initial_noise() -> st.SearchStrategy[bytes]:
    """Long-header packets that look like a QUIC v1 Initial (a new connection) but are noise."""
    return st.builds(
        lambda first, dcid, scid, body: bytes([0xC0 | first]) + b"\x00\x00\x00\x01"
        + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + body.ljust(1200, b"\x00"),
        st.integers(0, 0x3F),
        st.binary(min_size=0, max_size=20),
        st.binary(min_size=0, max_size=20),
        st.binary(max_size=1300),
    )  # fmt: skip


def routable(room: Room, data: bytes) -> bool:
    """What the server may forward from the speaker (docs/protocol.md, Voice over QUIC)."""
    if not HEADER_SIZE <= len(data) <= MAX_DATAGRAM_BYTES:
        return False
    version, type_, codec, room_id, ssrc = route_fields(data)
    if (version, room_id, ssrc) != (VERSION, room.speaker["room_id"], room.speaker["ssrc"]):
        return False
    return type_ in (0, 1, 2, 4) or (type_ == 3 and codec in (1, 2, 3))


async def setup_room(live: LiveDaemon) -> Room:
    releases: list[trio.Event] = []
    client, release = await live.hold(httpx.AsyncClient(base_url=live.daemon.rest, timeout=10))
    releases.append(release)
    api = Api(client)
    (owner, member), _guild, channel = await voice_room(api, 2)
    gateways: list[Gateway] = []
    for user in (owner, member):
        g, release = await live.hold(gateway(live.daemon, user.token, user.name))
        releases.append(release)
        gateways.append(g)
    speaker = await gateways[0].join_quic(channel["id"])
    listener = await gateways[1].join_quic(channel["id"])
    inbox = Inbox()
    clients: list[MediaClient] = []
    for s in (speaker, listener):
        c, release = await live.hold(open_media_client(s["media_url"]))
        releases.append(release)
        await c.authenticate(s["media_token"])
        clients.append(c)
    clients[1].on_datagram = inbox
    return Room(api, speaker, listener, clients[0], inbox, releases, set())


async def send_batch(live: LiveDaemon, room: Room, batch: list[tuple[str, bytes]]) -> None:
    host, port = room.speaker["media_url"].removeprefix("quic://").rsplit(":", 1)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for kind, data in batch:
            if kind == "quic":
                room.sent.add(data)
                room.speaker_client.send(data)
                await room.speaker_client.flush()
            else:
                await raw.sendto(data, (host, int(port)))
    # The next valid datagram of the speaker still reaches the listener.
    room.marker += 1
    marker = datagram(room.speaker, room.marker)
    room.sent.add(marker)
    room.speaker_client.send(marker)
    await room.speaker_client.flush()
    with trio.fail_after(15):
        while marker not in room.inbox.datagrams:
            await room.inbox.changed.wait()
    stray = [d for d in room.inbox.datagrams if d not in room.sent or not routable(room, d)]
    assert not stray, f"forwarded what the rules refuse: {stray[:3]}"


async def present_token(live: LiveDaemon, url: str, line: bytes) -> tuple[int | None, str]:
    """Open a media connection, write ``line`` on its first stream; how the server closed it."""
    async with open_media_client(url) as client:
        with trio.fail_after(15):
            await client.connected.wait()
            if line.endswith(b"\n") and line[:-1].isascii():
                try:
                    await client.authenticate(line[:-1].decode("ascii"))
                except MediaClientError as exc:
                    return exc.error_code, exc.reason
                return None, "accepted"
            # Not ASCII, or no end of line: written as is (authenticate would refuse to send it).
            client.quic.send_stream_data(client.quic.get_next_available_stream_id(), line)
            await client.flush()
            await client.closed.wait()
            return client.close_code, client.close_reason


def tokens(room: Room) -> st.SearchStrategy[bytes]:
    real = room.speaker["media_token"].encode()

    def flip(bit: int) -> bytes:
        raw = bytearray(real)
        raw[bit // 8 % len(raw)] ^= 1 << (bit % 8)
        return bytes(raw) + b"\n"

    return st.one_of(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200).map(
            lambda t: t.encode() + b"\n"
        ),
        st.integers(0, 8 * len(real) - 1).map(flip),
        st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"),
        st.just(b"x" * 1100),  # over the line limit, no end of line
        st.just(real + b"\n"),  # already claimed by the speaker's connection
    )


async def gauges(live: LiveDaemon) -> tuple[float, float]:
    async with live.daemon.http() as client:
        text = await metrics_text(client)
    return metric_value(text, "vox_media_connections"), metric_value(text, "vox_gateway_connections")


async def release_all(room: Room) -> None:
    for release in reversed(room.releases):
        release.set()
    await trio.sleep(0.5)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveDaemon]:
    overrides = {"media_auth_timeout_s": 1.0, "media_rate_pps": 100_000, "media_rate_burst": 100_000}
    with live_daemon(tmp_path, **overrides) as daemon:
        yield daemon


def test_fuzzed_media_datagrams_and_tokens(live: LiveDaemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vox")
    baseline = live.run(live.baseline)
    room = live.run(setup_room, live)
    counts = {"datagrams": 0, "tokens": 0}
    batch = st.lists(
        st.tuples(st.just("quic"), media_datagrams(room))
        | st.tuples(st.just("udp"), st.binary(max_size=1500))
        | st.tuples(st.just("udp"), initial_noise()),
        min_size=1,
        max_size=8,
    )

    # The daemon and the room outlive the examples on purpose (function-scoped fixtures).
    @fuzz_settings(60, suppress_health_check=list(HealthCheck))
    @given(batch)
    # Always covered, whatever the draw: over the size limit, FEC of no known codec, a datagram
    # of the speaker that forges the listener's ssrc, and an Initial of noise.
    @example([("quic", datagram(room.speaker, 1, payload_size=MAX_DATAGRAM_BYTES - HEADER_SIZE + 1))])
    @example([("quic", datagram(room.speaker, 2, type_=3, codec=9))])
    @example([("quic", datagram(room.speaker, 3, ssrc=room.listener["ssrc"]))])
    @example([("udp", b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00" + bytes(1200))])
    def fuzz_datagrams(items: list[tuple[str, bytes]]) -> None:
        counts["datagrams"] += 1
        live.run(send_batch, live, room, items)

    @fuzz_settings(15, suppress_health_check=list(HealthCheck))
    @given(tokens(room))
    def fuzz_tokens(line: bytes) -> None:
        counts["tokens"] += 1
        code, reason = live.run(present_token, live, room.speaker["media_url"], line)
        # The room is unaffected (this also keeps the speaker's connection from idling out).
        live.run(send_batch, live, room, [])
        if not line.endswith(b"\n"):
            assert code in (CloseCode.AUTH_FAILED, CloseCode.AUTH_TIMEOUT), (code, reason)
        else:
            assert (code, reason in REFUSALS) == (CloseCode.AUTH_FAILED, True), (code, reason, line[:60])

    try:
        fuzz_datagrams()
        fuzz_tokens()
    finally:
        live.run(release_all, room)
    assert counts["datagrams"] >= 10 and counts["tokens"] >= 5
    leaked = live.run(live.settled_tasks, baseline, 30)
    assert not leaked, f"tasks left after the media clients closed: {dict(leaked)}"
    assert live.run(gauges, live) == (0, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
