"""Pub/sub fan-out benchmark: 1 publisher, N subscribers on one topic, memory and Redis.

    python bench/pubsub.py [--seconds 3] [--subscribers 100] [--rate 50] [--redis-url URL]

Two bounded runs per backend:
- "saturated": the publisher goes as fast as it can, held back only so that it never runs more
  than --window messages ahead of the slowest subscriber (so nobody is cut as lagged);
  latency here is mostly queueing.
- "paced": --rate messages per second (the design target is p99 < 50 ms at N=100, 50 msg/s).

Latency is publish call -> subscriber receives, on one clock (same process). CPU is this process
only (the Redis server's own CPU is not counted). Prints one JSON line on stdout and a table on
stderr. Redis is skipped, saying why, when it cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import sys
import time
import uuid
from typing import Any

import trio

from vox.errors import BrokerError
from vox.pubsub import Broker, Subscription, open_broker

HEADER = struct.Struct("!qd")  # sequence number (-1 ends the run), publish time
PAYLOAD_SIZE = 256  # about one encoded chat event
STOP = -1


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_once(
    broker: Broker, *, subscribers: int, seconds: float, rate: float | None, window: int
) -> dict[str, Any]:
    topic = f"channel:{uuid.uuid4()}"
    padding = b"\0" * (PAYLOAD_SIZE - HEADER.size)
    received = [0] * subscribers
    # Every message is timed when paced; a sample when saturated, so timing stays cheap.
    sample_every = 1 if rate else 16
    latencies: list[float] = []

    async def subscriber(index: int, sub: Subscription) -> None:
        async for message in sub:
            seq, sent = HEADER.unpack_from(message.payload)
            if seq == STOP:
                return
            received[index] += 1
            if seq % sample_every == 0:
                latencies.append(time.perf_counter() - sent)

    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(broker.subscribe([topic])) for _ in range(subscribers)]
        cpu_start = time.process_time()
        started = time.perf_counter()
        published = 0
        with trio.fail_after(seconds + 60):
            async with trio.open_nursery() as nursery:
                for index, sub in enumerate(subs):
                    nursery.start_soon(subscriber, index, sub)
                deadline = started + seconds
                next_at = trio.current_time()
                while time.perf_counter() < deadline:
                    if rate:
                        next_at += 1.0 / rate
                        await trio.sleep_until(next_at)
                    else:
                        while published - min(received) >= window:
                            await trio.sleep(0.0005)
                    await broker.publish(topic, HEADER.pack(published, time.perf_counter()) + padding)
                    published += 1
                await broker.publish(topic, HEADER.pack(STOP, 0.0) + padding)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_start
    deliveries = sum(received)
    assert deliveries == published * subscribers, (deliveries, published * subscribers)
    latencies.sort()
    return {
        "messages": published,
        "deliveries": deliveries,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(published / elapsed, 1),
        "deliveries_per_s": round(deliveries / elapsed, 1),
        "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 3),
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 3),
        "cpu_s_per_1000_deliveries": round(cpu / deliveries * 1000, 5) if deliveries else None,
    }


async def bench_backend(url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"vox-bench-{uuid.uuid4().hex[:8]}:"
    async with open_broker(url, buffer_size=args.buffer, prefix=prefix) as broker:
        options = {"subscribers": args.subscribers, "seconds": args.seconds, "window": args.window}
        return {
            "describe": broker.describe(),
            "saturated": await run_once(broker, rate=None, **options),
            "paced": await run_once(broker, rate=args.rate, **options),
        }


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"memory": await bench_backend(None, args)}
    try:
        results["redis"] = await bench_backend(args.redis_url, args)
    except BrokerError as exc:
        results["redis"] = {"skipped": f"Redis at {args.redis_url} not available: {exc}"}
        print(f"redis skipped: {exc}", file=sys.stderr)
    line = {
        "bench": "pubsub",
        "subscribers": args.subscribers,
        "seconds_per_run": args.seconds,
        "paced_rate": args.rate,
        "buffer_size": args.buffer,
        "payload_bytes": PAYLOAD_SIZE,
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(line), flush=True)
    header = (
        f"{'backend':8} {'run':10} {'msgs/s':>9} {'deliv/s':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'CPU s/1k deliv':>15}"
    )
    print(header, file=sys.stderr)
    for backend, result in results.items():
        if "skipped" in result:
            print(f"{backend:8} skipped: {result['skipped']}", file=sys.stderr)
            continue
        for run in ("saturated", "paced"):
            r = result[run]
            print(
                f"{backend:8} {run:10} {r['messages_per_s']:>9} {r['deliveries_per_s']:>10} "
                f"{r['latency_ms_p50']:>8} {r['latency_ms_p99']:>8} {r['cpu_s_per_1000_deliveries']:>15}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second in the paced run")
    parser.add_argument("--buffer", type=int, default=1024, help="buffer_size of the broker")
    parser.add_argument("--window", type=int, default=256, help="saturated run: most messages in flight")
    parser.add_argument(
        "--redis-url", default=os.environ.get("VOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    trio.run(main, parser.parse_args())
