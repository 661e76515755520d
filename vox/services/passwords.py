"""Argon2id password hashing, always off the event loop and bounded in concurrency.

Each hash holds ``memory_kib`` of memory for ~16 ms; the limiter caps how many run at once so a
login flood queues instead of exhausting memory or worker threads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@dataclass(frozen=True)
class HashParams:
    time_cost: int = 2
    memory_kib: int = 19_456  # 19 MiB: the OWASP minimum for Argon2id
    parallelism: int = 1


@dataclass(frozen=True)
class Verified:
    ok: bool
    new_hash: str | None = None  # set when the stored hash used weaker parameters than configured


class Passwords:
    def __init__(self, params: HashParams, concurrency: int = 2) -> None:
        self._hasher = PasswordHasher(
            time_cost=params.time_cost, memory_cost=params.memory_kib, parallelism=params.parallelism
        )
        self._limiter = trio.CapacityLimiter(concurrency)
        # Verifying against this when a username does not exist keeps the timing the same, so
        # response time does not reveal which usernames exist.
        self._dummy = self._hasher.hash("vox-dummy-password")

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, stored: str | None, password: str) -> Verified:
        return await trio.to_thread.run_sync(self._verify_sync, stored, password, limiter=self._limiter)

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
