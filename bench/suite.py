"""The benchmark suite: every benchmark, its ceiling and its peer, one result file, the figures.

    python -m bench all [--long] [--skip voice,...] [--results DIR] [--figures DIR | --no-figures]
    python -m bench fanout|rss|voice|rest|synapse [--long] [-- ARGS FOR THAT SCRIPT]

Benchmarks (each a script in bench/ run as a subprocess that prints one JSON line):

- ``fanout``: bench/gateway_fanout.py, Vox's gateway against a bare trio-websocket broadcast
  server (the gateway ceiling), plus RSS per idle connection at 1,000 and 5,000;
- ``rss``: the RSS part alone;
- ``voice``: bench/voice_sfu.py, the SFU against a raw UDP relay (the media ceiling);
- ``rest``: bench/rest_ceiling.py, a hypercorn + quart-trio hello route (the REST ceiling)
  against Vox's cheapest authenticated route and its message send route;
- ``synapse``: bench/messaging.py, send -> receive against Matrix Synapse (the peer).

``all`` runs them in that order with short durations (about 6-8 minutes on 2 cores, after
Synapse's venv exists); ``--long`` gives each its long form (the durations docs/benchmarks.md
records). Arguments after ``--`` go to the script as they are and override the defaults.

Output: a table on stderr, ``bench/results/<UTC time>.json`` (machine, library versions, every
benchmark's own result, the headline ratios and the targets), and the PNG figures in
docs/figures/. A benchmark that fails or overruns its time budget is recorded as an error and the
suite goes on; its process group is interrupted (SIGINT, so its own clean-up stops the servers it
started), then killed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCRIPTS = {
    "fanout": "gateway_fanout.py",
    "rss": "gateway_fanout.py",
    "voice": "voice_sfu.py",
    "rest": "rest_ceiling.py",
    "synapse": "messaging.py",
}
ORDER = ["fanout", "voice", "rest", "synapse"]
SHORT = {
    "fanout": ["--sizes", "100", "--seconds", "4", "--rates", "10,50", "--repeat", "2", "--rss", "1000,5000"],
    "rss": ["--sizes", "", "--rss", "1000,5000"],
    "voice": ["--sizes", "5,10", "--speakers", "1,3", "--seconds", "3", "--warmup", "1"],
    "rest": ["--seconds", "3"],
    "synapse": ["--sizes", "10,100", "--rates", "1,10,50", "--seconds", "4"],
}
LONG = {
    "fanout": [
        "--sizes",
        "100,1000",
        "--seconds",
        "10",
        "--rates",
        "10,50",
        "--repeat",
        "3",
        "--rss",
        "1000,5000",
    ],
    "rss": ["--sizes", "", "--rss", "1000,5000"],
    "voice": ["--sizes", "5,10,25", "--speakers", "1,3,all", "--seconds", "5"],
    "rest": ["--seconds", "10"],
    "synapse": ["--sizes", "10,100", "--rates", "1,10,50", "--seconds", "10"],
}
# Wall-clock budget per benchmark (seconds), short and long form; Synapse's includes its install.
BUDGET_SHORT = {"fanout": 300, "rss": 200, "voice": 200, "rest": 120, "synapse": 600}
BUDGET_LONG = {"fanout": 1800, "rss": 300, "voice": 600, "rest": 300, "synapse": 1200}
LIBRARIES = [
    "trio",
    "hypercorn",
    "quart",
    "quart-trio",
    "trio-websocket",
    "aiortc",
    "aioquic",
    "psycopg",
    "redis",
    "httpx",
    "matplotlib",
]


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- machine ------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def versions(synapse: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["matrix-synapse"] = synapse
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "vox", "bench")),
    }


def installed_synapse_version() -> str | None:
    sys.path.insert(0, ROOT)
    from bench.synapse_server import cache_dir, synapse_version

    python = os.path.join(cache_dir(), "synapse-venv", "bin", "python")
    return (synapse_version(python) or None) if os.path.exists(python) else None


# -- running one benchmark ----------------------------------------------------------------------------


def run_script(name: str, args: list[str], budget: float) -> dict[str, Any]:
    """Run one benchmark script in its own process group; its JSON line, or an error."""
    cmd = [sys.executable, os.path.join(HERE, SCRIPTS[name]), *args]
    log(f"{name}: {' '.join(cmd[1:])} (budget {budget:.0f} s)")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        stdout = ""
        # SIGINT lets the script's own clean-up (context managers) stop the servers it started.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return {
            "error": f"over its budget of {budget:.0f} s",
            "seconds": round(time.monotonic() - started, 1),
        }
    except BaseException:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    elapsed = round(time.monotonic() - started, 1)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit status {proc.returncode}", "seconds": elapsed}
    result: dict[str, Any] = json.loads(lines[-1])
    log(f"{name}: done in {elapsed} s")
    return {"result": result, "seconds": elapsed, "args": args}


# -- headline ratios and targets ---------------------------------------------------------------------


def _row(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("mode") == mode), None)


def _div(a: Any, b: Any, digits: int = 3) -> float | None:
    return round(a / b, digits) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def headline(benchmarks: dict[str, Any]) -> dict[str, Any]:
    """``vox / ceiling`` and ``vox / synapse`` for each figure, as (name, ratio, vox, other, unit)."""
    rows: list[dict[str, Any]] = []

    def add(group: str, name: str, vox: Any, other: Any, unit: str, better: str) -> None:
        rows.append(
            {
                "group": group,
                "figure": name,
                "vox": vox,
                "other": other,
                "unit": unit,
                "ratio": _div(vox, other),
                "better": better,
            }
        )

    fan = benchmarks.get("fanout", {}).get("result", {})
    for key, row in fan.get("fanout", {}).items():
        if not key.startswith("N="):
            continue
        v, c = _row(row.get("vox", []), "fast"), _row(row.get("ceiling", []), "fast")
        if v and c:
            add(
                "gateway / ceiling",
                f"deliveries/s, {key}, fast",
                v["deliveries_per_s"],
                c["deliveries_per_s"],
                "/s",
                "higher",
            )
            add(
                "gateway / ceiling",
                f"CPU s per 1k deliveries, {key}, fast",
                v["cpu_s_per_1000_deliveries"],
                c["cpu_s_per_1000_deliveries"],
                "s",
                "lower",
            )
        for mode in ("paced 10/s", "paced 50/s"):
            v, c = _row(row.get("vox", []), mode), _row(row.get("ceiling", []), mode)
            if v and c:
                add("gateway / ceiling", f"p99, {key}, {mode}", v["p99_ms"], c["p99_ms"], "ms", "lower")
    rss = fan.get("rss") or benchmarks.get("rss", {}).get("result", {}).get("rss", {})
    for n, v in rss.get("vox", {}).items():
        c = rss.get("ceiling", {}).get(n)
        if isinstance(v, dict) and isinstance(c, dict):
            add(
                "memory / ceiling",
                f"KiB per idle connection, {n}",
                v["kib_per_connection"],
                c["kib_per_connection"],
                "KiB",
                "lower",
            )
    for r in benchmarks.get("voice", {}).get("result", {}).get("rows", []):
        scen = f"N={r['n']}, {r['speakers']} speaking"
        s, u = r["sfu"], r["relay"]
        add("media / ceiling", f"packets/s, {scen}", s["packets_per_s"], u["packets_per_s"], "/s", "higher")
        add("media / ceiling", f"p99, {scen}", s["p99_ms"], u["p99_ms"], "ms", "lower")
        add(
            "media / ceiling",
            f"CPU s per 1k packets, {scen}",
            s["cpu_s_per_1000"],
            u["cpu_s_per_1000"],
            "s",
            "lower",
        )
    rest = benchmarks.get("rest", {}).get("result", {})
    if rest.get("ceiling_hello"):
        c = rest["ceiling_hello"]
        for key, label in (("vox_users_me", "GET /users/@me"), ("vox_send", "POST message")):
            v = rest.get(key)
            if v:
                add(
                    "REST / ceiling",
                    f"requests/s, {label}",
                    v["requests_per_s"],
                    c["requests_per_s"],
                    "/s",
                    "higher",
                )
                add(
                    "REST / ceiling",
                    f"CPU ms per request, {label}",
                    v["server_cpu_ms_per_request"],
                    c["server_cpu_ms_per_request"],
                    "ms",
                    "lower",
                )
    msg = benchmarks.get("synapse", {}).get("result", {})
    for key, vrows in msg.get("vox", {}).items():
        srows = msg.get("synapse", {}).get(key, [])
        eq = at_equal_p99(vrows, srows)
        if eq:
            add(
                "vs Synapse",
                f"deliveries/s, p99 <= {eq['synapse']['p99_ms']:.0f} ms, {key}",
                eq["vox"]["deliveries_per_s"],
                eq["synapse"]["deliveries_per_s"],
                "/s",
                "higher",
            )
        for v in vrows:
            s = _row(srows, v["mode"])
            if not s:
                continue
            if v["mode"] == "fast":
                add(
                    "vs Synapse",
                    f"deliveries/s, {key}, fast",
                    v["deliveries_per_s"],
                    s["deliveries_per_s"],
                    "/s",
                    "higher",
                )
            add("vs Synapse", f"p99, {key}, {v['mode']}", v["p99_ms"], s["p99_ms"], "ms", "lower")
            add(
                "vs Synapse",
                f"CPU s per 1k deliveries, {key}, {v['mode']}",
                v["cpu_s_per_1000_deliveries"],
                s["cpu_s_per_1000_deliveries"],
                "s",
                "lower",
            )
    return {"rows": rows}


def at_equal_p99(vox_rows: list[dict[str, Any]], syn_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Synapse's most deliveries/s in any run of one room size, and Vox's most deliveries/s in a
    run whose p99 was no worse than that run's: "deliveries/s at equal p99". Conservative for
    Vox: its runs are bounded by the offered rate, so its figure is what it was asked for, not
    what it could do at that p99."""
    syn_ok = [r for r in syn_rows if r.get("deliveries_per_s") and r.get("p99_ms") is not None]
    if not syn_ok:
        return None
    s = max(syn_ok, key=lambda r: r["deliveries_per_s"])
    vox_ok = [r for r in vox_rows if r.get("deliveries_per_s") and r.get("p99_ms") is not None]
    within = [r for r in vox_ok if r["p99_ms"] <= s["p99_ms"]]
    if not within:
        return None
    v = max(within, key=lambda r: r["deliveries_per_s"])
    return {"vox": v, "synapse": s, "ratio": _div(v["deliveries_per_s"], s["deliveries_per_s"], 1)}


def targets(benchmarks: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    msg = benchmarks.get("synapse", {}).get("result", {})
    eq = at_equal_p99(msg.get("vox", {}).get("N=100", []), msg.get("synapse", {}).get("N=100", []))
    if eq:
        v, s = eq["vox"], eq["synapse"]
        out.append(
            {
                "target": "Vox >= 10x Synapse deliveries/s at equal p99 (N=100)",
                "measured": f"{eq['ratio']}x: Vox {v['deliveries_per_s']:g}/s ({v['mode']}, p99 "
                f"{v['p99_ms']:g} ms) vs Synapse's best {s['deliveries_per_s']:g}/s ({s['mode']}, p99 "
                f"{s['p99_ms']:g} ms)",
                "met": bool(eq["ratio"] and eq["ratio"] >= 10),
            }
        )
    v = _row(msg.get("vox", {}).get("N=100", []), "paced 10/s")
    if v:
        out.append(
            {
                "target": "Vox p99 send -> receive < 50 ms at 100 listeners x 10 msg/s",
                "measured": f"{v['p99_ms']:g} ms (p50 {v['p50_ms']:g} ms)",
                "met": v["p99_ms"] < 50,
            }
        )
    fan = benchmarks.get("fanout", {}).get("result", {}).get("fanout", {}).get("N=100", {})
    v, c = _row(fan.get("vox", []), "fast"), _row(fan.get("ceiling", []), "fast")
    if v and c:
        ratio = _div(v["deliveries_per_s"], c["deliveries_per_s"], 2)
        out.append(
            {
                "target": "Vox gateway >= 50% of the bare trio-websocket ceiling (N=100, fast)",
                "measured": f"{ratio} ({v['deliveries_per_s']:g} vs {c['deliveries_per_s']:g} deliveries/s)",
                "met": bool(ratio and ratio >= 0.5),
            }
        )
    return out


# -- report ------------------------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """NaN and infinities (a run with no samples) as null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"
    return str(x)


def table(result: dict[str, Any]) -> str:
    lines = [
        "",
        "| group | figure | Vox | ceiling / Synapse | ratio (Vox / other) | better |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["ratios"]["rows"]:
        lines.append(
            f"| {r['group']} | {r['figure']} | {fmt(r['vox'])} {r['unit']} | {fmt(r['other'])} {r['unit']} "
            f"| **{fmt(r['ratio'])}** | {r['better']} |"
        )
    lines += ["", "| target | measured | met? |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    for name, b in result["benchmarks"].items():
        if "error" in b:
            lines.append(f"\n{name}: ERROR {b['error']} after {b['seconds']} s")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------


def main() -> None:
    argv = sys.argv[1:]
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("benchmark", choices=["all", *SCRIPTS], help="what to run")
    parser.add_argument("--long", action="store_true", help="the long forms (about an hour for all)")
    parser.add_argument("--skip", default="", help="with all: comma-separated benchmarks to leave out")
    parser.add_argument("--results", default=os.path.join(HERE, "results"), help="where the JSON file goes")
    parser.add_argument(
        "--figures", default=None, help="where PNGs go (all: docs/figures; one benchmark: none unless given)"
    )
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    if args.benchmark == "all" and passthrough:
        parser.error("arguments after -- are for one benchmark, not for all")
    names = (
        [n for n in ORDER if n not in args.skip.split(",")] if args.benchmark == "all" else [args.benchmark]
    )
    defaults, budgets = (LONG, BUDGET_LONG) if args.long else (SHORT, BUDGET_SHORT)

    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_state(),
        "benchmarks": {},
    }
    t0 = time.monotonic()
    for name in names:
        extra = passthrough if args.benchmark != "all" else []
        budget = budgets[name] * (4 if extra else 1)
        result["benchmarks"][name] = run_script(name, [*defaults[name], *extra], budget)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["machine"]["load_average_end"] = load_average()
    synapse = result["benchmarks"].get("synapse", {}).get("result", {}).get("synapse_version")
    result["versions"] = versions(synapse or installed_synapse_version())
    result["ratios"] = headline(result["benchmarks"])
    result["targets"] = targets(result["benchmarks"])

    os.makedirs(args.results, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    figures = args.figures or (os.path.join(ROOT, "docs", "figures") if args.benchmark == "all" else None)
    if figures and not args.no_figures:
        try:
            from bench.figures import draw

            result["figures"] = [os.path.relpath(p, ROOT) for p in draw(result, figures)]
        except ImportError as exc:
            log(f"no figures ({exc}); install the bench extra: pip install -e '.[bench]'")
    path = os.path.join(args.results, f"{stamp}-{args.benchmark}.json")
    with open(path, "w") as f:
        json.dump(finite(result), f, indent=1, allow_nan=False, default=str)
        f.write("\n")
    print(table(result), file=sys.stderr)
    log(f"result: {os.path.relpath(path, ROOT)}; {result['seconds']} s in all")
    for p in result.get("figures", []):
        log(f"figure: {p}")
