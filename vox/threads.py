"""Running blocking work in a worker thread with one scheduling point, not three.

``trio.to_thread.run_sync(fn, limiter=...)`` yields to the scheduler when it takes a limiter
token (even a free one) and again while the thread runs. Under gateway fan-out the run queue
holds a writer task per receiving connection, so every yield of a request waits behind all of
them: a REST send does three database round trips, and each extra yield added a whole round of
the run queue to its latency. ``run_in_thread`` takes a free token without yielding and yields
once, for the thread. Its semantics are otherwise those of ``trio.to_thread.run_sync`` with
``abandon_on_cancel=False``: a cancellation before the thread starts cancels; once it has
started the caller waits for it (a transaction is never left running unobserved).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    try:
        limiter.acquire_on_behalf_of_nowait(task)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(task)
    token = trio.lowlevel.current_trio_token()
    context = contextvars.copy_context()

    def report(result: outcome.Outcome[T]) -> None:
        def wake() -> None:
            limiter.release_on_behalf_of(task)
            trio.lowlevel.reschedule(task, result)

        # When trio is already gone nobody is left to receive the result.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(wake)

    def work() -> T:
        return context.run(fn, *args)

    try:
        trio.lowlevel.start_thread_soon(work, report)
    except BaseException:
        limiter.release_on_behalf_of(task)
        raise

    def abort(_: Any) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.FAILED  # the thread cannot be stopped; wait for it

    # The thread's outcome is unwrapped here: its value is returned, its exception raised.
    result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result
