"""PNG figures of one suite result (matplotlib, from the `bench` extra): written by bench/suite.py."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

VOX, OTHER, SYNAPSE = "#3b6fd6", "#9a9a9a", "#d9822b"


def _rows(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("mode") == mode), None)


def _subtitle(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = m.get("load_average") or ["?"]
    return (
        f"{m['cores']} cores ({m['cpu_model']}), Python {m['python']}, load {load[0]} at start; "
        f"{result['started']}; {result['command']}"
    )


def vox_vs_synapse(result: dict[str, Any], path: str) -> bool:
    msg = result["benchmarks"].get("synapse", {}).get("result")
    if not msg:
        return False
    fig, (lat, thr, eq) = plt.subplots(1, 3, figsize=(17, 4.8))
    for target, color in (("vox", VOX), ("synapse", SYNAPSE)):
        for key, rows in msg[target].items():
            paced = [r for r in rows if r.get("rate")]
            style = "-" if key == "N=100" else "--"
            lat.plot(
                [r["rate"] for r in paced],
                [r["p99_ms"] for r in paced],
                style,
                marker="o",
                color=color,
                label=f"{'Vox' if target == 'vox' else 'Synapse'} p99, {key} listeners",
            )
    lat.axhline(50, color="red", linewidth=0.8, linestyle=":", label="target: Vox p99 < 50 ms")
    lat.set(xscale="log", yscale="log", xlabel="messages/s sent", ylabel="send -> receive latency, ms")
    lat.set_title("Latency at a paced rate (p99)")
    lat.legend(fontsize=8)
    keys = list(msg["vox"])
    width = 0.38
    for i, key in enumerate(keys):
        v = _rows(msg["vox"][key], "fast")
        s = _rows(msg["synapse"].get(key, []), "fast")
        if not v or not s:
            continue
        thr.bar(i - width / 2, v["deliveries_per_s"], width, color=VOX, label="Vox" if i == 0 else None)
        thr.bar(
            i + width / 2, s["deliveries_per_s"], width, color=SYNAPSE, label="Synapse" if i == 0 else None
        )
        ratio = v["deliveries_per_s"] / s["deliveries_per_s"] if s["deliveries_per_s"] else float("nan")
        thr.annotate(
            f"{ratio:.0f}x\np99 {v['p99_ms']:.0f} vs {s['p99_ms']:.0f} ms",
            (i, v["deliveries_per_s"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    thr.set_xticks(range(len(keys)), [f"{k} listeners" for k in keys])
    thr.set(yscale="log", ylabel="deliveries/s")
    thr.set_ylim(top=thr.get_ylim()[1] * 4)
    thr.set_title(f"Fast run: deliveries/s ({msg.get('inflight', 4)} sends in flight)")
    thr.legend(fontsize=8)
    # Every run as a point: what each server delivered and at what p99; "at equal p99" reads across.
    for target, color in (("vox", VOX), ("synapse", SYNAPSE)):
        for key, rows in msg[target].items():
            eq.scatter(
                [r["p99_ms"] for r in rows],
                [r["deliveries_per_s"] for r in rows],
                color=color,
                marker="o" if key == "N=100" else "^",
                label=f"{'Vox' if target == 'vox' else 'Synapse'}, {key}",
            )
    eq.set(xscale="log", yscale="log", xlabel="p99 send -> receive, ms", ylabel="deliveries/s")
    eq.set_title("Every run: deliveries/s against p99")
    eq.legend(fontsize=8)
    fig.suptitle("Vox vs Matrix Synapse: message send -> receive", fontsize=12)
    fig.text(0.5, 0.005, _subtitle(result), ha="center", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def ceilings(result: dict[str, Any], path: str) -> bool:
    b = result["benchmarks"]
    fan = b.get("fanout", {}).get("result", {})
    rest = b.get("rest", {}).get("result", {})
    voice = b.get("voice", {}).get("result", {}).get("rows", [])
    rss = fan.get("rss") or b.get("rss", {}).get("result", {}).get("rss", {})
    if not (fan.get("fanout") or rest or voice or rss):
        return False
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6))
    gw, http, media, mem = axes

    def pair(ax: Any, labels: list[str], vox: list[float], other: list[float], other_name: str) -> None:
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], vox, 0.4, color=VOX, label="Vox")
        ax.bar([x + 0.2 for x in xs], other, 0.4, color=OTHER, label=other_name)
        for x, a, c in zip(xs, vox, other, strict=True):
            if a and c:
                ax.annotate(f"{a / c:.2f}", (x, max(a, c)), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.legend(fontsize=8)

    row = fan.get("fanout", {}).get("N=100", {})
    labels, v, c = [], [], []
    for mode in ("paced 10/s", "paced 50/s", "fast"):
        rv, rc = _rows(row.get("vox", []), mode), _rows(row.get("ceiling", []), mode)
        if rv and rc:
            labels.append(mode)
            v.append(rv["deliveries_per_s"])
            c.append(rc["deliveries_per_s"])
    pair(gw, labels, v, c, "bare trio-websocket")
    gw.set(ylabel="deliveries/s", title="Gateway fan-out, N = 100")

    if rest.get("ceiling_hello"):
        hello = rest["ceiling_hello"]["requests_per_s"]
        labels = ["GET /users/@me", "POST message"]
        v = [rest["vox_users_me"]["requests_per_s"], rest["vox_send"]["requests_per_s"]]
        pair(http, labels, v, [hello, hello], "hypercorn + quart-trio hello")
    http.set(ylabel="requests/s", title="REST requests/s (ratio to the hello route)")

    if voice:
        labels = [f"N={r['n']}, {r['speakers']} spk" for r in voice]
        pair(
            media,
            labels,
            [r["sfu"]["cpu_s_per_1000"] * 1000 for r in voice],
            [r["relay"]["cpu_s_per_1000"] * 1000 for r in voice],
            "raw UDP relay",
        )
        media.tick_params(axis="x", labelrotation=30)
    media.set(ylabel="server CPU ms per 1,000 packets (lower is better)", title="Voice forwarding cost")

    if rss.get("vox"):
        counts = [k for k, val in rss["vox"].items() if isinstance(val, dict)]
        pair(
            mem,
            [f"{k} conns" for k in counts],
            [rss["vox"][k]["kib_per_connection"] for k in counts],
            [rss["ceiling"][k]["kib_per_connection"] for k in counts],
            "bare trio-websocket",
        )
    mem.set(ylabel="KiB RSS per idle connection (lower is better)", title="Memory per idle connection")
    fig.suptitle("Vox against the physical ceilings (numbers: Vox / ceiling)", fontsize=12)
    fig.text(0.5, 0.005, _subtitle(result), ha="center", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def ratios(result: dict[str, Any], path: str) -> bool:
    rows = [r for r in result["ratios"]["rows"] if r["ratio"]]
    if not rows:
        return False
    colors = {
        "gateway / ceiling": "#3b6fd6",
        "memory / ceiling": "#6a4fc7",
        "media / ceiling": "#2a9d8f",
        "REST / ceiling": "#8a8a2a",
        "vs Synapse": SYNAPSE,
    }
    fig, ax = plt.subplots(figsize=(11, 0.26 * len(rows) + 1.6))
    ys = list(range(len(rows)))[::-1]
    # Bars grow from 1 (equal) towards the ratio, so both directions read as a distance from parity.
    ax.barh(
        ys,
        [r["ratio"] - 1 for r in rows],
        left=1,
        color=[colors.get(r["group"], OTHER) for r in rows],
    )
    for y, r in zip(ys, rows, strict=True):
        better = "higher" if r["better"] == "higher" else "lower"
        ax.annotate(
            f" {r['ratio']:.3g} ({better} is better)", (max(r["ratio"], 1), y), va="center", fontsize=7
        )
    ax.set_yticks(ys, [f"{r['group']}: {r['figure']}" for r in rows], fontsize=7)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set(xscale="log", xlabel="Vox / other (log scale; 1 = equal)")
    low = min(1.0, *(r["ratio"] for r in rows))
    ax.set_xlim(low / 2, max(r["ratio"] for r in rows) * 12)
    ax.set_title("Headline ratios: Vox / ceiling and Vox / Synapse", fontsize=11)
    fig.text(0.5, 0.005, _subtitle(result), ha="center", fontsize=6, color="#555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(result: dict[str, Any], directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, fn in (
        ("bench-ratios.png", ratios),
        ("bench-vs-synapse.png", vox_vs_synapse),
        ("bench-ceilings.png", ceilings),
    ):
        path = os.path.join(directory, name)
        if fn(result, path):
            written.append(path)
    return written
