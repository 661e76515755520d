"""Shared bench helpers: run a real `vox serve` subprocess and summarise latencies."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Server:
    rest: str
    gateway: str
    proc: subprocess.Popen[str]
    media: str | None = None


@contextmanager
def vox_server(extra_env: dict[str, str] | None = None, *args: str) -> Iterator[Server]:
    """Start `python -m vox serve` on free ports in a scratch data dir; stop it with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="vox-bench-") as data:
        env = {**os.environ, "VOX_LOG_LEVEL": "warning", **(extra_env or {})}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vox",
                "serve",
                "--data-dir",
                data,
                "--rest-port",
                "0",
                "--gateway-port",
                "0",
                "--media-port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[:2] != ["vox:", "ready"]:
                raise RuntimeError(f"daemon did not start: {line}")
            parts = dict(p.split("=", 1) for p in line[2:])
            yield Server(rest=parts["rest"], gateway=parts["gateway"], proc=proc, media=parts.get("media"))
        finally:
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
