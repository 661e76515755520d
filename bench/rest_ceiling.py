"""REST: a bare hypercorn + quart-trio app with one route (the ceiling) beside Vox's routes.

    python -m bench rest [--seconds 3] [--concurrency 8]
    python bench/rest_ceiling.py --serve     # the ceiling app alone, prints "hello: ready port=N"

The ceiling is what the HTTP stack Vox is built on costs by itself: hypercorn's trio worker
serving a QuartTrio app whose only route returns a small JSON object, configured as Vox configures
hypercorn (no access log, the same keep-alive). Against it, on a real `vox serve` (SQLite,
in-process broker):

- ``GET /api/v1/users/@me``: the cheapest authenticated route (token check, one row read);
- ``POST /api/v1/channels/{id}/messages``: the message send route (auth, permission, insert,
  publish), into a channel nobody listens to, so no fan-out is counted.

The load is --concurrency keep-alive HTTP/1.1 connections, each sending its next request as soon
as the previous response is complete, for --seconds per route. The client is a few lines of raw
socket code rather than an HTTP library, so that its own CPU (it shares the machine's cores with
the server) stays small next to the server's. Requests/s and the server's CPU per request
(user+system from /proc over the run) are reported, and the ratios Vox / ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import cpu_seconds, percentile, vox_server

RATE_LIMITS = "auth=100000000/1,login_failures=100000000/1,api=100000000/1,gateway_identify=100000000/1"
PASSWORD = "bench password 123"


# -- the ceiling app --------------------------------------------------------------------------------


async def serve_hello() -> None:
    import logging

    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.keep_alive_timeout = 75  # as vox.transports.rest configures it

    class Status:
        def started(self, binds: list[str]) -> None:
            print(f"hello: ready port={binds[0].rsplit(':', 1)[1]}", flush=True)

    stop = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await serve(app, cfg, shutdown_trigger=stop.wait, task_status=Status())  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


@contextmanager
def hello_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if line[:2] != ["hello:", "ready"]:
            raise RuntimeError(f"hello app did not start: {line}")
        yield proc, int(line[2].split("=", 1)[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load -------------------------------------------------------------------------------------------


def build_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connection(
    port: int, make_request: Any, deadline: float, latencies: list[float], statuses: dict[int, int]
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    async with stream:
        while trio.current_time() < deadline:
            t = time.perf_counter()
            await stream.send_all(make_request())
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buffer += chunk
            head = bytes(buffer[:end]).decode("latin-1").lower()
            status = int(head.split(" ", 2)[1])
            length = 0
            for line in head.split("\r\n")[1:]:
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            while len(buffer) < end + 4 + length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buffer += chunk
            del buffer[: end + 4 + length]
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1


async def load(pid: int, port: int, make_request: Any, seconds: float, concurrency: int) -> dict[str, Any]:
    """Closed loop: ``concurrency`` connections, each one request in flight, for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cpu0, client0, t0 = cpu_seconds(pid), cpu_seconds(os.getpid()), time.monotonic()
    deadline = trio.current_time() + seconds
    with trio.fail_after(seconds + 30):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(_connection, port, make_request, deadline, latencies, statuses)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    n = len(latencies)
    return {
        "requests": n,
        "statuses": {str(k): v for k, v in statuses.items()},
        "requests_per_s": round(n / elapsed, 1),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_request": round(cpu / n * 1000, 3) if n else None,
        "server_busy": round(cpu / elapsed, 2),
        "client_cpu_s": round(cpu_seconds(os.getpid()) - client0, 3),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


async def run(seconds: float, concurrency: int, log: Any = print) -> dict[str, Any]:
    import httpx

    from bench.gateway_fanout import make_accounts, make_guild

    out: dict[str, Any] = {"seconds": seconds, "concurrency": concurrency}
    with hello_server() as (proc, port):
        await trio.sleep(0.5)
        host = f"127.0.0.1:{port}"
        request = build_request("GET", host, "/hello", {})
        await load(proc.pid, port, lambda: request, min(1.0, seconds), concurrency)  # warm-up
        out["ceiling_hello"] = await load(proc.pid, port, lambda: request, seconds, concurrency)
        log(f"ceiling GET /hello: {out['ceiling_hello']}")
    with vox_server({"VOX_RATE_LIMITS": RATE_LIMITS}) as server:
        async with httpx.AsyncClient(base_url=server.rest, timeout=30) as client:
            owner = (await make_accounts(client, ["restowner"], 1))[0]
            channel = await make_guild(client, owner, [], "rest bench")
        port = int(server.rest.rsplit(":", 1)[1].split("/")[0])
        host = f"127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {owner.access}"}
        me = build_request("GET", host, "/api/v1/users/@me", auth)
        await load(server.proc.pid, port, lambda: me, min(1.0, seconds), concurrency)
        out["vox_users_me"] = await load(server.proc.pid, port, lambda: me, seconds, concurrency)
        log(f"vox GET /api/v1/users/@me: {out['vox_users_me']}")
        counter = iter(range(10**9))
        send_headers = {**auth, "Content-Type": "application/json"}

        def send() -> bytes:
            body = json.dumps({"content": f"rest bench {next(counter)}"}).encode()
            return build_request("POST", host, f"/api/v1/channels/{channel}/messages", send_headers, body)

        out["vox_send"] = await load(server.proc.pid, port, send, seconds, concurrency)
        log(f"vox POST /api/v1/channels/{{id}}/messages: {out['vox_send']}")
    ceiling = out["ceiling_hello"]
    out["ratios"] = {}
    for key in ("vox_users_me", "vox_send"):
        vox = out[key]
        out["ratios"][key] = {
            "requests_per_s_vs_ceiling": round(vox["requests_per_s"] / ceiling["requests_per_s"], 3),
            "cpu_per_request_vs_ceiling": round(
                vox["server_cpu_ms_per_request"] / ceiling["server_cpu_ms_per_request"], 2
            ),
        }
    return out


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        trio.run(serve_hello)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(trio.run(run, args.seconds, args.concurrency, lambda s: print(s, file=sys.stderr))))


if __name__ == "__main__":
    main()
