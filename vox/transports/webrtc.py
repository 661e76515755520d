"""aiortc peers of the SFU, forwarding encoded media without decoding or re-encoding.

Everything here runs on the asyncio side (inside the daemon's one trio_asyncio loop); the voice
service (vox.services.voice) calls it through ``vox.nurseries.bridge.aio`` and owns each peer on the
trio side.

Forwarding. aiortc's ``RTCRtpReceiver`` reassembles RTP packets into encoded frames in its jitter
buffer and hands them to a decoder thread through a ``queue.Queue``; its ``RTCRtpSender`` packs
``av.Packet`` objects from a track without encoding (``encoder.pack``). ``ForwardQueue`` replaces
the receiver's decoder queue: each encoded frame (one Opus packet, or one reassembled VP8 frame)
is handed to ``on_frame`` and never decoded; the decoder thread only ever sees the stop marker.
``RelayTrack`` yields those frames as ``av.Packet`` objects to one outgoing sender. Per forwarded
frame the cost is one depayload + jitter-buffer insert on the way in, and per receiver one
``av.Packet`` packing + SRTP encryption on the way out; no codec runs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket
from aiortc.sdp import candidate_from_sdp

__all__ = [
    "ForwardQueue",
    "RelayTrack",
    "add_public_ip",
    "hook_receiver",
    "ice_configuration",
    "parse_ice_servers",
    "restrict_udp_ports",
]

log = logging.getLogger("vox.webrtc")

RELAY_QUEUE = 64  # frames buffered per outgoing track (1.3 s of Opus) before the oldest drop

OnFrame = Callable[[bytes, int, Fraction], None]
if TYPE_CHECKING:
    Packet = av.Packet[Any]  # what a sender packs without encoding (generic only in the stubs)
else:
    Packet = av.Packet


class ForwardQueue(queue.Queue[Any]):
    """Stands in for an ``RTCRtpReceiver``'s decoder queue: encoded frames go to ``on_frame``
    (on the event loop's thread, where the receiver puts them); only the stop marker (None)
    reaches the decoder thread, which then ends."""

    def __init__(self, on_frame: OnFrame) -> None:
        super().__init__()
        self.on_frame = on_frame

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None)
            return
        codec, frame = item
        try:
            self.on_frame(bytes(frame.data), int(frame.timestamp), Fraction(1, int(codec.clockRate)))
        except Exception:  # a forwarding bug must not kill the receiver's task
            log.exception("forwarding failed")


def _ignore(data: bytes, timestamp: int, time_base: Fraction) -> None:
    pass


def hook_receiver(receiver: RTCRtpReceiver, on_frame: OnFrame, *, per_packet: bool) -> None:
    """Forward what ``receiver`` gets to ``on_frame`` without decoding; must run before the
    receiver starts (before negotiation).

    ``per_packet`` (audio): every RTP packet carries one whole Opus frame, so each is forwarded as
    it arrives, before aiortc's audio jitter buffer (which holds 4 frames, 80 ms, before it
    releases one); the receiver still sees the packet afterwards for its RTCP statistics and
    NACKs, and what leaves its jitter buffer is dropped. Otherwise (video) the frame reassembled by
    the jitter buffer is forwarded (a VP8 frame spans several packets and the sender repacketises
    whole frames)."""
    receiver._RTCRtpReceiver__decoder_queue = ForwardQueue(_ignore if per_packet else on_frame)  # type: ignore[attr-defined]
    if not per_packet:
        return
    handle = receiver._handle_rtp_packet
    codecs: dict[int, Any] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    first: list[int] = []

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        codec = codecs.get(packet.payload_type)
        if packet.payload and codec is not None and codec.name.lower() == "opus" and receiver._enabled:
            if not first:
                first.append(packet.timestamp)
            try:
                on_frame(
                    packet.payload, (packet.timestamp - first[0]) % (1 << 32), Fraction(1, codec.clockRate)
                )
            except Exception:
                log.exception("forwarding failed")
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def hook_sender_pli(sender: RTCRtpSender, on_pli: Callable[[], None]) -> None:
    """Call ``on_pli`` when the remote end of an outbound video track asks for a key frame (RTCP
    PLI): the sender only packs forwarded frames, so the request must go to the source."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            on_pli()
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver) -> None:
    """Ask the sender of a video stream for a key frame (RTCP PLI), e.g. for a new receiver."""
    for ssrc in list(receiver._RTCRtpReceiver__active_ssrc):  # type: ignore[attr-defined]
        await receiver._send_rtcp_pli(ssrc)


class RelayTrack(MediaStreamTrack):
    """An outgoing track fed with encoded frames; its sender packs them without encoding."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._frames: asyncio.Queue[Packet] = asyncio.Queue(maxsize=RELAY_QUEUE)
        self.forwarded = 0
        self.dropped = 0

    def feed(self, packet: Packet) -> None:
        if self._frames.full():
            self._frames.get_nowait()
            self.dropped += 1
        self._frames.put_nowait(packet)
        self.forwarded += 1

    def clear(self) -> None:
        while not self._frames.empty():
            self._frames.get_nowait()

    async def recv(self) -> Packet:
        return await self._frames.get()


def make_packet(data: bytes, timestamp: int, time_base: Fraction) -> Packet:
    """One packet per forwarded frame, shared by every receiver (senders only read it)."""
    packet = av.Packet(data)
    packet.pts = timestamp
    packet.time_base = time_base
    return packet


def parse_ice_servers(urls: str, username: str, credential: str) -> list[RTCIceServer]:
    """``ice_servers`` config: STUN/TURN URLs separated by commas or spaces."""
    found = [u for u in urls.replace(",", " ").split() if u]
    if not found:
        return []
    return [RTCIceServer(urls=found, username=username or None, credential=credential or None)]


def ice_configuration(servers: list[RTCIceServer]) -> RTCConfiguration:
    # Never the default: aiortc would contact a public STUN server (stack-notes pitfall 3).
    return RTCConfiguration(iceServers=servers)


def add_public_ip(sdp: str, public_ip: str) -> str:
    """For a daemon behind a 1:1 NAT: duplicate every host candidate with ``public_ip`` (same
    port, lower priority); the client's checks to the public address reach the same socket."""
    if not public_ip:
        return sdp
    out: list[str] = []
    for line in sdp.split("\r\n"):
        out.append(line)
        if line.startswith("a=candidate:") and " typ host" in line:
            cand = candidate_from_sdp(line[len("a=") :].split(":", 1)[1])
            if cand.ip == public_ip:
                continue
            parts = line.split(" ")
            parts[0] = parts[0] + "p"  # a distinct foundation
            parts[3] = str(max(1, int(parts[3]) - 1))
            parts[4] = public_ip
            out.append(" ".join(parts))
    return "\r\n".join(out)


# -- asyncio-side helpers the voice service calls through the bridge ----------------------------


async def new_peer(config: RTCConfiguration) -> RTCPeerConnection:
    return RTCPeerConnection(configuration=config)


async def add_transceiver(
    pc: RTCPeerConnection, what: str | MediaStreamTrack, direction: str
) -> RTCRtpTransceiver:
    return pc.addTransceiver(what, direction=direction)


async def make_offer(pc: RTCPeerConnection) -> str:
    """Create and apply an offer; aiortc gathers every candidate first, so the SDP carries them
    all (the server trickles nothing after it)."""
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    return str(pc.localDescription.sdp)


async def apply_answer(pc: RTCPeerConnection, sdp: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


async def add_candidate(
    pc: RTCPeerConnection, candidate: str, sdp_mid: str | None, index: int | None
) -> None:
    text = candidate[len("candidate:") :] if candidate.startswith("candidate:") else candidate
    if not text:
        return  # end of candidates: nothing to do for aiortc
    cand = candidate_from_sdp(text)
    cand.sdpMid = sdp_mid
    cand.sdpMLineIndex = index
    await pc.addIceCandidate(cand)


async def close_peer(pc: RTCPeerConnection) -> None:
    await pc.close()


def restrict_udp_ports(loop: asyncio.AbstractEventLoop, low: int, high: int) -> None:
    """Make ``loop`` bind every UDP socket that asks for "any port" to a free port in
    ``low``-``high`` instead (for firewalls that open one range to the SFU).

    aioice binds each ICE host candidate with ``loop.create_datagram_endpoint(local_addr=(addr,
    0))`` and has no port option; the loop is the SFU's own, so replacing the method on this one
    loop object changes nothing else in the process.
    """
    original = loop.create_datagram_endpoint
    span = high - low + 1
    cursor = [0]  # where the next search starts, so released ports are not retried first

    async def create_datagram_endpoint(protocol_factory: Any, local_addr: Any = None, **kw: Any) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await original(protocol_factory, local_addr=local_addr, **kw)
        for i in range(span):
            port = low + (cursor[0] + i) % span
            try:
                result = await original(protocol_factory, local_addr=(local_addr[0], port), **kw)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            cursor[0] = (port - low + 1) % span
            return result
        # aioice swallows this OSError (the peer just lacks that candidate): say it here.
        log.warning("no free UDP port for a voice peer", extra={"fields": {"range": f"{low}-{high}"}})
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {low}-{high} on {local_addr[0]}")

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign,assignment]
