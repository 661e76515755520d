"""run_in_thread: results, errors, the limiter, and cancellation rules."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from vox.threads import run_in_thread


async def test_returns_the_result_and_runs_off_the_trio_thread() -> None:
    limiter = trio.CapacityLimiter(1)
    main = threading.get_ident()
    assert await run_in_thread(threading.get_ident, limiter=limiter) != main
    assert await run_in_thread(lambda a, b: a + b, 2, 3, limiter=limiter) == 5
    assert limiter.borrowed_tokens == 0


async def test_exceptions_propagate_and_release_the_token() -> None:
    limiter = trio.CapacityLimiter(1)

    def boom() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await run_in_thread(boom, limiter=limiter)
    assert limiter.borrowed_tokens == 0


async def test_the_limiter_bounds_concurrency() -> None:
    limiter = trio.CapacityLimiter(2)
    lock = threading.Lock()
    running = peak = 0
    gate = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(5)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(lambda: run_in_thread(work, limiter=limiter))
        await trio.sleep(0.2)
        assert limiter.borrowed_tokens == 2
        gate.set()
    assert peak == 2 and limiter.borrowed_tokens == 0


async def test_a_started_thread_is_waited_for_even_when_cancelled() -> None:
    limiter = trio.CapacityLimiter(1)
    release = threading.Event()
    finished = []

    def slow() -> str:
        release.wait(5)
        finished.append(True)
        return "done"

    started = trio.current_time()
    with trio.move_on_after(0.05):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_in_thread(slow, limiter=limiter))
            await trio.sleep(0.01)
            # The deadline passes while the thread runs; the caller still waits for it.
            trio.lowlevel.spawn_system_task(_release_later, release)
    # Left only once the thread finished (released after 0.2 s), not at the 0.05 s deadline.
    assert trio.current_time() - started >= 0.2
    assert finished == [True] and limiter.borrowed_tokens == 0


async def _release_later(release: threading.Event) -> None:
    await trio.sleep(0.2)
    release.set()


async def test_cancelled_before_starting_does_not_run() -> None:
    limiter = trio.CapacityLimiter(1)
    ran = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_in_thread(lambda: ran.append(True), limiter=limiter)
    assert ran == [] and limiter.borrowed_tokens == 0
