"""Shared bench helpers: run a real `vox serve` subprocess and summarise latencies."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Server:
    rest: str
    gateway: str
    proc: subprocess.Popen[str]
    media: str | None = None


# Every listener on a free port: the ready line says which.
FREE_PORTS = ("--rest-port", "0", "--gateway-port", "0", "--media-port", "0")


def spawn_vox(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``python -m vox serve`` with every listener on a free port (the ready line says which)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vox", "serve", *FREE_PORTS, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def ready_urls(proc: subprocess.Popen[str]) -> dict[str, str]:
    """The URLs of the daemon's ``vox: ready ...`` line; RuntimeError when it printed another."""
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    if words[:2] != ["vox:", "ready"]:
        raise RuntimeError(f"daemon did not start: {words}")
    return dict(word.split("=", 1) for word in words[2:])


# Every benchmark client connects from 127.0.0.1: the per-address connection limit (an abuse
# guard, 256 by default) would refuse most of them.
LOOPBACK_LIMITS = {"VOX_MAX_CONNECTIONS_PER_IP": "1000000"}


@contextmanager
def vox_server(extra_env: dict[str, str] | None = None, *args: str) -> Iterator[Server]:
    """Start `python -m vox serve` on free ports in a scratch data dir; stop it with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="vox-bench-") as data:
        env = {**LOOPBACK_LIMITS, **os.environ, "VOX_LOG_LEVEL": "warning", **(extra_env or {})}
        proc = spawn_vox(env, "--data-dir", data, *args)
        try:
            parts = ready_urls(proc)
            yield Server(rest=parts["rest"], gateway=parts["gateway"], proc=proc, media=parts.get("media"))
        finally:
            terminate(proc)


def terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if the daemon is still there after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(values) * 1000, 3) if values else float("nan"),
    }


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


BENCH_PASSWORD = "bench password 123"


async def voice_room(http: Any, n: int, prefix: str) -> tuple[list[str], str]:
    """``n`` fresh users (access tokens) in one new guild with one voice channel (its id); the
    first user owns it. ``http`` is an httpx.AsyncClient on the daemon's REST URL."""
    tokens: list[str] = []
    for i in range(n):
        name = f"{prefix}{i}_{os.getpid()}_{time.monotonic_ns() % 100000}"
        r = await http.post("/api/v1/auth/register", json={"username": name, "password": BENCH_PASSWORD})
        assert r.status_code == 201, r.text
        r = await http.post("/api/v1/auth/login", json={"username": name, "password": BENCH_PASSWORD})
        tokens.append(r.json()["access_token"])
    h0 = {"Authorization": f"Bearer {tokens[0]}"}
    guild = (await http.post("/api/v1/guilds", json={"name": "bench"}, headers=h0)).json()
    channel = (
        await http.post(
            f"/api/v1/guilds/{guild['id']}/channels",
            json={"name": "room", "channel_type": "voice"},
            headers=h0,
        )
    ).json()
    for token in tokens[1:]:
        invite = (await http.post(f"/api/v1/guilds/{guild['id']}/invites", json={}, headers=h0)).json()
        r = await http.post(f"/api/v1/invites/{invite['code']}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    return tokens, channel["id"]
