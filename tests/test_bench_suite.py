"""The benchmark suite's entry and result shape (no benchmark is run, no Synapse needed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from bench import suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_every_benchmark() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for name in ("all", "fanout", "rss", "voice", "rest", "synapse"):
        assert name in out.stdout


def test_machine_and_versions_have_the_recorded_keys() -> None:
    m = suite.machine()
    for key in ("cpu_model", "cores", "ram_gib", "kernel", "python"):
        assert key in m
    v = suite.versions("1.0")
    for lib in ("trio", "hypercorn", "quart-trio", "trio-websocket", "aiortc", "aioquic", "psycopg", "redis"):
        assert lib in v
    assert v["matrix-synapse"] == "1.0"


def _row(mode: str, deliveries: float, p99: float, rate: float | None = None) -> dict[str, object]:
    return {
        "mode": mode,
        "rate": rate,
        "deliveries_per_s": deliveries,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "cpu_s_per_1000_deliveries": 0.1,
    }


def test_ratios_and_targets_from_results() -> None:
    benchmarks = {
        "fanout": {
            "result": {
                "fanout": {
                    "N=100": {"vox": [_row("fast", 15_000, 40)], "ceiling": [_row("fast", 30_000, 40)]}
                },
                "rss": {
                    "vox": {"1000": {"kib_per_connection": 43.0}},
                    "ceiling": {"1000": {"kib_per_connection": 27.0}},
                },
            }
        },
        "synapse": {
            "result": {
                "vox": {"N=100": [_row("paced 10/s", 1_000, 20, 10), _row("fast", 12_000, 50)]},
                "synapse": {"N=100": [_row("paced 10/s", 800, 900, 10), _row("fast", 300, 700)]},
            }
        },
    }
    ratios = suite.headline(benchmarks)["rows"]
    by_name = {(r["group"], r["figure"]): r["ratio"] for r in ratios}
    assert by_name[("gateway / ceiling", "deliveries/s, N=100, fast")] == 0.5
    assert by_name[("vs Synapse", "deliveries/s, N=100, fast")] == 40
    targets = {t["target"].split(" (")[0]: t["met"] for t in suite.targets(benchmarks)}
    assert targets == {
        "Vox >= 10x Synapse deliveries/s at equal p99": True,
        "Vox p99 send -> receive < 50 ms at 100 listeners x 10 msg/s": True,
        "Vox gateway >= 50% of the bare trio-websocket ceiling": True,
    }
    text = json.dumps(suite.finite({"a": [math.nan, 1.0]}), allow_nan=False)
    assert json.loads(text) == {"a": [None, 1.0]}
