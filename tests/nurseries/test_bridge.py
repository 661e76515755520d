"""The trio-asyncio cancellation fix (vox.nurseries.bridge; stack-notes pitfall 2)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from importlib.metadata import version

import pytest
import trio
import trio_asyncio

from vox.nurseries import bridge


async def _cancel_during_executor() -> asyncio.Task[str]:
    """An asyncio task awaiting run_in_executor, cancelled while the thread still runs."""
    release = threading.Event()
    loop = asyncio.get_running_loop()

    async def waiter() -> str:
        return await loop.run_in_executor(None, lambda: (release.wait(5), "thread result")[1])

    task = loop.create_task(waiter())
    await asyncio.sleep(0.05)  # the thread is running now
    task.cancel()
    await asyncio.sleep(0.05)
    release.set()  # the thread finishes after the cancellation
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 2)
    return task


@pytest.mark.skipif(version("trio-asyncio") not in bridge.FIXED_VERSIONS, reason="fix not applicable")
async def test_cancelled_executor_wait_ends_cancelled() -> None:
    assert bridge.apply_cancellation_fix()
    async with trio_asyncio.open_loop():
        task = await trio_asyncio.aio_as_trio(_cancel_during_executor)()
    assert task.done()
    assert task.cancelled(), f"the cancellation was lost: the task returned {task.result()!r}"


async def test_bounded_abandons_a_close_that_hangs() -> None:
    async def never() -> None:
        await asyncio.sleep(3600)

    async with trio_asyncio.open_loop():
        started = trio.current_time()
        assert not await bridge.bounded(never, timeout=0.2)
        assert trio.current_time() - started < 1

        async def quick() -> None:
            await asyncio.sleep(0)

        assert await bridge.bounded(quick, timeout=1)


async def test_an_error_no_asyncio_task_retrieved_does_not_end_the_bridge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("RTCIceTransport is closed")

    async def orphan() -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(fails())
        await asyncio.sleep(0.01)
        # What the loop does when an unretrieved task is collected (aiortc leaves such tasks).
        loop.call_exception_handler(
            {"message": "Task exception was never retrieved", "exception": task.exception(), "task": task}
        )

    with trio.fail_after(5):
        async with bridge.open_bridge():
            await bridge.aio(orphan)
            await trio.sleep(0.1)  # where trio_asyncio's own handler would raise it
            assert await bridge.aio(_answer) == 42
    assert any("asyncio error ignored" in r.message for r in caplog.records)


async def _answer() -> int:
    return 42
