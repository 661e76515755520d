"""Federated DMs end to end between two daemons, beside the same DMs sent locally.

    python -m bench.federation_outbox [--messages 2000] [--inflight 16] [--batch-max 100,1]

- Two real ``vox serve`` subprocesses on SQLite, a.test and b.test, each listing the other as a
  static peer (keys made in their data directories before they start; REST ports chosen up
  front). Rate limits are raised so that only the servers' own work limits the rates.
- Federated: alice on a.test sends ``POST /channels/{dm}/messages`` in her DM with bob@b.test,
  --inflight requests at a time; bob listens on b.test's gateway. Latency runs from alice's 201
  to bob's ``message_new`` (0 when the event came before the 201; also printed from the moment
  the POST was sent); delivered/s is messages over the time from the first POST to the
  last ``message_new``; accepted/s is messages over the time the POSTs took (enqueueing).
- Local baseline, same run, same b.test: carol on b.test sends the same number of messages in
  her DM with bob (they share a guild); the same listener takes the time.
- The pair is started once per --batch-max value (``federation_batch_max`` on a.test; 1 is one
  row per inbox request, the delivery before batching), so the modes are compared in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (
    BENCH_PASSWORD,
    LOOPBACK_LIMITS,
    cpu_seconds,
    ready_urls,
    spawn_vox,
    summary_ms,
    terminate,
)
from bench.gateway_fanout import RATE_LIMITS
from vox import datadir
from vox.protocol.federation import public_key_b64

DELIVERY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    domain: str
    rest: str
    gateway: str
    proc: subprocess.Popen[str]


@contextmanager
def federated_pair(batch_max: int) -> Iterator[tuple[Daemon, Daemon]]:
    """a.test and b.test as subprocesses, each a static peer of the other."""
    with ExitStack() as stack:
        dirs = {
            d: Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vox-fed-"))) for d in ("a", "b")
        }
        keys = {d: public_key_b64(datadir.prepare(path).federation_key) for d, path in dirs.items()}
        ports = {d: free_port() for d in dirs}
        daemons: dict[str, Daemon] = {}
        for me, other in (("a", "b"), ("b", "a")):
            env = {
                **LOOPBACK_LIMITS,
                **os.environ,
                "VOX_LOG_LEVEL": "warning",
                "VOX_RATE_LIMITS": RATE_LIMITS,
                "VOX_SERVER_NAME": f"{me}.test",
                "VOX_FEDERATION_PEERS": f"{other}.test=http://127.0.0.1:{ports[other]}={keys[other]}",
                "VOX_FEDERATION_RATE": "100000000",
                "VOX_FEDERATION_RETRY_MAX_S": "1",
                "VOX_FEDERATION_BATCH_MAX": str(batch_max),
            }
            proc = spawn_vox(env, "--data-dir", str(dirs[me]), "--rest-port", str(ports[me]))
            stack.callback(terminate, proc)
            urls = ready_urls(proc)
            daemons[me] = Daemon(f"{me}.test", urls["rest"], urls["gateway"], proc)
        yield daemons["a"], daemons["b"]


async def user(http: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    r = await http.post("/api/v1/auth/register", json={"username": name, "password": BENCH_PASSWORD})
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auth/login", json={"username": name, "password": BENCH_PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["access_token"], {"Authorization": f"Bearer {r.json()['access_token']}"}


async def ok(http: httpx.AsyncClient, method: str, path: str, h: dict[str, str], body: Any = None) -> Any:
    r = await http.request(method, "/api/v1" + path, headers=h, json=body)
    assert r.status_code in (200, 201), (path, r.status_code, r.text)
    return r.json()


@dataclass
class Listener:
    """Bob's gateway: the arrival time of every ``message_new``, by content."""

    arrived: dict[str, float] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    async def run(self, url: str, token: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with open_websocket_url(url, subprotocols=["vox.v1"]) as ws:
            hello = json.loads(await ws.get_message())
            interval_s = hello["d"]["heartbeat_interval_ms"] / 1000
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, ws, interval_s)
                task_status.started()
                while True:
                    raw = await ws.get_message()
                    now = time.perf_counter()
                    frame = json.loads(raw)
                    if frame.get("type") == "message_new":
                        self.arrived[frame["d"]["content"]] = now
                        self.changed.set()

    @staticmethod
    async def _heartbeat(ws: WebSocketConnection, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s / 2)
            await ws.send_message(json.dumps({"type": "heartbeat", "d": None}))

    async def wait_all(self, keys: list[str]) -> None:
        with trio.fail_after(DELIVERY_TIMEOUT_S):
            while not all(k in self.arrived for k in keys):
                self.changed = trio.Event()
                await self.changed.wait()


async def send_all(
    http: httpx.AsyncClient, h: dict[str, str], channel: str, keys: list[str], inflight: int
) -> tuple[dict[str, float], dict[str, float]]:
    """POST every message, ``inflight`` at a time; the time each was sent and its 201 came."""
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            sent[key] = time.perf_counter()
            r = await http.post(f"/api/v1/channels/{channel}/messages", headers=h, json={"content": key})
            assert r.status_code == 201, r.text
            done[key] = time.perf_counter()

    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(worker)
    return sent, done


async def measure(
    label: str,
    http: httpx.AsyncClient,
    h: dict[str, str],
    channel: str,
    listener: Listener,
    count: int,
    inflight: int,
    procs: list[subprocess.Popen[str]],
) -> dict[str, Any]:
    keys = [f"{label} {i} {time.monotonic_ns()}" for i in range(count)]
    cpu_before = [cpu_seconds(p.pid) for p in procs]
    start = time.perf_counter()
    sent, posted = await send_all(http, h, channel, keys, inflight)
    accepted_s = time.perf_counter() - start
    await listener.wait_all(keys)
    elapsed = max(listener.arrived[k] for k in keys) - start
    cpu = [round(cpu_seconds(p.pid) - before, 2) for p, before in zip(procs, cpu_before, strict=True)]
    return {
        "mode": label,
        "messages": count,
        "accepted_per_s": round(count / accepted_s, 1),
        "delivered_per_s": round(count / elapsed, 1),
        # From the 201 (0 when the event came first), and from the moment the POST was sent.
        "latency_from_201": summary_ms([max(listener.arrived[k] - posted[k], 0.0) for k in keys]),
        "latency_from_send": summary_ms([listener.arrived[k] - sent[k] for k in keys]),
        "cpu_s": cpu,
    }


async def run_pair(batch_max: int, count: int, inflight: int) -> list[dict[str, Any]]:
    with federated_pair(batch_max) as (a, b):
        async with (
            httpx.AsyncClient(base_url=a.rest, timeout=60) as ca,
            httpx.AsyncClient(base_url=b.rest, timeout=60) as cb,
        ):
            _, alice = await user(ca, "alice")
            bob_token, bob = await user(cb, "bob")
            _, carol = await user(cb, "carol")
            federated = await ok(ca, "POST", "/dms", alice, {"recipients": ["bob@b.test"]})
            guild = await ok(cb, "POST", "/guilds", carol, {"name": "bench"})
            invite = await ok(cb, "POST", f"/guilds/{guild['id']}/invites", carol, {})
            await ok(cb, "POST", f"/invites/{invite['code']}", bob)
            local = await ok(cb, "POST", "/dms", carol, {"recipients": ["bob@b.test"]})
            listener = Listener()
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.run, b.gateway, bob_token)
                procs = [a.proc, b.proc]
                # Warm both paths (the DM on b.test is created by the first federated message).
                await measure("warmup-fed", ca, alice, federated["id"], listener, 5, 1, procs)
                await measure("warmup-local", cb, carol, local["id"], listener, 5, 1, procs)
                results = [
                    await measure(
                        f"federated batch_max={batch_max}",
                        ca,
                        alice,
                        federated["id"],
                        listener,
                        count,
                        inflight,
                        procs,
                    ),
                    await measure(
                        f"local on b.test (pair with batch_max={batch_max})",
                        cb,
                        carol,
                        local["id"],
                        listener,
                        count,
                        inflight,
                        procs,
                    ),
                ]
                nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--batch-max", default="100,1", help="federation_batch_max values, one pair each")
    args = parser.parse_args()
    print(f"# {args.messages} messages, {args.inflight} in flight; cpu_s = [a.test, b.test] user+system")
    for value in args.batch_max.split(","):
        for result in trio.run(run_pair, int(value), args.messages, args.inflight):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
