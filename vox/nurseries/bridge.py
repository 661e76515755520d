"""The trio-asyncio bridge: one asyncio loop (trio_asyncio) for the daemon's asyncio-only libraries
(aiortc), opened by the root nursery and alive as long as the daemon.

Every crossing is explicit (``trio_asyncio.aio_as_trio``); every close that crosses runs under a
trio deadline (``bounded``), so an asyncio object that will not close in time is abandoned and
counted rather than allowed to hang shutdown.

trio-asyncio 0.16 loses a cancellation (stack-notes pitfall 2): an asyncio task awaiting
``loop.run_in_executor`` (which trio-asyncio runs with the uninterruptible
``trio.to_thread.run_sync``) that is cancelled while the thread runs gets the thread's *result*
once the thread finishes, the ``CancelledError`` is lost and the task keeps running (aiortc's
Opus encoder runs in the executor, so ``RTCPeerConnection.close()`` hung now and then).
``apply_cancellation_fix`` patches ``AsyncHandle._run`` once: when the handle's cancel scope
was cancelled, the future is resolved as cancelled instead of being given the result. It touches
a private method, so it applies only to the versions it was checked against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any, TypeVar

import trio
import trio_asyncio
from trio_asyncio import _handles

__all__ = ["FIXED_VERSIONS", "aio", "apply_cancellation_fix", "bounded", "open_bridge"]

log = logging.getLogger("vox.bridge")

T = TypeVar("T")

# Versions whose AsyncHandle._run was read and found to lose the cancellation as described.
FIXED_VERSIONS = frozenset({"0.16.0"})

_applied = False


async def _run_fixed(self: Any) -> None:  # a copy of AsyncHandle._run (0.16.0), one line changed
    self._started.set()
    if self._cancelled:
        self._finished = True
        if self._fut is not None and not self._fut.done():
            self._fut.cancel()
        return
    try:
        with self._scope:
            try:
                res = await self._callback(*self._args)
            finally:
                self._finished = True
        if self._fut:
            # The fix: ``cancel_called``, not ``cancelled_caught``. An uninterruptible callback
            # (a worker thread) returns normally after its scope was cancelled; its result must
            # not reach a future whose awaiting task asked to be cancelled.
            if self._scope.cancel_called:
                self._fut.cancel()
            elif not self._fut.cancelled():
                self._fut.set_result(res)
    except BaseException as exc:
        if not self._fut:
            rest, base = _handles.collapse_aware_exception_split(exc, Exception)
            if rest:
                self._raise(rest)
            if base:
                raise base  # noqa: B904 (as in trio-asyncio: the original exception, unchanged)
        else:
            cancelled, rest = _handles.collapse_aware_exception_split(exc, trio.Cancelled)
            if not self._fut.cancelled():
                if rest:
                    self._fut.set_exception(rest)
                else:
                    self._fut.cancel()
            if cancelled:
                raise cancelled  # noqa: B904


def apply_cancellation_fix() -> bool:
    """Patch trio-asyncio once (idempotent); False (and a warning) on an unchecked version."""
    global _applied
    if _applied:
        return True
    installed = version("trio-asyncio")
    if installed not in FIXED_VERSIONS:
        log.warning(
            "trio-asyncio cancellation fix not applied; closes still run under deadlines",
            extra={"fields": {"version": installed, "checked": sorted(FIXED_VERSIONS)}},
        )
        return False
    _handles.AsyncHandle._run = _run_fixed
    _applied = True
    return True


@asynccontextmanager
async def open_bridge() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """The asyncio loop; opened once by the root nursery (through the voice service)."""
    apply_cancellation_fix()
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_error)
        yield loop


def _log_asyncio_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An exception no asyncio task retrieved (aiortc leaves some: an ICE start that loses a race
    with a close raises in a task nobody awaits). trio_asyncio's default handler re-raises it in
    the loop's nursery, which would end the whole SFU and with it the daemon; one peer's failure
    is logged instead, and that peer's owner notices its connection state as usual."""
    exc = context.get("exception")
    log.warning(
        "asyncio error ignored",
        extra={"fields": {"message": str(context.get("message", "")), "error": repr(exc)}},
    )


async def aio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Call an asyncio coroutine function from trio."""
    result: T = await trio_asyncio.aio_as_trio(fn)(*args)
    return result


async def bounded(fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float) -> bool:  # noqa: ASYNC109
    """Run an asyncio close under a shielded trio deadline; False when it did not finish in time
    (the caller abandons the object and counts it)."""
    with trio.move_on_after(timeout) as scope:
        scope.shield = True
        try:
            await aio(fn, *args)
        except Exception as exc:  # a failing close is still a finished close
            log.debug("close raised", extra={"fields": {"error": repr(exc)}})
    return not scope.cancelled_caught
