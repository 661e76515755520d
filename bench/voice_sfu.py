"""Voice SFU: a room of N aiortc clients through a real `vox serve`, beside a raw UDP relay.

    python bench/voice_sfu.py [--sizes 5,10,25] [--speakers 1,3,all] [--seconds 5] [--warmup 2]

- The daemon runs as a subprocess (SQLite, in-process broker, `voice_host_addresses=127.0.0.1`).
  N users register, join one guild and `voice_join` its voice channel through the gateway; each
  client is a real aiortc `RTCPeerConnection` in this process (one trio loop, one trio_asyncio
  loop). Every client adds a sending track; only the speakers' tracks produce packets.
- Speakers send one 80-byte "Opus" payload every 20 ms (the size of 32 kbit/s Opus), stamped with
  time.time(); the SFU forwards payloads without decoding, so they need not be real Opus. The
  clients receive at the RTP level (the SFU's own forwarding hook, before aiortc's jitter buffer
  and decoder), so client-side codec work is not measured.
- Per scenario (N, speakers), after --warmup seconds, for --seconds: forwarded packets/s (received
  by the clients), one-way latency sender -> SFU -> receiver p50/p99, server CPU seconds per 1,000
  forwarded packets (user+system of the daemon from /proc).
- The ceiling, in the same run and the same scenarios: a raw UDP relay (a subprocess: one socket,
  every datagram sent on to every other registered client), N plain UDP clients sending the same
  stamped 80-byte payloads. "Added latency" is the SFU's latency minus the relay's at the same
  percentile.

Prints one JSON line on stdout and a table on stderr. Everything binds 127.0.0.1; every process
started here is stopped on the way out. The clients share this process's CPU (2 cores here): at
the largest rooms with everyone speaking the client side saturates too, so those rows bound the
SFU from below.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import httpx
import trio
import trio_asyncio
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import cpu_seconds, percentile, voice_room, vox_server
from vox.transports.webrtc import hook_receiver

PAYLOAD = 80
RATE_LIMITS = (
    "auth=100000000/1,login_failures=100000000/1,api=100000000/1,gateway_identify=100000000/1,"
    "voice_join=100000000/1"
)
RELAY = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
peers = []
while True:
    data, addr = sock.recvfrom(2048)
    if addr not in peers:
        peers.append(addr)
    if data == b"hello":
        continue
    for peer in peers:
        if peer != addr:
            sock.sendto(data, peer)
"""


@dataclass
class Stats:
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    recording: bool = False

    def on_payload(self, data: bytes) -> None:
        if not self.recording or len(data) < 8:
            return
        self.received += 1
        self.latencies.append(time.time() - struct.unpack("!d", data[:8])[0])


class StampTrack(MediaStreamTrack):
    """80-byte stamped payloads every 20 ms as av.Packets (the sender packs them, no encoding)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.speaking = False
        self._pts = 0
        self._next = 0.0

    async def recv(self) -> Any:
        import asyncio

        while not self.speaking:
            await asyncio.sleep(0.05)
            self._next = 0.0
        now = time.monotonic()
        if self._next == 0.0:
            self._next = now
        elif self._next > now:
            await asyncio.sleep(self._next - now)
        self._next += 0.02
        packet = av.Packet(struct.pack("!d", time.time()) + bytes(PAYLOAD - 8))
        packet.pts = self._pts
        packet.time_base = Fraction(1, 48_000)
        self._pts += 960
        return packet


class Client:
    def __init__(self, ws: WebSocketConnection, stats: Stats) -> None:
        self.ws = ws
        self.stats = stats
        self.track = StampTrack()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peer_id: str | None = None
        self.hooked: set[int] = set()
        self.answered = 0

    async def run(self) -> None:
        try:
            while True:
                frame = json.loads(await self.ws.get_message())
                if frame["type"] == "voice_offer":
                    await trio_asyncio.aio_as_trio(self._answer)(frame["d"]["sdp"])
                    await self.ws.send_message(
                        json.dumps({"type": "voice_answer", "d": {"sdp": self.pc.localDescription.sdp}})
                    )
                    self.answered += 1
        except ConnectionClosed:
            pass

    async def _answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if self.track not in [s.track for s in self.pc.getSenders()]:
            self.pc.addTrack(self.track)
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if id(receiver) not in self.hooked:
                self.hooked.add(id(receiver))
                hook_receiver(receiver, lambda d, t, b: self.stats.on_payload(d), per_packet=True)
        await self.pc.setLocalDescription(await self.pc.createAnswer())

    async def close(self) -> None:
        with trio.move_on_after(5):
            await trio_asyncio.aio_as_trio(self.pc.close)()


@asynccontextmanager
async def sfu_room(
    gateway: str, tokens: list[str], channel_id: str, stats: Stats
) -> AsyncIterator[list[Client]]:
    clients: list[Client] = []
    done = trio.Event()

    async def one(token: str, task_status: trio.TaskStatus[Client] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(gateway, subprotocols=["vox.v1"]) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
            await ws.get_message()
            client = Client(ws, stats)
            try:
                async with trio.open_nursery() as inner:
                    inner.start_soon(client.run)
                    await ws.send_message(json.dumps({"type": "voice_join", "d": {"channel_id": channel_id}}))
                    with trio.fail_after(30):
                        while client.answered == 0:
                            await trio.sleep(0.01)
                    task_status.started(client)
                    await done.wait()
                    inner.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await client.close()

    async with trio.open_nursery() as nursery:
        try:
            for token in tokens:
                clients.append(await nursery.start(one, token))
            # every renegotiation answered and every peer connected
            with trio.fail_after(60):
                while not all(c.pc.connectionState == "connected" for c in clients):
                    await trio.sleep(0.05)
            await trio.sleep(1)
            yield clients
        finally:
            done.set()


async def measure(pid: int, stats: Stats, warmup: float, seconds: float) -> dict[str, Any]:
    stats.recording, stats.received, stats.latencies = False, 0, []
    await trio.sleep(warmup)
    cpu0 = cpu_seconds(pid)
    stats.recording = True
    await trio.sleep(seconds)
    stats.recording = False
    cpu = cpu_seconds(pid) - cpu0
    return {
        "packets_per_s": round(stats.received / seconds),
        "p50_ms": round(percentile(stats.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(stats.latencies, 99) * 1000, 2),
        "cpu_s_per_1000": round(cpu / max(stats.received, 1) * 1000, 4),
        "server_cpu_pct": round(cpu / seconds * 100),
    }


async def relay_scenario(
    port: int, pid: int, n: int, speakers: int, warmup: float, seconds: float
) -> dict[str, Any]:
    stats = Stats()
    socks = []
    for _ in range(n):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(b"hello", ("127.0.0.1", port))
        socks.append(sock)
    await trio.sleep(0.2)

    async def receive(sock: Any) -> None:
        while True:
            data = await sock.recv(2048)
            stats.on_payload(data)

    async def speak(sock: Any) -> None:
        next_at = trio.current_time()
        while True:
            await sock.sendto(struct.pack("!d", time.time()) + bytes(PAYLOAD - 8), ("127.0.0.1", port))
            next_at += 0.02
            await trio.sleep_until(next_at)

    async with trio.open_nursery() as nursery:
        for i, sock in enumerate(socks):
            nursery.start_soon(receive, sock)
            if i < speakers:
                nursery.start_soon(speak, sock)
        result = await measure(pid, stats, warmup, seconds)
        nursery.cancel_scope.cancel()
    for sock in socks:
        sock.close()
    return result


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    relay = subprocess.Popen([sys.executable, "-c", RELAY], stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None
        relay_port = int(relay.stdout.readline())
        env = {
            "VOX_RATE_LIMITS": RATE_LIMITS,
            "VOX_VOICE_HOST_ADDRESSES": "127.0.0.1",
            "VOX_VOICE_ROOM_LIMIT": "200",
        }
        with vox_server(env) as server:
            async with trio_asyncio.open_loop(), httpx.AsyncClient(base_url=server.rest, timeout=60) as http:
                for n in args.sizes:
                    tokens, channel_id = await voice_room(http, n, "b")
                    stats = Stats()
                    async with sfu_room(server.gateway, tokens, channel_id, stats) as clients:
                        for spec in args.speakers:
                            speakers = n if spec == "all" else min(int(spec), n)
                            for i, client in enumerate(clients):
                                client.track.speaking = i < speakers
                            sfu = await measure(server.proc.pid, stats, args.warmup, args.seconds)
                            for client in clients:
                                client.track.speaking = False
                            raw = await relay_scenario(
                                relay_port, relay.pid, n, speakers, args.warmup, args.seconds
                            )
                            expected = speakers * (n - 1) * 50
                            row = {
                                "n": n,
                                "speakers": speakers,
                                "expected_per_s": expected,
                                "sfu": sfu,
                                "relay": raw,
                                "added_p50_ms": round(sfu["p50_ms"] - raw["p50_ms"], 2),
                                "added_p99_ms": round(sfu["p99_ms"] - raw["p99_ms"], 2),
                            }
                            rows.append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        relay.kill()
        relay.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5,10,25")
    parser.add_argument("--speakers", default="1,3,all")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.speakers = args.speakers.split(",")
    rows = trio.run(main_async, args)
    print(
        "| N | speakers | expected pkt/s | SFU pkt/s | SFU p50 / p99 ms | relay pkt/s | relay p50 / p99 ms "
        "| added p50 / p99 ms | SFU CPU s / 1k pkts | SFU CPU % |",
        file=sys.stderr,
    )
    print("|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        s, u = r["sfu"], r["relay"]
        print(
            f"| {r['n']} | {r['speakers']} | {r['expected_per_s']} | {s['packets_per_s']} | {s['p50_ms']} / "
            f"{s['p99_ms']} | {u['packets_per_s']} | {u['p50_ms']} / {u['p99_ms']} | {r['added_p50_ms']} / "
            f"{r['added_p99_ms']} | {s['cpu_s_per_1000']} | {s['server_cpu_pct']} |",
            file=sys.stderr,
        )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
