"""QUIC media forwarding: a room of N QUIC clients through a real `vox serve`, beside a raw trio
UDP relay.

    python3 bench/media_quic.py [--size 10] [--speakers 1,3,10] [--seconds 10] [--warmup 2] [--repeat 1]

- The daemon runs as a subprocess (SQLite, in-process broker, rate limits raised). N users
  register, join one guild and `voice_join {transport: "quic"}` its voice channel through the
  gateway; each opens its media connection with vox.transports.quic_client (aioquic sans-IO on a
  trio UDP socket, all in this process) and authenticates with its media token.
- Speakers send one audio datagram every 20 ms (50/s): the 22-byte header plus a 160-byte payload
  whose first 8 bytes are `time.perf_counter()` at sending. The server forwards each to the N-1
  others. Speaker i sends at phase i/N of the 20 ms tick (unsynchronised, like real clients), in
  both the QUIC and the relay scenarios.
- Per scenario, after --warmup seconds, for --seconds: forwarded datagrams/s (received by the
  clients), one-way latency sender -> server -> receiver p50/p99 (measured in this process, so it
  includes the clients' own QUIC work), server CPU seconds per 1,000 forwarded datagrams
  (user+system of the daemon from /proc).
- The ceiling, in the same run and the same scenarios: a raw UDP relay written with trio (a
  subprocess: one socket, every datagram sent on to every other registered address, no QUIC, no
  checks), N plain trio UDP clients sending the same 182-byte datagrams. "Added latency" is the
  QUIC path's latency minus the relay's at the same percentile. "In-server" is the daemon's own
  `vox_media_forward_delay_seconds` histogram over the same window (read off the socket -> sent
  to the receiver; bucket-interpolated like Prometheus's histogram_quantile), which leaves out the
  kernel and the clients. With --repeat R each scenario is
  measured R times, QUIC and relay alternating, so that load from other processes shows up as
  disagreement between runs rather than as one misleading figure.

Prints one JSON line on stdout and a table on stderr. Everything binds 127.0.0.1; every process
started here is stopped on the way out. Clients share this process (and the machine's cores) with
the measurement, so the client side's QUIC work (decrypting, ACKing) is part of both the latency
and the CPU competition.
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
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import cpu_seconds, percentile, voice_room, vox_server
from vox.protocol.media import HEADER_SIZE, Codec, MediaHeader, MediaType
from vox.transports.quic_client import MediaClient, open_media_client

PAYLOAD = 160
INTERVAL = 0.02
RATE_LIMITS = (
    "auth=100000000/1,login_failures=100000000/1,api=100000000/1,gateway_identify=100000000/1,"
    "voice_join=100000000/1"
)
RELAY = """
import socket, trio

async def main():
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    peers = []
    while True:
        data, addr = await sock.recvfrom(2048)
        if data == b"reset":  # a new scenario: forget the previous clients
            peers = []
            continue
        if addr not in peers:
            peers.append(addr)
        if data == b"hello":
            continue
        for peer in peers:
            if peer != addr:
                await sock.sendto(data, peer)

trio.run(main)
"""


@dataclass
class Stats:
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    recording: bool = False

    def on_datagram(self, data: bytes, _now: float = 0.0) -> None:
        if not self.recording:
            return
        now = time.perf_counter()
        (sent,) = struct.unpack_from("!d", data, HEADER_SIZE)
        self.received += 1
        self.latencies.append(now - sent)


async def delay_buckets(http: httpx.AsyncClient) -> list[tuple[float, float]]:
    """The daemon's vox_media_forward_delay_seconds histogram: (upper bound, cumulative count)."""
    text = (await http.get("/metrics")).text
    out = []
    for line in text.splitlines():
        if line.startswith("vox_media_forward_delay_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float(bound), float(line.rsplit(" ", 1)[1])))
    return out


def bucket_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile over the window: linear within the bucket."""
    counts = [(b, a - c) for (b, a), (_, c) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1)
        lower, below = bound, cumulative
    return lower


def stamped(header: bytes) -> bytes:
    return header + struct.pack("!d", time.perf_counter()) + bytes(PAYLOAD - 8)


@dataclass
class Member:
    client: MediaClient
    session: dict[str, Any]
    index: int = 0
    room_size: int = 1
    seq: int = 0
    speaking: bool = False

    def header(self) -> bytes:
        self.seq += 1
        return MediaHeader(
            MediaType.AUDIO,
            Codec.OPUS,
            self.session["room_id"],
            self.session["ssrc"],
            sequence=self.seq,
            timestamp=self.seq * 960,
        ).encode()


@asynccontextmanager
async def quic_room(
    gateway: str, tokens: list[str], channel_id: str, stats: Stats
) -> AsyncIterator[list[Member]]:
    members: list[Member] = []
    done = trio.Event()

    async def one(token: str, task_status: trio.TaskStatus[Member] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(gateway, subprotocols=["vox.v1"]) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
            await ws.get_message()
            await ws.send_message(
                json.dumps({"type": "voice_join", "d": {"channel_id": channel_id, "transport": "quic"}})
            )
            with trio.fail_after(30):
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame["type"] == "voice_media_session":
                        session = frame["d"]
                        break
                    if frame["type"] == "voice_error":
                        raise RuntimeError(frame["d"])
            async with trio.open_nursery() as inner, open_media_client(session["media_url"]) as client:
                # Keep reading the gateway so its queue never fills.
                inner.start_soon(_drain, ws)
                client.on_datagram = stats.on_datagram
                with trio.fail_after(30):
                    await client.authenticate(session["media_token"])
                member = Member(client, session, index=len(members), room_size=len(tokens))
                inner.start_soon(_speak, member)
                task_status.started(member)
                await done.wait()
                inner.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        try:
            for token in tokens:
                members.append(await nursery.start(one, token))
            await trio.sleep(0.5)
            yield members
        finally:
            done.set()


async def _drain(ws: Any) -> None:
    async def heartbeat() -> None:
        while True:
            await trio.sleep(10)
            await ws.send_message(json.dumps({"type": "heartbeat", "d": None}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat)
        while True:
            await ws.get_message()


def first_tick(index: int, count: int) -> float:
    """Speakers send at evenly spread phases of the 20 ms tick, as unsynchronised real clients
    would; all at the same instant would measure queueing behind a burst, not forwarding."""
    now = trio.current_time()
    return (now // INTERVAL + 1) * INTERVAL + (index % count) * INTERVAL / count


async def _speak(member: Member) -> None:
    next_at = first_tick(member.index, member.room_size)
    await trio.sleep_until(next_at)
    while True:
        if member.speaking:
            member.client.send(stamped(member.header()))
            await member.client.flush()
        next_at += INTERVAL
        await trio.sleep_until(next_at)


async def measure(pid: int, stats: Stats, warmup: float, seconds: float) -> dict[str, Any]:
    stats.recording, stats.received, stats.latencies = False, 0, []
    await trio.sleep(warmup)
    cpu0 = cpu_seconds(pid)
    own0 = time.process_time()
    stats.recording = True
    await trio.sleep(seconds)
    stats.recording = False
    cpu = cpu_seconds(pid) - cpu0
    own = time.process_time() - own0
    return {
        "datagrams_per_s": round(stats.received / seconds),
        "p50_ms": round(percentile(stats.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(stats.latencies, 99) * 1000, 2),
        "cpu_s_per_1000": round(cpu / max(stats.received, 1) * 1000, 4),
        "server_cpu_pct": round(cpu / seconds * 100),
        "clients_cpu_pct": round(own / seconds * 100),
    }


async def relay_scenario(
    port: int, pid: int, n: int, speakers: int, warmup: float, seconds: float
) -> dict[str, Any]:
    stats = Stats()
    socks = []
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        await control.sendto(b"reset", ("127.0.0.1", port))
    await trio.sleep(0.05)
    for _ in range(n):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(b"hello", ("127.0.0.1", port))
        socks.append(sock)
    await trio.sleep(0.2)
    header = MediaHeader(MediaType.AUDIO, Codec.OPUS, 1, 1).encode()

    async def receive(sock: Any) -> None:
        while True:
            stats.on_datagram(await sock.recv(2048))

    async def speak(sock: Any, index: int) -> None:
        next_at = first_tick(index, n)
        await trio.sleep_until(next_at)
        while True:
            await sock.sendto(stamped(header), ("127.0.0.1", port))
            next_at += INTERVAL
            await trio.sleep_until(next_at)

    async with trio.open_nursery() as nursery:
        for i, sock in enumerate(socks):
            nursery.start_soon(receive, sock)
            if i < speakers:
                nursery.start_soon(speak, sock, i)
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
        env = {"VOX_RATE_LIMITS": RATE_LIMITS, "VOX_VOICE_ROOM_LIMIT": "200"}
        with vox_server(env) as server:
            async with httpx.AsyncClient(base_url=server.rest, timeout=60) as http:
                tokens, channel_id = await voice_room(http, args.size, "m")
                stats = Stats()
                async with quic_room(server.gateway, tokens, channel_id, stats) as members:
                    for speakers, repeat in [(k, r) for k in args.speakers for r in range(args.repeat)]:
                        speakers = min(speakers, args.size)
                        for i, member in enumerate(members):
                            member.speaking = i < speakers
                        await trio.sleep(args.warmup)
                        before = await delay_buckets(http)
                        quic = await measure(server.proc.pid, stats, 0, args.seconds)
                        after = await delay_buckets(http)
                        quic["server_p50_ms"] = round(bucket_quantile(before, after, 0.5) * 1000, 3)
                        quic["server_p99_ms"] = round(bucket_quantile(before, after, 0.99) * 1000, 3)
                        for member in members:
                            member.speaking = False
                        raw = await relay_scenario(
                            relay_port, relay.pid, args.size, speakers, args.warmup, args.seconds
                        )
                        row = {
                            "n": args.size,
                            "speakers": speakers,
                            "run": repeat + 1,
                            "expected_per_s": speakers * (args.size - 1) * 50,
                            "quic": quic,
                            "relay": raw,
                            "added_p50_ms": round(quic["p50_ms"] - raw["p50_ms"], 2),
                            "added_p99_ms": round(quic["p99_ms"] - raw["p99_ms"], 2),
                        }
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                metrics = (await http.get("/metrics")).text
                dropped = [
                    line for line in metrics.splitlines() if line.startswith("vox_media_datagrams_dropped")
                ]
                print("\n".join(dropped) or "no media datagram dropped", file=sys.stderr)
    finally:
        relay.kill()
        relay.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--speakers", default="1,3,10")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="QUIC/relay pairs per scenario (other load on the machine)"
    )
    args = parser.parse_args()
    args.speakers = [int(s) for s in args.speakers.split(",")]
    rows = trio.run(main_async, args)
    print(
        "| N | speakers | run | expected/s | QUIC fwd/s | QUIC p50 / p99 ms | relay fwd/s "
        "| relay p50 / p99 ms | added p50 / p99 ms | in-server p50 / p99 ms "
        "| server CPU s / 1k fwd | server CPU % | relay CPU s / 1k |",
        file=sys.stderr,
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        q, u = r["quic"], r["relay"]
        cells = [
            r["n"],
            r["speakers"],
            r["run"],
            r["expected_per_s"],
            q["datagrams_per_s"],
            f"{q['p50_ms']} / {q['p99_ms']}",
            u["datagrams_per_s"],
            f"{u['p50_ms']} / {u['p99_ms']}",
            f"{r['added_p50_ms']} / {r['added_p99_ms']}",
            f"{q['server_p50_ms']} / {q['server_p99_ms']}",
            q["cpu_s_per_1000"],
            q["server_cpu_pct"],
            u["cpu_s_per_1000"],
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |", file=sys.stderr)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
