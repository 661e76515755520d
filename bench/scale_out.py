"""Scale-out fan-out: one channel of N members whose gateway clients are spread over 1, 2 and 3
`vox serve` nodes sharing one PostgreSQL database and one Redis.

    python bench/scale_out.py [--clients 1000] [--nodes 1,2,3] [--seconds 10] [--rates 20]
                              [--repeat 1] [--workers 2] [--quick]

Three real `vox serve` subprocesses (PostgreSQL + Redis; a fresh schema and a fresh Redis key
prefix, both removed at the end) run for the whole benchmark. Setup over REST on node 1: N members
register and log in and join one guild. Then for each k in --nodes: N gateway clients identify,
client i on node i mod k (so every node of the k holds about N/k of them), in the client worker
processes of bench/gateway_fanout.py; once every daemon is idle again, the owner posts through
node 1 (paced at each of --rates messages/s, then as fast as --inflight concurrent requests go,
for --seconds each), every message reaching all N clients through Redis. Latency is from just
before the POST to receipt (CLOCK_MONOTONIC, system-wide); CPU is summed over the three daemons.

The rows show what one machine can show: every node, PostgreSQL, Redis and the client processes
share its cores, so more nodes add processes competing for the same cores rather than capacity.

Needs PostgreSQL and Redis (VOX_BENCH_POSTGRES_URL, default postgresql://127.0.0.1:5432/test, and
VOX_BENCH_REDIS_URL, default redis://127.0.0.1:6379/0); binds 127.0.0.1 only; every process
started here is stopped (SIGTERM, then SIGKILL) on the way out, errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import LOOPBACK_LIMITS, cpu_seconds, ready_urls, spawn_vox
from bench.gateway_fanout import (
    RATE_LIMITS,
    VoxSender,
    finite,
    log,
    make_accounts,
    make_guild,
    parse_floats,
    parse_ints,
    raise_nofile,
    refresh_stale,
    run_phase,
    settle,
    summarize_runs,
    worker_pool,
)

POSTGRES_URL = os.environ.get("VOX_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NODES = 3


@dataclass
class Node:
    rest: str
    gateway: str
    proc: subprocess.Popen[str]


@contextlib.contextmanager
def deployment(count: int) -> Iterator[list[Node]]:
    """``count`` nodes on a fresh PostgreSQL schema and Redis prefix, all removed afterwards."""
    import psycopg
    import redis

    schema = f"vox_bench_{uuid.uuid4().hex[:12]}"
    prefix = f"vox:bench:{uuid.uuid4().hex}:"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    nodes: list[Node] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vox-bench-") as data:
            env = {
                **LOOPBACK_LIMITS,
                **os.environ,
                "VOX_DATABASE_URL": f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}",
                "VOX_REDIS_URL": REDIS_URL,
                "VOX_REDIS_PREFIX": prefix,
                "VOX_DATA_DIR": data,  # one deployment shares its key files
                "VOX_LOG_LEVEL": "warning",
                "VOX_RATE_LIMITS": RATE_LIMITS,
            }
            for _ in range(count):  # one after another: the first creates the keys and the schema
                proc = spawn_vox(env)
                nodes.append(Node("", "", proc))
                parts = ready_urls(proc)
                nodes[-1].rest, nodes[-1].gateway = parts["rest"], parts["gateway"]
            yield nodes
    finally:
        for node in nodes:
            node.proc.terminate()
        for node in nodes:
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        finally:
            client.close()


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "scale_out",
        "clients": args.clients,
        "nodes": args.nodes,
        "seconds": args.seconds,
        "rates": args.rates,
        "repeat": args.repeat,
        "cores": os.cpu_count(),
        "rows": {},
    }
    phase_ids = iter(range(1, 1_000_000))
    with deployment(NODES) as nodes:
        pids = [n.proc.pid for n in nodes]
        log(f"nodes: {', '.join(f'{n.gateway} (pid {n.proc.pid})' for n in nodes)}")
        async with (
            httpx.AsyncClient(
                base_url=nodes[0].rest, timeout=60, limits=httpx.Limits(max_connections=64)
            ) as client,
            worker_pool(args.workers) as pool,
        ):
            t = time.monotonic()
            owner = (await make_accounts(client, ["scaleowner"], 1))[0]
            members = await make_accounts(
                client, [f"scale{i:05d}" for i in range(args.clients)], args.register_concurrency
            )
            channel = await make_guild(client, owner, members, "scale out")
            out["setup_s"] = round(time.monotonic() - t, 1)
            for k in args.nodes:
                group = f"k{k}"
                await refresh_stale(client, [owner, *members])
                await settle(pids, 120)
                t, cpu_before = time.monotonic(), cpu_of(pids)
                for i in range(k):
                    tokens = [m.access for m in members[i::k]]
                    await pool.connect(group, nodes[i].gateway, tokens, args.connect_concurrency)
                connect_s = time.monotonic() - t
                await settle(pids, 600)
                row: dict[str, Any] = {
                    "connect_s": round(connect_s, 1),
                    "connect_cpu_s": round(cpu_of(pids) - cpu_before, 1),
                }
                log(f"k={k}: {args.clients} clients over {k} node(s) in {connect_s:.1f} s")
                runs: dict[str, list[dict[str, Any]]] = {}
                for _ in range(args.repeat):
                    for rate in [*args.rates, None]:
                        await settle(pids, 120)
                        await refresh_stale(client, [owner])
                        cpu_before = cpu_of(pids)
                        r = await run_phase(
                            pool, VoxSender(client, owner.access, channel), pids[0], group=group,
                            phase=next(phase_ids), clients=args.clients, seconds=args.seconds,
                            rate=rate, inflight=args.inflight, window=args.window,
                        )  # fmt: skip
                        cpu = cpu_of(pids) - cpu_before
                        r["nodes_cpu_s"] = round(cpu, 2)
                        r["nodes_cpu_s_per_1000_deliveries"] = (
                            round(cpu / r["deliveries"] * 1000, 4) if r["deliveries"] else float("nan")
                        )
                        log(
                            f"  k={k} {r['mode']}: {r['sends']} sends ({r['sends_per_s']}/s), "
                            f"{r['deliveries']}/{r['expected']} deliveries ({r['deliveries_per_s']}/s), "
                            f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, CPU of all nodes {cpu:.1f} s"
                        )
                        runs.setdefault(r["mode"], []).append(r)
                row["runs"] = [summarize_runs(rs) for rs in runs.values()]
                closed = await pool.close(group)
                if closed["left_open"]:
                    log(f"  !! {closed['left_open']} clients still open after close")
                out["rows"][f"k={k}"] = row
    return out


def report(result: dict[str, Any]) -> None:
    log("")
    log(
        "| nodes | mode | sends/s | deliveries/s | p50 ms | p99 ms "
        "| CPU s / 1000 deliveries (all nodes) | lost |"
    )
    log("|---|---|---|---|---|---|---|---|")
    for label, row in result["rows"].items():
        for r in row["runs"]:
            log(
                f"| {label[2:]} | {r['mode']} | {r['sends_per_s']} | {r['deliveries_per_s']} | {r['p50_ms']} "
                f"| {r['p99_ms']} | {r['nodes_cpu_s_per_1000_deliveries']} | {r['lost']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000, help="members of the channel, one client each")
    parser.add_argument(
        "--nodes", type=parse_ints, default=[1, 2, 3], help="node counts to spread clients over"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--rates", type=parse_floats, default=[20.0], help="paced messages/s")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode (medians)")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--inflight", type=int, default=4, help="concurrent sends in the fast run")
    parser.add_argument("--window", type=int, default=128, help="max messages ahead of the slowest client")
    parser.add_argument("--register-concurrency", type=int, default=8)
    parser.add_argument("--connect-concurrency", type=int, default=32, help="per client process")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if max(args.nodes) > NODES or min(args.nodes) < 1:
        parser.error(f"--nodes must be between 1 and {NODES}")
    if args.quick:
        args.clients, args.seconds, args.rates = 30, 2.0, [10.0]
    raise_nofile()
    result = trio.run(run, args)
    print(json.dumps(finite(result)))
    report(result)


if __name__ == "__main__":
    main()
