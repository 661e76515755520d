"""A daemon that lives in its own thread's trio loop, for property-based tests against it.

hypothesis drives a *sync* test function (its engine calls the test once per example and shrinks
failures by calling it again), and pytest-trio runs each async test in a trio loop of its own, so
an async ``@given`` test could not share one daemon across examples. Instead the daemon runs in a
background thread's ``trio.run`` and each example is handed to that loop with
``trio.from_thread.run``: every example is real async code on the daemon's own loop (so it can
also inspect the daemon's task tree), and the daemon is started once per test, not per example.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from tests.e2e.conftest import Daemon, start_daemon

T = TypeVar("T")

# Fuzzing opens many connections from one address and repeats every request class quickly; the
# per-class limits have their own tests, here they would only turn every example into a 4008.
NO_LIMITS = ",".join(
    f"{name}=1000000/60"
    for name in (
        "auth",
        "login_failures",
        "api",
        "gateway_identify",
        "typing",
        "presence",
        "mls_relay",
        "voice_join",
    )
)


class LiveDaemon:
    def __init__(
        self, daemon: Daemon, nursery: trio.Nursery, clients: trio.Nursery, token: trio.lowlevel.TrioToken
    ) -> None:
        self.daemon = daemon
        self.nursery = nursery  # holds the daemon's runner task and nothing else
        self.clients = clients  # the test's long-lived clients, outside the daemon's tree
        self.token = token

    async def hold(self, manager: AbstractAsyncContextManager[T]) -> tuple[T, trio.Event]:
        """Enter ``manager`` in a task that outlives this call (a client kept open across
        examples); it is exited when the returned event is set."""

        async def keeper(task_status: trio.TaskStatus[tuple[T, trio.Event]]) -> None:
            async with manager as value:
                release = trio.Event()
                task_status.started((value, release))
                await release.wait()

        held: tuple[T, trio.Event] = await self.clients.start(keeper)
        return held

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 60) -> T:
        """Run ``afn(*args)`` on the daemon's loop and return its result (or raise its error)."""

        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await afn(*args)

        return trio.from_thread.run(bounded, trio_token=self.token)

    def task_names(self) -> Counter[str]:
        """The names of every task in the daemon's tree (only on the daemon's loop: the tree
        changes under a reader in another thread)."""
        names: Counter[str] = Counter()
        stack = list(self.nursery.child_tasks)
        while stack:
            task = stack.pop()
            names[task.name] += 1
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return names

    async def baseline(self, settle: float = 1.0) -> Counter[str]:
        """The daemon's tasks once what started them has had ``settle`` seconds to finish."""
        await trio.sleep(settle)
        return self.task_names()

    async def settled_tasks(self, baseline: Counter[str], timeout: float = 20) -> Counter[str]:
        """Wait (closes take a moment) until the daemon has no more tasks than ``baseline``;
        return the surplus left when the time is up (empty: nothing leaked)."""
        with trio.move_on_after(timeout):
            while self.task_names() - baseline:
                await trio.sleep(0.1)
        return self.task_names() - baseline


@contextmanager
def live_daemon(tmp_path: Path, **overrides: Any) -> Iterator[LiveDaemon]:
    started: list[LiveDaemon] = []
    failed: list[BaseException] = []
    ready = threading.Event()
    stop_requested: list[trio.Event] = []

    async def main() -> None:
        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as nursery:
                daemon = await start_daemon(nursery, tmp_path, rate_limits=NO_LIMITS, **overrides)
                stop = trio.Event()
                stop_requested.append(stop)
                started.append(LiveDaemon(daemon, nursery, clients, trio.lowlevel.current_trio_token()))
                ready.set()
                await stop.wait()
                daemon.stop.set()
                with trio.fail_after(30):
                    await daemon.done.wait()
            clients.cancel_scope.cancel()  # whatever a failed test left open

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test thread
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="vox-daemon", daemon=True)
    thread.start()
    ready.wait(60)
    if not started:
        raise RuntimeError("the daemon did not start") from (failed[0] if failed else None)
    live = started[0]
    try:
        yield live
    finally:
        # A daemon that died on its own has nothing left to stop; its error is raised below.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(stop_requested[0].set, trio_token=live.token)
        thread.join(60)
        assert not thread.is_alive(), "the daemon did not stop"
        if failed:
            raise failed[0]
