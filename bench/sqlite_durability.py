"""The price of ``sqlite_synchronous = full`` beside ``normal``, measured side by side in one run.

    python3 bench/sqlite_durability.py [--messages 2000] [--inflight 1,8] [--commits 2000] [--rounds 2]

- REST: a real ``vox serve`` (SQLite, in-process broker) per level, ``VOX_SQLITE_SYNCHRONOUS`` set;
  one user posts --messages messages (``POST /api/v1/channels/{id}/messages``) with 1 and with 8
  requests in flight: messages/s and the p50/p99 of one POST.
- Engine: the storage engine alone, one small write transaction after another (--commits): what
  a COMMIT costs at each level without HTTP, auth or JSON around it.

Levels alternate within every round (normal, full, normal, full, ...) so both see the same machine;
the data directory is a fresh temporary directory on the file system of ``$TMPDIR``, whose fsync
cost is what FULL adds (a tmpfs would show no difference).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import BENCH_PASSWORD, summary_ms, vox_server
from vox.storage.sqlite import SYNCHRONOUS_LEVELS, SQLiteConn, SQLiteEngine

LEVELS = tuple(SYNCHRONOUS_LEVELS)  # normal, full
RATE_LIMITS = "auth=100000000/1,api=100000000/1"


async def _rest_run(rest: str, messages: int, inflight: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    async with httpx.AsyncClient(base_url=rest, timeout=60, limits=limits) as client:
        name = f"bench{time.monotonic_ns() % 10**9}"
        registered = await client.post(
            "/api/v1/auth/register", json={"username": name, "password": BENCH_PASSWORD}
        )
        registered.raise_for_status()
        tokens = await client.post("/api/v1/auth/login", json={"username": name, "password": BENCH_PASSWORD})
        headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        guild = await client.post("/api/v1/guilds", json={"name": "bench"}, headers=headers)
        channels = await client.get(f"/api/v1/guilds/{guild.json()['id']}/channels", headers=headers)
        channel = next(c["id"] for c in channels.json() if c["channel_type"] == "text")
        url = f"/api/v1/channels/{channel}/messages"
        latencies: list[float] = []
        indexes = iter(range(messages))

        async def worker() -> None:
            for i in indexes:
                started = time.perf_counter()
                response = await client.post(url, json={"content": f"message {i}"}, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 201:
                    raise RuntimeError(f"POST answered {response.status_code}: {response.text}")

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - began
    return {"per_s": round(messages / elapsed, 1), **summary_ms(latencies)}


def _insert(conn: SQLiteConn, body: str) -> int:
    return conn.execute("INSERT INTO t (body) VALUES (:b)", {"b": body})


async def _engine_run(level: str, commits: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vox-durability-") as data:
        engine = await SQLiteEngine.open(Path(data) / "bench.db", synchronous=level)
        try:
            await engine.write(lambda c: c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)"))
            latencies: list[float] = []
            began = time.perf_counter()
            for i in range(commits):
                started = time.perf_counter()
                await engine.write(functools.partial(_insert, body=f"row {i}"))
                latencies.append(time.perf_counter() - started)
            elapsed = time.perf_counter() - began
        finally:
            await engine.aclose()
    return {"per_s": round(commits / elapsed, 1), **summary_ms(latencies)}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the rounds for each number (the rounds are few; the median resists one noisy run)."""
    keys = runs[0].keys()
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in keys}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    inflights = [int(x) for x in args.inflight.split(",")]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {level: {} for level in LEVELS}
    for _ in range(args.rounds):
        for level in LEVELS:
            env = {"VOX_SQLITE_SYNCHRONOUS": level, "VOX_RATE_LIMITS": RATE_LIMITS}
            with vox_server(env) as server:
                for inflight in inflights:
                    run = await _rest_run(server.rest, args.messages, inflight)
                    results[level].setdefault(f"rest_inflight_{inflight}", []).append(run)
            results[level].setdefault("engine_commit", []).append(await _engine_run(level, args.commits))
    return {
        level: {name: _merge(runs) for name, runs in by_name.items()} for level, by_name in results.items()
    }


def _print(table: dict[str, Any]) -> None:
    names = list(table[LEVELS[0]])
    print(f"{'':24}" + "".join(f"{level:>34}" for level in LEVELS))
    print(f"{'':24}" + f"{'per s':>12}{'p50 ms':>11}{'p99 ms':>11}" * len(LEVELS))
    for name in names:
        cells = "".join(
            f"{table[level][name]['per_s']:>12}{table[level][name]['p50_ms']:>11}{table[level][name]['p99_ms']:>11}"
            for level in LEVELS
        )
        print(f"{name:24}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--inflight", default="1,8")
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args()
    table = trio.run(main_async, args)
    _print(table)
    if args.json:
        print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
