"""Gateway fan-out: one sender, one channel, N connected clients; Vox against a bare ceiling.

    python bench/gateway_fanout.py [--sizes 100,1000] [--seconds 10] [--rates 10,50] [--repeat 3]
                                   [--rss 1000,5000] [--workers 2] [--inflight 4] [--window 128]
                                   [--profile FILE [--profile-size N]] [--quick]

Both servers run side by side for the whole run: a real `vox serve` subprocess (SQLite,
in-process broker) and bench/broadcast_baseline.py (a bare trio-websocket broadcast server: same
JSON frames, no auth, no storage) as the ceiling.

- Setup over REST: users register and log in (real Argon2id parameters, bounded concurrency),
  the owner creates one guild per N, and N members join it through an invite.
- "No listeners": the fast run below with nobody connected, i.e. what a send costs by itself
  (HTTP, auth, storage, publish; for the ceiling, a publish frame).
- For each N in --sizes: N gateway clients identify with Vox (one per member) and N connect to
  the ceiling, each set in its own group, all at once. The server CPU and the events received
  while Vox's clients connect (presence) are recorded. Then, --repeat times, each mode runs
  once against Vox and once against the ceiling, alternating, and each row reports medians:
  - paced at each of --rates messages/s for --seconds: the owner posts to the guild's text
    channel over REST (`POST /api/v1/channels/{id}/messages`); the ceiling's sender sends a
    `publish` frame over its own WebSocket instead;
  - fast for --seconds: --inflight concurrent requests back to back.
  In every run the sender never gets more than --window messages ahead of the slowest client,
  so no client is cut off for lagging and every message reaches every client; a server past its
  capacity falls behind the schedule instead (the achieved rate shows it). Each message's
  content carries a run id, a counter and time.monotonic_ns() taken just before the request;
  receivers (in --workers client processes, each one trio loop with many trio-websocket clients)
  read CLOCK_MONOTONIC, which is system-wide on Linux, on every message_new and report latencies.
  Server CPU (user+system from /proc) over each run gives CPU per 1,000 deliveries and per send.
- RSS per idle connection: a fresh daemon (and a fresh ceiling process), VmRSS with 0 connections
  after a warm-up, then after each count in --rss identified idle connections: (RSS_n - RSS_0)/n.
  For the daemon a handful of users (--rss-users) each open many connections (one user, many
  devices), all members of one guild.
- --profile FILE records the daemon with `py-spy record -f raw` during the first fast run at
  --profile-size (0: the no-listener run) and summarises the busy samples.

Prints one JSON line on stdout and the comparison tables on stderr. Everything binds 127.0.0.1
only, every loop is bounded in count and time, and every process started here is stopped (SIGTERM
then SIGKILL) on the way out, errors included.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import cpu_seconds, percentile, vox_server

HERE = os.path.dirname(os.path.abspath(__file__))
PASSWORD = "bench password 123"
MARK = "fanout:"  # content = fanout:<phase>:<counter>:<monotonic_ns>:<padding>
CONTENT_CHARS = 120  # about a chat line
EVENT_PREFIX = '{"type":"message_new"'
RATE_LIMITS = "auth=100000000/1,login_failures=100000000/1,api=100000000/1,gateway_identify=100000000/1"
PROGRESS_PERIOD_S = 0.02
CONNECT_TIMEOUT_S = 60.0


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one (child processes, the daemon included,
    inherit it); 5,000 connections need 5,000+ descriptors on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def log(text: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# =================================================================================================
# Client worker process: many trio-websocket clients in one trio loop, driven over stdin/stdout.
# =================================================================================================


@dataclass
class WorkerState:
    """Clients belong to groups (one per server), so clients of both servers can stay connected
    while runs alternate between them; a run counts and paces on its own group only."""

    phase: int = -1
    phase_clients: list[int] = field(default_factory=list)  # indexes of the current run's group
    counts: list[int] = field(default_factory=list)  # deliveries per client in the current phase
    alive: list[bool] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    latencies_us: array = field(default_factory=lambda: array("q"))
    first_recv: int = 0
    last_recv: int = 0
    stale: int = 0  # message_new of another phase (should stay 0)
    binary_events: int = 0
    text_events: int = 0
    live: int = 0
    disconnects: int = 0
    close_codes: Counter[str] = field(default_factory=Counter)
    other_events: Counter[str] = field(default_factory=Counter)  # server events but message_new
    errors: list[str] = field(default_factory=list)
    closing: dict[str, trio.Event] = field(default_factory=dict)

    def record(self, text: str, now: int, idx: int) -> None:
        """A received message of client ``idx`` at ``now`` (ns): counted with its latency when it
        carries the mark of the current phase."""
        i = text.find(MARK)
        if i < 0:
            return
        start = i + len(MARK)
        phase, _counter, sent, _ = text[start : start + 64].split(":", 3)
        if int(phase) != self.phase:
            self.stale += 1
            return
        self.latencies_us.append((now - int(sent)) // 1000)
        self.counts[idx] += 1
        if not self.first_recv:
            self.first_recv = now
        self.last_recv = now

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text[:300])

    def closing_event(self, group: str) -> trio.Event:
        return self.closing.setdefault(group, trio.Event())

    def live_in(self, group: str) -> int:
        return sum(1 for a, g in zip(self.alive, self.groups, strict=True) if a and g == group)


async def _heartbeats(ws: Any, interval_s: float) -> None:
    await trio.sleep(random.uniform(0.1, 0.75) * interval_s)
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send_message('{"type":"heartbeat"}')
            await trio.sleep(0.75 * interval_s)


async def _receive(state: WorkerState, idx: int, ws: Any) -> None:
    get = ws.get_message
    while True:
        data = await get()
        now = time.monotonic_ns()
        is_bytes = isinstance(data, bytes)
        if is_bytes:
            data = data.decode()
        if not data.startswith(EVENT_PREFIX):
            # hello, ready, heartbeat_ack (no seq) or another event (presence, member events...)
            if ',"seq":null' not in data[:64]:
                state.other_events[data[9 : data.find('"', 9)]] += 1
            continue
        if is_bytes:
            state.binary_events += 1
        else:
            state.text_events += 1
        state.record(data, now, idx)


class Started:
    """Tells whoever opened a client whether it identified."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False

    def set(self, ok: bool) -> None:
        if not self.event.is_set():
            self.ok = ok
            self.event.set()


async def _client(state: WorkerState, group: str, url: str, token: str, started: Started) -> None:
    """One gateway client: hello, identify, ready; then heartbeats and receiving until told to
    close (a graceful close, so the server sees the disconnect at once) or dropped."""
    idx = -1
    try:
        async with open_websocket_url(
            url, subprotocols=["vox.v1"], connect_timeout=CONNECT_TIMEOUT_S, disconnect_timeout=5
        ) as ws:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                hello = json.loads(await ws.get_message())
                if hello.get("type") != "hello":
                    raise RuntimeError(f"expected hello, got {hello.get('type')}")
                interval_s = hello["d"]["heartbeat_interval_ms"] / 1000
                await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame.get("type") == "ready":
                        break
            idx = len(state.counts)
            state.counts.append(0)
            state.alive.append(True)
            state.groups.append(group)
            state.live += 1
            closing = state.closing_event(group)
            started.set(True)
            dropped: ConnectionClosed | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_heartbeats, ws, interval_s)

                async def until_closing() -> None:
                    await closing.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_closing)
                try:
                    await _receive(state, idx, ws)
                except ConnectionClosed as exc:
                    dropped = exc
                nursery.cancel_scope.cancel()
            if dropped is not None:
                raise dropped
    except ConnectionClosed as exc:
        code = exc.reason.code if exc.reason else None
        state.close_codes[str(code)] += 1
        state.error(f"closed {code} {exc.reason.reason if exc.reason else ''}")
        if idx >= 0:
            state.disconnects += 1
    except (OSError, HandshakeError, trio.TooSlowError, RuntimeError, ValueError, KeyError) as exc:
        state.error(f"{type(exc).__name__}: {exc}")
        if idx >= 0:
            state.disconnects += 1
    finally:
        started.set(False)
        if idx >= 0:
            state.alive[idx] = False
            state.live -= 1


class LineChannel:
    """JSON lines over a pair of byte streams."""

    def __init__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        self._send = send
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def read(self) -> dict[str, Any] | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                parsed: dict[str, Any] = json.loads(line)
                return parsed
            chunk = await self._receive.receive_some(1 << 20)
            if not chunk:
                return None
            self._buffer += chunk

    async def write(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            await self._send.send_all(data)


async def _connect_all(
    state: WorkerState, conns: trio.Nursery, group: str, url: str, tokens: list[str], concurrency: int
) -> list[bool]:
    """Open one identified client per token (at most ``concurrency`` handshakes at a time); the
    clients then live in ``conns``."""
    limiter = trio.CapacityLimiter(concurrency)
    results: list[bool] = []

    async def one(token: str) -> None:
        async with limiter:
            started = Started()
            conns.start_soon(_client, state, group, url, token, started)
            await started.event.wait()
            results.append(started.ok)

    async with trio.open_nursery() as starting:
        for token in tokens:
            starting.start_soon(one, token)
    return results


async def worker_main() -> None:
    io = LineChannel(trio.lowlevel.FdStream(os.dup(0)), trio.lowlevel.FdStream(os.dup(1)))
    state = WorkerState()

    async def progress() -> None:
        while True:
            await trio.sleep(PROGRESS_PERIOD_S)
            if state.phase < 0:
                continue
            counts, alive = state.counts, state.alive
            live = [counts[i] for i in state.phase_clients if alive[i]]
            await io.write({"p": min(live) if live else 1 << 62, "n": len(state.latencies_us)})

    async with trio.open_nursery() as conns, trio.open_nursery() as main:
        main.start_soon(progress)
        while True:
            cmd = await io.read()
            if cmd is None or cmd["cmd"] == "exit":
                break
            op = cmd["cmd"]
            if op == "connect":
                results = await _connect_all(
                    state, conns, cmd["group"], cmd["url"], cmd["tokens"], cmd["concurrency"]
                )
                await io.write({"connected": sum(results), "failed": len(results) - sum(results)})
            elif op == "phase":
                state.phase = cmd["phase"]
                state.phase_clients = [
                    i
                    for i, (a, g) in enumerate(zip(state.alive, state.groups, strict=True))
                    if a and g == cmd["group"]
                ]
                state.counts = [0] * len(state.counts)
                state.latencies_us = array("q")
                state.first_recv = state.last_recv = state.stale = 0
                await io.write({"ok": True})
            elif op == "collect":
                state.phase = -1
                await io.write(
                    {
                        "n": len(state.latencies_us),
                        "lat": base64.b64encode(state.latencies_us.tobytes()).decode(),
                        "first": state.first_recv,
                        "last": state.last_recv,
                        "stale": state.stale,
                        **_stats(state),
                    }
                )
            elif op == "stats":
                await io.write(_stats(state))
            elif op == "close":
                group = cmd["group"]
                state.closing_event(group).set()
                with trio.move_on_after(60):
                    while state.live_in(group):
                        await trio.sleep(0.05)
                del state.closing[group]
                await io.write({**_stats(state), "left_open": state.live_in(group)})
            else:
                await io.write({"error": f"unknown command {op}"})
        main.cancel_scope.cancel()
        conns.cancel_scope.cancel()


def _stats(state: WorkerState) -> dict[str, Any]:
    return {
        "live": state.live,
        "disconnects": state.disconnects,
        "codes": dict(state.close_codes),
        "other_events": dict(state.other_events),
        "errors": state.errors[:5],
        "binary_events": state.binary_events,
        "text_events": state.text_events,
        "cpu": cpu_seconds(os.getpid()),
    }


# =================================================================================================
# Parent side: worker pool, senders, runs.
# =================================================================================================


class Worker:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.io = LineChannel(proc.stdout, proc.stdin)
        self.replies_send, self.replies = trio.open_memory_channel[dict[str, Any]](16)
        self.progress_min = 0
        self.progress_n = 0

    async def pump(self) -> None:
        async with self.replies_send:
            while True:
                msg = await self.io.read()
                if msg is None:
                    return
                if "p" in msg:
                    self.progress_min, self.progress_n = msg["p"], msg["n"]
                else:
                    await self.replies_send.send(msg)

    async def call(self, cmd: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        await self.io.write(cmd)
        with trio.fail_after(timeout):
            try:
                return await self.replies.receive()
            except trio.EndOfChannel:
                raise RuntimeError(f"client worker {self.proc.pid} exited") from None


class Pool:
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    async def each(self, make: Callable[[int], dict[str, Any]], timeout: float = 600) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in self.workers]

        async def one(i: int) -> None:
            out[i] = await self.workers[i].call(make(i), timeout)

        async with trio.open_nursery() as nursery:
            for i in range(len(self.workers)):
                nursery.start_soon(one, i)
        return out

    async def connect(self, group: str, url: str, tokens: list[str], concurrency: int = 32) -> int:
        """Open one client per token (spread over the workers) into ``group``; all or an error."""
        k = len(self.workers)
        replies = await self.each(
            lambda i: {
                "cmd": "connect",
                "group": group,
                "url": url,
                "tokens": tokens[i::k],
                "concurrency": concurrency,
            }
        )
        ok = sum(r["connected"] for r in replies)
        failed = sum(r["failed"] for r in replies)
        if failed:
            stats = await self.stats()
            raise RuntimeError(f"{failed} of {len(tokens)} gateway clients failed: {stats['errors']}")
        return ok

    async def close(self, group: str) -> dict[str, Any]:
        replies = await self.each(lambda _: {"cmd": "close", "group": group}, timeout=90)
        return {**merge_stats(replies), "left_open": sum(r["left_open"] for r in replies)}

    async def stats(self) -> dict[str, Any]:
        return merge_stats(await self.each(lambda _: {"cmd": "stats"}))

    async def start_phase(self, phase: int, group: str) -> None:
        for w in self.workers:
            w.progress_min, w.progress_n = 0, 0
        await self.each(lambda _: {"cmd": "phase", "phase": phase, "group": group})

    def slowest(self) -> int:
        return min(w.progress_min for w in self.workers)

    def received(self) -> int:
        return sum(w.progress_n for w in self.workers)

    async def collect(self) -> dict[str, Any]:
        replies = await self.each(lambda _: {"cmd": "collect"})
        latencies = array("q")
        for r in replies:
            latencies.frombytes(base64.b64decode(r["lat"]))
        firsts = [r["first"] for r in replies if r["first"]]
        return {
            "latencies_us": latencies,
            "first": min(firsts) if firsts else 0,
            "last": max(r["last"] for r in replies),
            "stale": sum(r["stale"] for r in replies),
            **merge_stats(replies),
        }


def merge_stats(replies: list[dict[str, Any]]) -> dict[str, Any]:
    codes: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for r in replies:
        codes.update(r["codes"])
        others.update(r["other_events"])
    return {
        "live": sum(r["live"] for r in replies),
        "disconnects": sum(r["disconnects"] for r in replies),
        "codes": dict(codes),
        "other_events": dict(others),
        "errors": [e for r in replies for e in r["errors"]][:5],
        "binary_events": sum(r["binary_events"] for r in replies),
        "text_events": sum(r["text_events"] for r in replies),
        "cpu": sum(r["cpu"] for r in replies),
    }


@contextlib.asynccontextmanager
async def worker_pool(count: int, script: str = __file__) -> AsyncIterator[Pool]:
    """``count`` client processes, each ``script --worker`` (another benchmark may run this
    module's worker loop with its own client function)."""
    procs: list[trio.Process] = []
    try:
        async with trio.open_nursery() as nursery:
            workers = []
            for _ in range(count):
                proc = await trio.lowlevel.open_process(
                    [sys.executable, os.path.abspath(script), "--worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                procs.append(proc)
                worker = Worker(proc)
                workers.append(worker)
                nursery.start_soon(worker.pump)
            try:
                yield Pool(workers)
            finally:
                with trio.move_on_after(20) as cleanup:
                    cleanup.shield = True
                    for w in workers:
                        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                            await w.io.write({"cmd": "exit"})
                    for proc in procs:
                        await proc.wait()
                nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        with trio.CancelScope(shield=True):
            for proc in procs:
                await proc.wait()


class Sender:
    """Sends one message; True once the server accepted it (201, or the publish ack)."""

    errors: int = 0
    first_error: str = ""

    async def send(self, content: str) -> bool:
        raise NotImplementedError


class VoxSender(Sender):
    def __init__(self, client: httpx.AsyncClient, token: str, channel_id: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.path = f"/api/v1/channels/{channel_id}/messages"
        self.errors = 0
        self.first_error = ""

    async def send(self, content: str) -> bool:
        try:
            r = await self.client.post(self.path, json={"content": content}, headers=self.headers)
        except httpx.HTTPError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return False
        if r.status_code != 201:
            self._fail(f"{r.status_code} {r.text[:200]}")
            return False
        return True

    def _fail(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text


class BareSender(Sender):
    """Publishes over its own WebSocket; replies come back in order, one per publish."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.waiting: list[trio.Event] = []
        self.errors = 0
        self.first_error = ""

    async def acks(self) -> None:
        while True:
            frame = json.loads(await self.ws.get_message())
            if frame.get("type") == "published" and self.waiting:
                self.waiting.pop(0).set()

    async def send(self, content: str) -> bool:
        done = trio.Event()
        self.waiting.append(done)
        await self.ws.send_message(json.dumps({"type": "publish", "d": {"content": content}}))
        with trio.move_on_after(30):
            await done.wait()
            return True
        if done in self.waiting:
            self.waiting.remove(done)
        self.errors += 1
        self.first_error = self.first_error or "no publish ack within 30 s"
        return False


def process_busy(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


async def settle(pids: int | list[int], limit_s: float = 120.0) -> float:
    """Wait (bounded) until every server in ``pids`` is idle again (under 5% of a core over
    0.5 s), e.g. after the presence fan-out of many connects or disconnects."""
    start = time.monotonic()
    for pid in [pids] if isinstance(pids, int) else pids:
        while time.monotonic() - start < limit_s:
            busy = await trio.to_thread.run_sync(process_busy, pid, 0.5)
            if busy < 0.05:
                break
    return time.monotonic() - start


async def run_phase(
    pool: Pool,
    sender: Sender,
    pid: int,
    *,
    group: str,
    phase: int,
    clients: int,
    seconds: float,
    rate: float | None,
    inflight: int,
    window: int,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    if on_start is not None:
        await on_start()
    await pool.start_phase(phase, group)
    padding = "x" * CONTENT_CHARS
    started = 0
    sent = 0
    last_ack = 0
    stats_before = await pool.stats()
    cpu_before = cpu_seconds(pid)
    t0 = time.monotonic_ns()
    deadline = trio.current_time() + seconds

    async def one() -> None:
        nonlocal started, sent, last_ack
        started += 1
        sent_ns = time.monotonic_ns()
        content = f"{MARK}{phase}:{started}:{sent_ns}:{padding}"[:CONTENT_CHARS]
        if await sender.send(content):
            sent += 1
            last_ack = time.monotonic_ns()

    if rate:
        # Open loop at `rate`, except that (as in the fast run) the sender never gets more than
        # `window` messages ahead of the slowest client: past its capacity a server falls behind
        # the schedule (the achieved rate shows it) instead of having clients cut off.
        limiter = trio.CapacityLimiter(64)

        async def limited() -> None:
            async with limiter:
                await one()

        async with trio.open_nursery() as nursery:
            tick = trio.current_time()
            for scheduled in range(int(seconds * rate)):
                await trio.sleep_until(tick)
                while scheduled - pool.slowest() >= window and trio.current_time() < deadline:
                    await trio.sleep(0.001)
                if trio.current_time() >= deadline:
                    break  # bounded in time: a server that fell behind sends fewer
                nursery.start_soon(limited)
                tick = max(tick + 1 / rate, trio.current_time())
    else:

        async def loop() -> None:
            while trio.current_time() < deadline:
                while started - pool.slowest() >= window and trio.current_time() < deadline:
                    await trio.sleep(0.001)
                if trio.current_time() >= deadline:
                    return
                await one()

        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(loop)
    send_s = max(1e-9, (last_ack - t0) / 1e9) if sent else float("nan")

    # Drain: until every live client has every message, or nothing moves for 3 s (bounded).
    expected = sent * clients
    quiet_since, last_seen = time.monotonic(), -1
    with trio.move_on_after(60):
        while pool.received() < expected:
            await trio.sleep(0.05)
            seen = pool.received()
            if seen != last_seen:
                quiet_since, last_seen = time.monotonic(), seen
            elif time.monotonic() - quiet_since > 3:
                break
    cpu = cpu_seconds(pid) - cpu_before
    got = await pool.collect()
    latencies = sorted(got["latencies_us"])
    deliveries = len(latencies)
    span_s = (got["last"] - t0) / 1e9 if got["last"] else float("nan")
    return {
        "mode": f"paced {rate:g}/s" if rate else "fast",
        "sends": sent,
        "send_errors": sender.errors,
        "sends_per_s": round(sent / send_s, 1) if sent else 0.0,
        "deliveries": deliveries,
        "expected": expected,
        "deliveries_per_s": round(deliveries / span_s, 1) if deliveries else 0.0,
        "p50_ms": round(percentile(latencies, 50) / 1000, 2),
        "p99_ms": round(percentile(latencies, 99) / 1000, 2),
        "max_ms": round(latencies[-1] / 1000, 2) if latencies else float("nan"),
        "server_cpu_s": round(cpu, 3),
        "cpu_s_per_1000_deliveries": round(cpu / deliveries * 1000, 4) if deliveries else float("nan"),
        "cpu_ms_per_send": round(cpu / sent * 1000, 2) if sent else float("nan"),
        "client_cpu_s": round(got["cpu"] - stats_before["cpu"], 2),
        "disconnects": got["disconnects"] - stats_before["disconnects"],
        "stale": got["stale"],
        "binary_frames": got["binary_events"] - stats_before["binary_events"],
        "text_frames": got["text_events"] - stats_before["text_events"],
    }


# -- Vox setup ------------------------------------------------------------------------------------


@dataclass
class Account:
    name: str
    user_id: str = ""
    access: str = ""
    refresh: str = ""
    fetched: float = 0.0


async def ok(response_awaitable: Awaitable[httpx.Response], status: int = 200) -> Any:
    r = await response_awaitable
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


async def make_accounts(client: httpx.AsyncClient, names: list[str], concurrency: int) -> list[Account]:
    accounts = [Account(n) for n in names]
    done = 0
    started = time.monotonic()
    limiter = trio.CapacityLimiter(concurrency)

    async def one(acc: Account) -> None:
        nonlocal done
        async with limiter:
            body = {"username": acc.name, "password": PASSWORD}
            acc.user_id = (await ok(client.post("/api/v1/auth/register", json=body), 201))["user_id"]
            tokens = await ok(client.post("/api/v1/auth/login", json=body))
            acc.access, acc.refresh, acc.fetched = (
                tokens["access_token"],
                tokens["refresh_token"],
                time.time(),
            )
        done += 1
        if done % 100 == 0 or done == len(accounts):
            rate = done / (time.monotonic() - started)
            log(f"  {done}/{len(accounts)} users registered and logged in ({rate:.0f}/s)")

    async with trio.open_nursery() as nursery:
        for acc in accounts:
            nursery.start_soon(one, acc)
    return accounts


async def refresh_stale(client: httpx.AsyncClient, accounts: list[Account], max_age_s: float = 480) -> None:
    """Access tokens live 15 minutes: rotate those older than max_age_s (no Argon2 involved)."""
    limiter = trio.CapacityLimiter(16)

    async def one(acc: Account) -> None:
        async with limiter:
            tokens = await ok(client.post("/api/v1/auth/refresh", json={"refresh_token": acc.refresh}))
            acc.access, acc.refresh, acc.fetched = (
                tokens["access_token"],
                tokens["refresh_token"],
                time.time(),
            )

    async with trio.open_nursery() as nursery:
        for acc in accounts:
            if time.time() - acc.fetched > max_age_s:
                nursery.start_soon(one, acc)


async def make_guild(client: httpx.AsyncClient, owner: Account, members: list[Account], name: str) -> str:
    """A guild with ``members`` joined through one invite; returns its text channel's id."""
    h = {"Authorization": f"Bearer {owner.access}"}
    guild = await ok(client.post("/api/v1/guilds", json={"name": name}, headers=h), 201)
    detail = await ok(client.get(f"/api/v1/guilds/{guild['id']}", headers=h))
    channel = next(c for c in detail["channels"] if c["channel_type"] == "text")
    invite = await ok(
        client.post(
            f"/api/v1/guilds/{guild['id']}/invites", json={"max_uses": max(1, len(members))}, headers=h
        ),
        201,
    )
    limiter = trio.CapacityLimiter(16)

    async def join(acc: Account) -> None:
        async with limiter:
            await ok(
                client.post(
                    f"/api/v1/invites/{invite['code']}", headers={"Authorization": f"Bearer {acc.access}"}
                )
            )

    async with trio.open_nursery() as nursery:
        for acc in members:
            nursery.start_soon(join, acc)
    return str(channel["id"])


# -- ceiling process ------------------------------------------------------------------------------


@contextlib.contextmanager
def baseline_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "broadcast_baseline.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if line[:2] != ["baseline:", "ready"]:
            raise RuntimeError(f"baseline did not start: {line}")
        port = line[2].split("=", 1)[1]
        yield proc, f"ws://127.0.0.1:{port}/gateway"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def bare_sender(gateway: str) -> AsyncIterator[Sender]:
    async with open_websocket_url(gateway) as ws, trio.open_nursery() as nursery:
        await ws.get_message()  # hello
        sender = BareSender(ws)
        nursery.start_soon(sender.acks)
        yield sender
        nursery.cancel_scope.cancel()


# -- profile --------------------------------------------------------------------------------------


# Leaf frames where a sampled thread is waiting, not running: left out of the profile summary.
IDLE_LEAVES = (
    "trio/_core/_thread_cache.py:211)",  # idle trio worker thread waiting for a job
    "concurrent/futures/thread.py:81)",  # idle pool thread (the Argon2id pool)
    "trio/_core/_io_epoll.py:243)",  # the event loop waiting in epoll
    "(threading.py:",  # Condition.wait / Event.wait / join
    "(selectors.py:",
    "(queue.py:",
)


def frame_package(frame: str) -> str:
    """``f (trio/_core/_run.py:12)`` -> ``trio._core``; ``f (vox/storage/sqlite.py:3)`` -> ``vox.storage``."""
    path = frame.rpartition("(")[2].partition(":")[0]
    parts = path.split("/")
    if len(parts) >= 3:
        return f"{parts[0]}.{parts[1]}"
    return parts[0].removesuffix(".py") or "?"


def summarize_profile(path: str, top: int = 15) -> dict[str, Any]:
    """A py-spy raw (collapsed stacks) file: busy samples only, as % of them: the top frames by
    own time, own time by package, and the top frames by inclusive time."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [fr for fr in stack.split(";") if fr]
            if not frames:
                continue
            if any(mark in frames[-1] for mark in IDLE_LEAVES):
                idle += count
                continue
            busy += count
            own[frames[-1]] += count
            packages[frame_package(frames[-1])] += count
            for fr in {fr.rpartition(":")[0] + ")" for fr in frames}:  # per function, lines merged
                inclusive[fr] += count

    def pct(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / busy, 1)) for name, n in counter.most_common(k)]

    if not busy:
        return {"busy_samples": 0, "idle_samples": idle}
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "own": pct(own, top),
        "own_by_package": pct(packages, top),
        "inclusive": pct(inclusive, top * 4),
    }


# -- the runs -------------------------------------------------------------------------------------


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one mode: the median of every figure, the range of the key ones."""
    out: dict[str, Any] = {"mode": runs[0]["mode"], "repeats": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = round(statistics.median(r[key] for r in runs), 4)
    for key in ("deliveries_per_s", "sends_per_s", "p99_ms"):
        out[f"{key}_range"] = [min(r[key] for r in runs), max(r[key] for r in runs)]
    out["lost"] = sum(r["expected"] - r["deliveries"] for r in runs)
    out["runs"] = runs
    return out


async def fanout_runs(args: argparse.Namespace, pool: Pool) -> dict[str, Any]:
    """Both servers up side by side; for each N both client groups connected at once, and every
    run alternates Vox, ceiling, Vox, ceiling... (--repeat times), so both see the same machine."""
    sizes: list[int] = args.sizes
    results: dict[str, Any] = {}
    env = {"VOX_RATE_LIMITS": RATE_LIMITS}
    phase_ids = iter(range(1, 1_000_000))
    profile_size = sizes[0] if args.profile_size is None else args.profile_size
    targets = ("vox", "ceiling")
    with vox_server(env) as server, baseline_server() as (bare_proc, bare_gateway):
        log(f"vox pid {server.proc.pid} at {server.rest}; ceiling pid {bare_proc.pid}")
        pid_of = {"vox": server.proc.pid, "ceiling": bare_proc.pid}
        gateway_of = {"vox": server.gateway, "ceiling": bare_gateway}
        pids = list(pid_of.values())
        async with httpx.AsyncClient(
            base_url=server.rest, timeout=60, limits=httpx.Limits(max_connections=64)
        ) as client:
            t = time.monotonic()
            log(f"registering {max(sizes)} members + owner (Argon2id, {args.register_concurrency} at a time)")
            owner = (await make_accounts(client, ["fanowner"], 1))[0]
            members = await make_accounts(
                client, [f"fan{i:05d}" for i in range(max(sizes))], args.register_concurrency
            )
            channels: dict[int, str] = {}
            for n in sizes:
                channels[n] = await make_guild(client, owner, members[:n], f"fanout {n}")
                log(f"  guild for N={n}: {n} members joined")
            results["setup_s"] = round(time.monotonic() - t, 1)
            profiled = False

            async def one_run(target: str, n: int, rate: float | None) -> dict[str, Any]:
                nonlocal profiled
                await settle(pids, 60)
                profile = None
                if target == "vox" and rate is None and args.profile and n == profile_size and not profiled:
                    profile, profiled = profiler_starter(args, pid_of[target]), True
                if target == "vox":
                    await refresh_stale(client, [owner])
                    sender_cm: contextlib.AbstractAsyncContextManager[Sender] = contextlib.nullcontext(
                        VoxSender(client, owner.access, channels[n] if n else channels[sizes[0]])
                    )
                else:
                    sender_cm = bare_sender(bare_gateway)
                async with sender_cm as sender:
                    r = await run_phase(
                        pool, sender, pid_of[target], group=f"{target}{n}", phase=next(phase_ids),
                        clients=n, seconds=args.seconds, rate=rate, inflight=args.inflight,
                        window=args.window, on_start=profile,
                    )  # fmt: skip
                label = f"N={n}" if n else "no listeners"
                log(f"  {target} {label} {r['mode']}: {brief(r)}")
                if r["disconnects"]:
                    stats = await pool.stats()
                    log(f"  !! disconnects: codes {stats['codes']} {stats['errors']}")
                return r

            # The cost of a send with nobody listening: HTTP (or the publish frame), auth, storage,
            # publish. With it, each fast run's CPU per send splits into that plus N deliveries.
            alone: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for _ in range(args.repeat):
                for target in targets:
                    alone[target].append(await one_run(target, 0, None))
            results["send_only"] = {t: summarize_runs(alone[t]) for t in targets}

            for n in sizes:
                row: dict[str, Any] = {}
                for target in targets:
                    pid = pid_of[target]
                    await settle(pids, 60)
                    if target == "vox":
                        await refresh_stale(client, members[:n])
                        tokens = [m.access for m in members[:n]]
                    else:
                        tokens = ["-"] * n
                    t = time.monotonic()
                    before, cpu_before = await pool.stats(), cpu_seconds(pid)
                    await pool.connect(f"{target}{n}", gateway_of[target], tokens, args.connect_concurrency)
                    connect_s = time.monotonic() - t
                    settled = await settle(pid, 300)
                    after = await pool.stats()
                    events = Counter(after["other_events"])
                    events.subtract(before["other_events"])
                    row[f"{target}_connect"] = connect = {
                        "clients": n,
                        "seconds": round(connect_s, 1),
                        "server_cpu_s": round(cpu_seconds(pid) - cpu_before, 1),
                        "events_received": {k: v for k, v in events.items() if v},
                    }
                    log(
                        f"N={n} {target}: {n} clients identified in {connect_s:.1f} s (server CPU "
                        f"{connect['server_cpu_s']} s until idle, {settled:.1f} s after); RSS "
                        f"{rss_kib(pid) / 1024:.0f} MiB; events meanwhile: {connect['events_received']}"
                    )
                runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in targets}
                for _ in range(args.repeat):
                    for rate in [*args.rates, None]:
                        for target in targets:
                            r = await one_run(target, n, rate)
                            runs[target].setdefault(r["mode"], []).append(r)
                for target in targets:
                    row[target] = [summarize_runs(rs) for rs in runs[target].values()]
                vox_fast, bare_fast = runs["vox"].get("fast", []), runs["ceiling"].get("fast", [])
                row["fast_ratio_per_pair"] = [
                    round(v["deliveries_per_s"] / b["deliveries_per_s"], 2)
                    for v, b in zip(vox_fast, bare_fast, strict=True)
                    if b["deliveries_per_s"]
                ]
                for target in targets:
                    pid = pid_of[target]
                    t, cpu_before = time.monotonic(), cpu_seconds(pid)
                    closed = await pool.close(f"{target}{n}")
                    if closed["left_open"]:
                        log(f"  !! {closed['left_open']} clients still open after close")
                    await settle(pid, 300)
                    row[f"{target}_disconnect"] = gone = {
                        "seconds_until_idle": round(time.monotonic() - t, 1),
                        "server_cpu_s": round(cpu_seconds(pid) - cpu_before, 1),
                    }
                    log(f"  {target}: {n} clients closed; server CPU {gone['server_cpu_s']} s until idle")
                results[f"N={n}"] = row
    return results


PROFILERS: list[subprocess.Popen[bytes]] = []


def profiler_starter(args: argparse.Namespace, pid: int) -> Callable[[], Awaitable[None]]:
    """Start py-spy on the daemon for the length of one run (py-spy pauses it briefly per sample)."""

    async def start() -> None:
        cmd = [
            "py-spy", "record", "-p", str(pid), "-f", "raw", "-r", "100",
            "-d", str(int(args.seconds) + 2), "-o", args.profile,
        ]  # fmt: skip
        log(f"  profiling the daemon: {' '.join(cmd)}")
        PROFILERS.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await trio.sleep(1.0)  # py-spy attaches

    return start


def brief(r: dict[str, Any]) -> str:
    return (
        f"{r['sends']} sends ({r['sends_per_s']}/s), {r['deliveries']}/{r['expected']} deliveries "
        f"({r['deliveries_per_s']}/s), p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
        f"CPU {r['cpu_s_per_1000_deliveries']} s/1000 deliveries, {r['cpu_ms_per_send']} ms/send"
    )


async def rss_runs(args: argparse.Namespace, pool: Pool) -> dict[str, Any]:
    counts: list[int] = sorted(args.rss)
    results: dict[str, Any] = {}
    env = {"VOX_RATE_LIMITS": RATE_LIMITS}

    async def measure(pid: int, gateway: str, tokens: list[str]) -> dict[str, Any]:
        # Warm-up: one-time costs (imports, caches, pools) are not per-connection costs.
        group = f"rss-{pid}"
        await pool.connect(group, gateway, tokens[:20], args.connect_concurrency)
        await pool.close(group)
        await settle(pid, 30)
        await trio.sleep(1)
        rss0 = rss_kib(pid)
        out: dict[str, Any] = {"rss0_kib": rss0}
        have = 0
        for n in counts:
            t, cpu_before = time.monotonic(), cpu_seconds(pid)
            await pool.connect(
                group, gateway, [tokens[i % len(tokens)] for i in range(have, n)], args.connect_concurrency
            )
            connect_s = time.monotonic() - t
            cpu_ms = (cpu_seconds(pid) - cpu_before) / (n - have) * 1000
            have = n
            await settle(pid, 120)
            await trio.sleep(2)
            rss = rss_kib(pid)
            out[str(n)] = {
                "rss_kib": rss,
                "kib_per_connection": round((rss - rss0) / n, 1),
                "connect_s": round(connect_s, 1),
                "server_cpu_ms_per_connect": round(cpu_ms, 2),
            }
            log(
                f"  {n} idle connections ({connect_s:.1f} s to connect, {cpu_ms:.1f} ms server CPU each): "
                f"RSS {rss / 1024:.1f} MiB, {(rss - rss0) / n:.1f} KiB per connection"
            )
        stats = await pool.close(group)
        out["disconnects"] = stats["disconnects"]
        return out

    with vox_server(env) as server:
        async with httpx.AsyncClient(base_url=server.rest, timeout=60) as client:
            names = [f"rss{i:03d}" for i in range(args.rss_users + 1)]
            accounts = await make_accounts(client, names, args.register_concurrency)
            await make_guild(client, accounts[0], accounts[1:], "rss")
            tokens = [a.access for a in accounts[1:]]
            log(f"RSS, vox (pid {server.proc.pid}): {args.rss_users} users, many connections each")
            results["vox"] = await measure(server.proc.pid, server.gateway, tokens)
            results["vox"]["users"] = args.rss_users
    with baseline_server() as (proc, gateway):
        log(f"RSS, ceiling (pid {proc.pid})")
        results["ceiling"] = await measure(proc.pid, gateway, ["-"])
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "gateway_fanout",
        "sizes": args.sizes,
        "seconds": args.seconds,
        "rates": args.rates,
        "inflight": args.inflight,
        "window": args.window,
        "workers": args.workers,
        "cores": os.cpu_count(),
        "nofile": args.nofile,
    }
    try:
        async with worker_pool(args.workers) as pool:
            if args.sizes:
                out["fanout"] = await fanout_runs(args, pool)
                out["cost_model"] = cost_model(out["fanout"])
            if args.rss:
                out["rss"] = await rss_runs(args, pool)
    finally:
        for proc in PROFILERS:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if args.profile and os.path.exists(args.profile):
        out["profile"] = {"file": args.profile, **summarize_profile(args.profile)}
    return out


def cost_model(fanout: dict[str, Any]) -> dict[str, Any]:
    """Server CPU per send in each fast run (medians) split into the send itself (measured with
    nobody listening) and N deliveries: us per delivery = (CPU per send - CPU per send alone) / N."""
    model: dict[str, Any] = {}
    for target in ("vox", "ceiling"):
        alone = fanout.get("send_only", {}).get(target)
        if not alone or not alone["sends"]:
            continue
        fixed = alone["cpu_ms_per_send"]
        entry: dict[str, Any] = {"ms_per_send_no_listeners": fixed}
        for key, row in fanout.items():
            for r in row.get(target, []) if key.startswith("N=") else []:
                if r["mode"] == "fast" and r["sends"]:
                    per = (r["cpu_ms_per_send"] - fixed) / int(key[2:]) * 1000
                    entry[f"us_per_delivery_{key}"] = round(per, 1)
        model[target] = entry
    return model


# -- report ---------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> None:
    lines: list[str] = []
    fanout = result.get("fanout", {})
    head = (
        f"{'N':>5} {'server':<8} {'run':<11}{'sends/s':>9}{'deliv/s':>9}{'(min-max)':>14}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'(min-max)':>16}{'CPU s/1k dlv':>13}{'CPU ms/send':>12}{'lost':>6}"
    )

    def line(n: str, target: str, r: dict[str, Any]) -> str:
        d_lo, d_hi = r["deliveries_per_s_range"]
        p_lo, p_hi = r["p99_ms_range"]
        return (
            f"{n:>5} {target:<8} {r['mode']:<11}{r['sends_per_s']:>9g}{r['deliveries_per_s']:>9.0f}"
            f"{f'({d_lo:.0f}-{d_hi:.0f})':>14}{r['p50_ms']:>9g}{r['p99_ms']:>9g}"
            f"{f'({p_lo:g}-{p_hi:g})':>16}{r['cpu_s_per_1000_deliveries']:>13g}{r['cpu_ms_per_send']:>12g}"
            f"{r['lost']:>6}"
        )

    if fanout:
        repeats = next(iter(fanout.get("send_only", {}).values()), {}).get("repeats", 1)
        lines += [
            "",
            f"Gateway fan-out: medians of {repeats} alternating runs per row, same client harness",
            head,
        ]
        for target, r in fanout.get("send_only", {}).items():
            lines.append(line("0", target, r))
        for key, row in fanout.items():
            if not key.startswith("N="):
                continue
            n = key[2:]
            for target in ("vox", "ceiling"):
                lines += [line(n, target, r) for r in row.get(target, [])]
            vox_fast = next((r for r in row.get("vox", []) if r["mode"] == "fast"), None)
            bare_fast = next((r for r in row.get("ceiling", []) if r["mode"] == "fast"), None)
            if vox_fast and bare_fast and bare_fast["deliveries_per_s"]:
                ratio = vox_fast["deliveries_per_s"] / bare_fast["deliveries_per_s"]
                lines.append(
                    f"{n:>5} vox/ceiling deliveries/s, fast: {ratio:.2f} of the medians; per pair "
                    f"{row.get('fast_ratio_per_pair')} (target >= 0.5 at N=100)"
                )
    if result.get("cost_model"):
        lines.append("server CPU per send = with nobody listening + N x per delivery:")
    for target, m in result.get("cost_model", {}).items():
        per = ", ".join(
            f"{k.removeprefix('us_per_delivery_')}: {v} us" for k, v in m.items() if k.startswith("us_")
        )
        lines.append(f"  {target:<8} {m['ms_per_send_no_listeners']} ms per send alone; per delivery {per}")
    for key, row in fanout.items():
        for target in ("vox", "ceiling") if key.startswith("N=") else ():
            c, d = row.get(f"{target}_connect"), row.get(f"{target}_disconnect")
            if c and d:
                lines.append(
                    f"  {key} {target}: connect {c['seconds']} s, server CPU {c['server_cpu_s']} s "
                    f"(events to clients: {c['events_received']}); disconnect: {d['server_cpu_s']} s CPU"
                )
    rss = result.get("rss")
    if rss:
        lines += ["", "RSS per idle identified gateway connection"]
        for target in ("vox", "ceiling"):
            r = rss.get(target, {})
            cells = [f"{k}: {v['kib_per_connection']} KiB" for k, v in r.items() if isinstance(v, dict)]
            lines.append(f"  {target:<8} RSS0 {r.get('rss0_kib', 0) / 1024:.1f} MiB; " + "; ".join(cells))
    prof = result.get("profile")
    if prof:
        lines += [
            "",
            f"py-spy profile of the daemon ({prof['file']}), % of busy samples; own time by package:",
        ]
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in prof.get("own_by_package", [])]
        lines += ["top frames by own time:"]
        lines += [f"  {pct:5.1f}%  {frame}" for frame, pct in prof.get("own", [])]
    print("\n".join(lines), file=sys.stderr)


def finite(value: Any) -> Any:
    """NaN (no deliveries, no sends) as null, so the JSON line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        raise_nofile()
        trio.run(worker_main)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_ints, default=[100, 1000], help="clients per fan-out run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--rates", type=parse_floats, default=[10.0, 50.0], help="paced messages/s")
    parser.add_argument("--rss", type=parse_ints, default=[1000, 5000], help="idle connection counts")
    parser.add_argument("--rss-users", type=int, default=10, help="users behind the idle connections")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per mode (medians)")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--inflight", type=int, default=4, help="concurrent sends in the fast run")
    parser.add_argument("--window", type=int, default=128, help="max messages ahead of the slowest client")
    parser.add_argument("--register-concurrency", type=int, default=8)
    parser.add_argument("--connect-concurrency", type=int, default=32, help="per client process")
    parser.add_argument("--profile", default="", help="py-spy raw profile of the daemon's first fast run")
    parser.add_argument(
        "--profile-size", type=int, default=None, help="N to profile (default: the first; 0: no listeners)"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.seconds, args.rates, args.rss, args.rss_users = [20], 2.0, [10.0], [200], 3
        args.repeat = 1
    args.nofile = raise_nofile()
    result = trio.run(run, args)
    print(json.dumps(finite(result)))
    report(result)


if __name__ == "__main__":
    main()
