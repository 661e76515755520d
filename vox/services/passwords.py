"""Argon2id password hashing, always off the event loop and bounded in concurrency.

Each hash holds ``memory_kib`` of memory for ~16 ms; a fixed pool of threads caps how many run
at once, so a login flood queues instead of exhausting memory or worker threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

T = TypeVar("T")


@dataclass(frozen=True)
class HashParams:
    time_cost: int = 2
    memory_kib: int = 19_456  # 19 MiB: the OWASP minimum for Argon2id
    parallelism: int = 1


@dataclass(frozen=True)
class Verified:
    ok: bool
    new_hash: str | None = None  # set when the stored hash used weaker parameters than configured


HASH_THREAD_NICE = 19


def _lower_priority() -> None:
    # Hashing saturates every core it is given; at a lower scheduling priority it still uses
    # all idle CPU, but the event loop thread preempts it, so gateway latency does not suffer.
    tid = threading.get_native_id()
    try:
        # SCHED_IDLE (Linux): run only when no normal thread wants the CPU.
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, tid, HASH_THREAD_NICE)


class Passwords:
    """Owns a small pool of low-priority threads (one per core by default) that do all hashing."""

    def __init__(self, params: HashParams, concurrency: int | None = None) -> None:
        self._hasher = PasswordHasher(
            time_cost=params.time_cost, memory_cost=params.memory_kib, parallelism=params.parallelism
        )
        workers = concurrency or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vox-argon2", initializer=_lower_priority)
        # Verifying against this when a username does not exist keeps the timing the same, so
        # response time does not reveal which usernames exist.
        self._dummy = self._hasher.hash("vox-dummy-password")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        # A cancelled request leaves its hash to finish in the pool; the result is dropped.
        await done.wait()
        return future.result()

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> Verified:
        return await self._run(self._verify_sync, stored, password)

    def _verify_sync(self, stored: str | None, password: str) -> Verified:
        if stored is None:
            with contextlib.suppress(VerificationError):
                self._hasher.verify(self._dummy, password)
            return Verified(ok=False)
        try:
            self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return Verified(ok=False)
        if self._hasher.check_needs_rehash(stored):
            return Verified(ok=True, new_hash=self._hasher.hash(password))
        return Verified(ok=True)
