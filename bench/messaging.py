"""Message send -> receive: Vox beside Matrix Synapse, same rooms, same rates, same client harness.

    python -m bench synapse [--sizes 10,100] [--rates 1,10,50] [--seconds 4] [--fast]

- Vox: a real `vox serve` (SQLite, in-process broker). The sender posts
  ``POST /api/v1/channels/{id}/messages``; N listeners are gateway clients (hello, identify,
  heartbeats) that take the time on every ``message_new``.
- Synapse (``bench/synapse_server.py``: its own venv, SQLite, rate limits raised, presence off):
  the sender sends ``PUT /_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}``; N listeners
  long-poll ``/sync`` (timeout 30 s, a filter that keeps only the room's ``m.room.message``
  timeline) and take the time on every event in each response.
- Both servers run side by side for the whole run; for each room size N both listener groups are
  connected, then every rate runs once against Vox and once against Synapse, alternating, so both
  see the same machine. The listeners live in --workers client processes (the worker of
  bench/gateway_fanout.py, which this module teaches the Matrix long-poll) and the sender uses
  the same pacing as bench/gateway_fanout.py: open loop at the rate, but never more than --window
  messages ahead of the slowest listener, so a server past its capacity shows a lower achieved rate
  instead of unbounded queues. The content carries ``time.monotonic_ns()`` taken just before the
  request (CLOCK_MONOTONIC is system-wide on Linux, so the listeners' processes compare it).
- --fast adds, per N, a run with --inflight requests back to back (the most deliveries/s each
  server gives this harness, with its p99).
- Server CPU is user+system from /proc over the run: the Vox daemon; Synapse's one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

import httpx
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import gateway_fanout as gf
from bench.common import vox_server
from bench.synapse_server import register, synapse_server, venv_python

PASSWORD = gf.PASSWORD
# Only the room timeline's messages: no presence, receipts, account data or member state.
SYNC_FILTER = json.dumps(
    {
        "room": {
            "timeline": {"limit": 400, "types": ["m.room.message"]},
            "state": {"types": []},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
        "presence": {"types": []},
        "account_data": {"types": []},
    },
    separators=(",", ":"),
)
SYNC_TIMEOUT_MS = 30_000


def log(text: str) -> None:
    print(f"[synapse {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- listener worker: the gateway_fanout worker, plus a Matrix /sync client -------------------------


async def matrix_client(state: gf.WorkerState, group: str, url: str, token: str, started: gf.Started) -> None:
    """One Matrix listener: an initial sync for the position, then long-polls until told to close.
    ``url`` is ``matrix+http://host:port``."""
    idx = -1
    base = url.removeprefix("matrix+")
    try:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=SYNC_TIMEOUT_MS / 1000 + 30
        ) as http:
            with trio.fail_after(gf.CONNECT_TIMEOUT_S):
                r = await http.get("/_matrix/client/v3/sync", params={"filter": SYNC_FILTER, "timeout": 0})
                r.raise_for_status()
                since = r.json()["next_batch"]
            idx = len(state.counts)
            state.counts.append(0)
            state.alive.append(True)
            state.groups.append(group)
            state.live += 1
            closing = state.closing_event(group)
            started.set(True)
            async with trio.open_nursery() as nursery:

                async def until_closing() -> None:
                    await closing.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_closing)
                while True:
                    r = await http.get(
                        "/_matrix/client/v3/sync",
                        params={"filter": SYNC_FILTER, "timeout": SYNC_TIMEOUT_MS, "since": since},
                    )
                    now = time.monotonic_ns()
                    if r.status_code != 200:
                        state.error(f"sync {r.status_code} {r.text[:200]}")
                        await trio.sleep(0.5)
                        continue
                    body = r.json()
                    since = body["next_batch"]
                    for room in body.get("rooms", {}).get("join", {}).values():
                        for event in room.get("timeline", {}).get("events", []):
                            text = event.get("content", {}).get("body", "")
                            state.text_events += 1
                            state.record(text, now, idx)
    except (httpx.HTTPError, trio.TooSlowError, ValueError, KeyError) as exc:
        state.error(f"{type(exc).__name__}: {exc}")
        if idx >= 0:
            state.disconnects += 1
    finally:
        started.set(False)
        if idx >= 0:
            state.alive[idx] = False
            state.live -= 1


def worker() -> None:
    gateway_client = gf._client

    async def client(state: gf.WorkerState, group: str, url: str, token: str, started: gf.Started) -> None:
        if url.startswith("matrix+"):
            await matrix_client(state, group, url, token, started)
        else:
            await gateway_client(state, group, url, token, started)

    # The worker loop looks the client up in its module at each connect.
    gf._client = client
    gf.raise_nofile()
    trio.run(gf.worker_main)


def listener_pool(count: int) -> contextlib.AbstractAsyncContextManager[gf.Pool]:
    """gateway_fanout's client processes, running this module as the worker (Matrix listeners)."""
    return gf.worker_pool(count, script=__file__)


# -- senders and setup ------------------------------------------------------------------------------


class MatrixSender(gf.Sender):
    def __init__(self, client: httpx.AsyncClient, token: str, room_id: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.prefix = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/"
        self.txn = f"{os.getpid()}-{time.monotonic_ns()}-"
        self.counter = 0
        self.errors = 0
        self.first_error = ""

    async def send(self, content: str) -> bool:
        self.counter += 1
        try:
            r = await self.client.put(
                f"{self.prefix}{self.txn}{self.counter}",
                json={"msgtype": "m.text", "body": content},
                headers=self.headers,
            )
        except httpx.HTTPError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return False
        if r.status_code != 200:
            self._fail(f"{r.status_code} {r.text[:200]}")
            return False
        return True

    def _fail(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text


async def matrix_accounts(client: httpx.AsyncClient, syn: Any, names: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = [{} for _ in names]
    limiter = trio.CapacityLimiter(8)

    async def one(i: int) -> None:
        async with limiter:
            out[i] = await register(client, syn, names[i], PASSWORD)

    async with trio.open_nursery() as nursery:
        for i in range(len(names)):
            nursery.start_soon(one, i)
    return out


async def matrix_room(client: httpx.AsyncClient, owner: dict[str, str], members: list[dict[str, str]]) -> str:
    r = await client.post(
        "/_matrix/client/v3/createRoom",
        json={"preset": "public_chat", "name": "bench"},
        headers={"Authorization": f"Bearer {owner['access_token']}"},
    )
    if r.status_code != 200:
        raise RuntimeError(f"createRoom: {r.status_code} {r.text[:300]}")
    room: str = r.json()["room_id"]
    limiter = trio.CapacityLimiter(8)

    async def join(acc: dict[str, str]) -> None:
        async with limiter:
            j = await client.post(
                f"/_matrix/client/v3/join/{quote(room, safe='')}",
                json={},
                headers={"Authorization": f"Bearer {acc['access_token']}"},
            )
            if j.status_code != 200:
                raise RuntimeError(f"join: {j.status_code} {j.text[:300]}")

    async with trio.open_nursery() as nursery:
        for acc in members:
            nursery.start_soon(join, acc)
    return room


# -- the run ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes: list[int] = args.sizes
    python = await trio.to_thread.run_sync(lambda: venv_python(args.synapse_version, log))
    out: dict[str, Any] = {"vox": {}, "synapse": {}, "setup": {}, "inflight": args.inflight}
    phases = iter(range(1, 1_000_000))
    with (
        vox_server({"VOX_RATE_LIMITS": gf.RATE_LIMITS}) as vox,
        synapse_server(python) as syn,
    ):
        out["synapse_version"] = syn.version
        log(f"vox pid {vox.proc.pid} at {vox.rest}; synapse {syn.version} pid {syn.proc.pid} at {syn.base}")
        pid_of = {"vox": vox.proc.pid, "synapse": syn.proc.pid}
        limits = httpx.Limits(max_connections=64)
        async with (
            httpx.AsyncClient(base_url=vox.rest, timeout=60, limits=limits) as vox_http,
            httpx.AsyncClient(base_url=syn.base, timeout=60, limits=limits) as syn_http,
            listener_pool(args.workers) as pool,
        ):
            t = time.monotonic()
            names = [f"msg{i:04d}" for i in range(max(sizes))]
            owner = (await gf.make_accounts(vox_http, ["msgowner"], 1))[0]
            members = await gf.make_accounts(vox_http, names, 8)
            channels = {n: await gf.make_guild(vox_http, owner, members[:n], f"msg {n}") for n in sizes}
            out["setup"]["vox_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            m_owner = (await matrix_accounts(syn_http, syn, ["msgowner"]))[0]
            m_members = await matrix_accounts(syn_http, syn, names)
            rooms = {n: await matrix_room(syn_http, m_owner, m_members[:n]) for n in sizes}
            out["setup"]["synapse_s"] = round(time.monotonic() - t, 1)
            log(f"setup: vox {out['setup']['vox_s']} s, synapse {out['setup']['synapse_s']} s")
            for n in sizes:
                await pool.connect(f"vox{n}", vox.gateway, [m.access for m in members[:n]])
                await pool.connect(
                    f"synapse{n}", f"matrix+{syn.base}", [m["access_token"] for m in m_members[:n]]
                )
                await gf.settle(list(pid_of.values()), 30)
                modes: list[float | None] = list(args.rates) + ([None] if args.fast else [])
                for rate in modes:
                    # At low rates a short run has too few samples for a p99: at least 10 messages.
                    seconds = max(args.seconds, 10 / rate) if rate else args.seconds
                    for target in ("vox", "synapse"):
                        await gf.settle(list(pid_of.values()), 30)
                        sender: gf.Sender
                        if target == "vox":
                            await gf.refresh_stale(vox_http, [owner])
                            sender = gf.VoxSender(vox_http, owner.access, channels[n])
                        else:
                            sender = MatrixSender(syn_http, m_owner["access_token"], rooms[n])
                        row = await gf.run_phase(
                            pool,
                            sender,
                            pid_of[target],
                            group=f"{target}{n}",
                            phase=next(phases),
                            clients=n,
                            seconds=seconds,
                            rate=rate,
                            inflight=args.inflight,
                            window=args.window,
                        )
                        row["rate"] = rate
                        row["lost"] = row["expected"] - row["deliveries"]
                        if sender.first_error:
                            row["first_error"] = sender.first_error
                        out[target].setdefault(f"N={n}", []).append(row)
                        log(
                            f"N={n} {target:<7} {row['mode']:<11} sends/s {row['sends_per_s']:>7g} "
                            f"deliveries/s {row['deliveries_per_s']:>8g} p50 {row['p50_ms']:>8g} ms "
                            f"p99 {row['p99_ms']:>8g} ms CPU s/1k {row['cpu_s_per_1000_deliveries']} "
                            f"lost {row['lost']}"
                        )
                for target in ("vox", "synapse"):
                    await pool.close(f"{target}{n}")
    out["ratios"] = ratios(out)
    return out


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    """vox / synapse per (N, mode): deliveries/s, p99 and CPU per 1,000 deliveries."""
    result: dict[str, Any] = {}
    for key, rows in out["vox"].items():
        for vox_row in rows:
            syn_row = next((r for r in out["synapse"].get(key, []) if r["mode"] == vox_row["mode"]), None)
            if not syn_row:
                continue

            def div(a: Any, b: Any) -> float | None:
                return round(a / b, 3) if a and b else None

            result[f"{key} {vox_row['mode']}"] = {
                "deliveries_per_s": div(vox_row["deliveries_per_s"], syn_row["deliveries_per_s"]),
                "p99": div(vox_row["p99_ms"], syn_row["p99_ms"]),
                "p50": div(vox_row["p50_ms"], syn_row["p50_ms"]),
                "cpu_per_delivery": div(
                    vox_row["cpu_s_per_1000_deliveries"], syn_row["cpu_s_per_1000_deliveries"]
                ),
            }
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=gf.parse_ints, default=[10, 100], help="listeners per room")
    parser.add_argument("--rates", type=gf.parse_floats, default=[1.0, 10.0, 50.0], help="messages/s")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run (>= 10 messages)")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True, help="add a fast run")
    # Synapse's send answers in hundreds of ms under load: with 4 in flight it is bound by its own
    # latency, not its capacity, so the fast run keeps more sends in flight than gateway_fanout.
    parser.add_argument("--inflight", type=int, default=16, help="concurrent sends in the fast run")
    parser.add_argument("--window", type=int, default=64, help="max messages ahead of the slowest listener")
    parser.add_argument("--workers", type=int, default=2, help="listener processes")
    parser.add_argument("--synapse-version", default=None, help="pin matrix-synapse (default: latest)")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    print(json.dumps(gf.finite(trio.run(run, parser.parse_args()))))


if __name__ == "__main__":
    main()
