"""Real aiortc voice clients for the SFU end-to-end tests.

The clients run in the test process, inside their own ``trio_asyncio`` loop on purpose
(stack-notes pitfall 6), and talk to the daemon through its gateway like any client would. Each
sends a generated tone; each received track is recorded so a test can find its dominant
frequency (FFT) and whether frames keep arriving.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import trio
import trio_asyncio
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaStreamError
from aiortc.mediastreams import VideoStreamTrack
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.e2e.conftest import Daemon

RATE = 48_000
SAMPLES = 960  # 20 ms


class ToneTrack(MediaStreamTrack):
    """A sine tone in 20 ms, 48 kHz mono frames, paced in real time, labelled consistently."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.freq = freq
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:  # type: ignore[override]
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(SAMPLES) + self._pts) / RATE
        data = (0.3 * 32767 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, RATE)
        self._pts += SAMPLES
        return frame


@dataclass(eq=False)
class Received:
    kind: str
    frames: int = 0
    samples: list[np.ndarray] = field(default_factory=list)
    last: float = 0.0

    def dominant(self, seconds: float = 0.5) -> float:
        """The strongest frequency in the last ``seconds`` received."""
        data = np.concatenate(self.samples[-int(seconds * 50) :]).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(data * np.hanning(len(data))))
        freqs = np.fft.rfftfreq(len(data), 1 / RATE)
        return float(freqs[int(np.argmax(spectrum))])


class VoiceClient:
    def __init__(self, ws: WebSocketConnection, name: str, freq: float) -> None:
        self.ws = ws
        self.name = name
        self.tone = ToneTrack(freq)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.received: list[Received] = []
        self.events: list[dict[str, Any]] = []
        self.event_added = trio.Event()
        self.offers = 0
        self.answered = 0
        self.screen: VideoStreamTrack | None = None
        self._mic_added = False
        self.peer_id: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        record = Received(track.kind)
        self.received.append(record)
        self._tasks.append(asyncio.ensure_future(self._consume(track, record)))

    async def _consume(self, track: MediaStreamTrack, record: Received) -> None:
        try:
            while True:
                frame = await track.recv()
                record.frames += 1
                record.last = time.monotonic()
                if record.kind == "audio":
                    assert isinstance(frame, av.AudioFrame)
                    channels = len(frame.layout.channels)
                    record.samples.append(frame.to_ndarray().reshape(-1, channels)[:, 0].copy())
                    del record.samples[:-100]
        except MediaStreamError:
            pass

    async def send(self, type_: str, d: Any = None) -> None:
        await self.ws.send_message(json.dumps({"type": type_, "d": d}))

    async def run(self) -> None:
        """Read frames: answer offers, keep the rest for the test."""
        try:
            while True:
                raw = await self.ws.get_message()
                frame = json.loads(raw)
                if frame["type"] == "voice_offer":
                    self.offers += 1
                    if frame["d"]["peer_id"] != self.peer_id:
                        await self._new_peer(frame["d"]["peer_id"])
                    await self._answer(frame["d"]["sdp"])
                    self.answered += 1
                self.events.append(frame)
                self.event_added.set()
                self.event_added = trio.Event()
        except ConnectionClosed:
            pass

    async def _new_peer(self, peer_id: str) -> None:
        """The server started a new peer connection (first join, another channel, a move)."""
        if self.peer_id is not None:
            await self.close()
            self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.pc.on("track", self._on_track)
            self.tone = ToneTrack(self.tone.freq)
            self.received = []
            self._mic_added = False
        self.peer_id = peer_id

    async def _answer(self, sdp: str) -> None:
        async def answer() -> str:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not self._mic_added:
                self.pc.addTrack(self.tone)
                self._mic_added = True
            if self.screen is not None and self.screen not in [s.track for s in self.pc.getSenders()]:
                # The server's recvonly video m-line (sendonly from our side) is where the screen
                # goes, not a slot that carries someone else's screen to us.
                for transceiver in self.pc.getTransceivers():
                    if transceiver.kind == "video" and transceiver._offerDirection == "sendonly":
                        transceiver.sender.replaceTrack(self.screen)
                        transceiver.direction = "sendonly"
                        break
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            return str(self.pc.localDescription.sdp)

        answer_sdp = await trio_asyncio.aio_as_trio(answer)()
        await self.send("voice_answer", {"sdp": answer_sdp})

    async def wait_event(self, type_: str, where: Any = None, timeout: float = 10) -> dict[str, Any]:
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for frame in self.events[seen:]:
                    if frame["type"] == type_ and (where is None or where(frame["d"])):
                        self.events.remove(frame)
                        d: dict[str, Any] = frame["d"]
                        return d
                seen = 0
                await self.event_added.wait()

    def audio_tracks(self) -> list[Received]:
        return [r for r in self.received if r.kind == "audio" and r.samples]

    async def close(self) -> None:
        with trio.move_on_after(5):
            await trio_asyncio.aio_as_trio(self.pc.close)()
        for task in self._tasks:
            task.cancel()


@asynccontextmanager
async def voice_client(daemon: Daemon, token: str, name: str, freq: float) -> AsyncIterator[VoiceClient]:
    async with open_websocket_url(daemon.gateway, subprotocols=["vox.v1"]) as ws:
        await ws.get_message()  # hello
        await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
        ready = json.loads(await ws.get_message())
        assert ready["type"] == "ready", ready
        client = VoiceClient(ws, name, freq)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await client.close()


async def wait_until(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")
