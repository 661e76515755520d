"""Logins per second, and the gateway heartbeat round trip while logins run.

Argon2id hashing must stay off the event loop: the heartbeat p99 under login load should be
within 2x of the idle p99 measured in the same run. The raw Argon2id rate of this machine (same
parameters, in this process, one thread per core) is printed as the ceiling.

    python bench/auth.py [--seconds 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import trio
from argon2 import PasswordHasher
from trio_websocket import open_websocket_url

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import cpu_seconds, summary_ms, vox_server

PASSWORD = "bench password 123"


def raw_argon2_rate(seconds: float) -> float:
    hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
    stored = hasher.hash(PASSWORD)
    workers = os.cpu_count() or 1
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        n = 0
        while time.perf_counter() < deadline:
            hasher.verify(stored, PASSWORD)
            n += 1
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(lambda _: loop(), range(workers)))
    return total / (time.perf_counter() - start)


async def heartbeats(gateway: str, token: str, seconds: float, interval: float) -> list[float]:
    rtts: list[float] = []
    async with open_websocket_url(gateway) as ws:
        await ws.get_message()
        await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
        await ws.get_message()
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            start = time.perf_counter()
            await ws.send_message('{"type":"heartbeat"}')
            while json.loads(await ws.get_message())["type"] != "heartbeat_ack":
                pass
            rtts.append(time.perf_counter() - start)
            await trio.sleep(interval)
    return rtts


def probe_in_subprocess(gateway: str, token: str, seconds: float, interval: float) -> list[float]:
    """Measure heartbeats from a separate process, so the load generator's own event loop and
    the GIL it holds do not inflate the figures."""
    import subprocess

    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--probe", gateway, token, str(seconds), str(interval)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rtts: list[float] = json.loads(out)
    return rtts


async def run(args: argparse.Namespace) -> dict[str, object]:
    env = {"VOX_RATE_LIMITS": "auth=100000000/1,login_failures=100000000/1,api=100000000/1"}
    with vox_server(env) as server:
        async with httpx.AsyncClient(base_url=server.rest, timeout=30) as client:
            users = [f"bench{i}" for i in range(args.concurrency)]
            for name in users:
                r = await client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
                r.raise_for_status()
            token = (
                await client.post("/api/v1/auth/login", json={"username": users[0], "password": PASSWORD})
            ).json()["access_token"]

            idle = await trio.to_thread.run_sync(
                probe_in_subprocess, server.gateway, token, args.seconds / 2, args.interval
            )

            logins = 0
            cpu_before = cpu_seconds(server.proc.pid)
            started = time.perf_counter()
            loaded: list[float] = []

            async def login_loop(name: str, stop_at: float) -> None:
                nonlocal logins
                async with httpx.AsyncClient(base_url=server.rest, timeout=30) as c:
                    while trio.current_time() < stop_at:
                        r = await c.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
                        r.raise_for_status()
                        logins += 1

            async with trio.open_nursery() as nursery:
                stop_at = trio.current_time() + args.seconds
                for name in users:
                    nursery.start_soon(login_loop, name, stop_at)
                loaded = await trio.to_thread.run_sync(
                    probe_in_subprocess, server.gateway, token, args.seconds - 1.0, args.interval
                )
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(server.proc.pid) - cpu_before

            # Same request rate, no hashing: token refreshes (JWT + database, like a login minus
            # Argon2id). If heartbeats suffer as much here, hashing is not what delays the loop.
            rate = logins / elapsed
            refreshes = 0

            async def refresh_loop(name: str, stop_at: float) -> None:
                nonlocal refreshes
                async with httpx.AsyncClient(base_url=server.rest, timeout=30) as c:
                    r = await c.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
                    refresh_token = r.json()["refresh_token"]
                    while trio.current_time() < stop_at:
                        tick = trio.current_time()
                        r = await c.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
                        r.raise_for_status()
                        refresh_token = r.json()["refresh_token"]
                        refreshes += 1
                        await trio.sleep_until(tick + len(users) / rate)

            async with trio.open_nursery() as nursery:
                stop_at = trio.current_time() + args.seconds
                for name in users:
                    nursery.start_soon(refresh_loop, name, stop_at)
                under_refresh = await trio.to_thread.run_sync(
                    probe_in_subprocess, server.gateway, token, args.seconds - 1.0, args.interval
                )

    idle_s, loaded_s, refresh_s = summary_ms(idle), summary_ms(loaded), summary_ms(under_refresh)
    return {
        "bench": "auth",
        "logins_per_s": round(logins / elapsed, 1),
        "server_cpu_ms_per_login": round(cpu / max(1, logins) * 1000, 2),
        "argon2_ceiling_per_s": round(raw_argon2_rate(3.0), 1),
        "heartbeat_idle": idle_s,
        "heartbeat_under_logins": loaded_s,
        "heartbeat_under_refreshes_same_rate": refresh_s,
        "p99_ratio": round(loaded_s["p99_ms"] / idle_s["p99_ms"], 2),
        "p99_ratio_refreshes": round(refresh_s["p99_ms"] / idle_s["p99_ms"], 2),
        "concurrency": args.concurrency,
        "cores": os.cpu_count(),
    }


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        gateway, token, seconds, interval = sys.argv[2:6]
        print(json.dumps(trio.run(heartbeats, gateway, token, float(seconds), float(interval))))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between heartbeats")
    args = parser.parse_args()
    result = trio.run(run, args)
    print(json.dumps(result))
    idle, loaded = result["heartbeat_idle"], result["heartbeat_under_logins"]
    refresh = result["heartbeat_under_refreshes_same_rate"]
    assert isinstance(idle, dict) and isinstance(loaded, dict) and isinstance(refresh, dict)
    print(
        f"\n{'measure':<36}{'value':>12}\n"
        f"{'logins/s (Vox, over HTTP)':<36}{result['logins_per_s']:>12}\n"
        f"{'Argon2id verifies/s (raw ceiling)':<36}{result['argon2_ceiling_per_s']:>12}\n"
        f"{'server CPU ms per login':<36}{result['server_cpu_ms_per_login']:>12}\n"
        f"{'heartbeat p50 idle / loaded (ms)':<36}{idle['p50_ms']:>6} / {loaded['p50_ms']}\n"
        f"{'heartbeat p99 idle / loaded (ms)':<36}{idle['p99_ms']:>6} / {loaded['p99_ms']}\n"
        f"{'heartbeat p99 under refreshes (ms)':<36}{refresh['p99_ms']:>12}\n"
        f"{'p99 loaded / idle (target <= 2)':<36}{result['p99_ratio']:>12}\n"
        f"{'p99 refreshes / idle (no hashing)':<36}{result['p99_ratio_refreshes']:>12}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
