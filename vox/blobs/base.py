"""The blob store interface: attachments and emoji, local directory by default, S3 to scale out.

Keys are built by Vox (``attachments/{channel_id}/{message_id}/{uuid}.{ext}``), never taken from a
client, and ``validate_key`` refuses anything else so that no key can climb out of the local root
or collide with a store's own temporary names (which start with a dot).

Every backend keeps the same promises, checked by the contract tests in tests/blobs/:

- ``put`` and ``put_stream`` are atomic: a reader sees the old blob (or none) until the new one is
  complete; a failure, a cancellation or ``PayloadTooLarge`` leaves nothing behind.
- ``get`` and ``open_stream`` raise ``BlobNotFound`` for a missing key; every other backend failure
  is a ``BlobError``.
- Blocking work (files, HTTP to S3) runs in worker threads, never on the trio event loop.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Callable, Iterable
from types import TracebackType
from typing import Protocol

import trio

from vox.errors import BlobError

# Downloads are read in pieces of this size so serving a 25 MiB file holds 256 KiB at a time.
DEFAULT_CHUNK_SIZE = 256 * 1024

# S3's own limit on key length; a local path under it stays well within PATH_MAX.
MAX_KEY_LENGTH = 1024

# A segment may not start with a dot: that excludes "." and ".." and keeps the local store's
# temporary files (".name.random.tmp") out of reach of every key.
_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")


def validate_key(key: str) -> str:
    """Return the key unchanged, or raise BlobError when it is not one Vox would build."""
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise BlobError(f"invalid blob key {key[:80]!r}")
    return key


class BlobReader:
    """A blob being read in chunks, each read in a worker thread.

    Async-iterable (one pass) and an async context manager; reaching the end closes it, and so does
    ``aclose`` (idempotent), which the owner must call when it stops early. It is a plain class
    rather than an async generator so that closing never depends on garbage collection.
    """

    def __init__(
        self,
        read: Callable[[int], bytes],
        close: Callable[[], object],
        *,
        size: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.size = size
        self._read = read
        self._close = close
        self._chunk_size = chunk_size
        self._limiter = limiter
        self._closed = False

    def __aiter__(self) -> BlobReader:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk = await trio.to_thread.run_sync(self._read, self._chunk_size, limiter=self._limiter)
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def read_all(self) -> bytes:
        """The rest of the blob in memory: only for blobs known to be small."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled download must still give back its file handle or HTTP connection.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close, limiter=self._limiter)

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store a small blob held in memory (emoji, avatars); atomic."""
        ...

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str,
        *,
        max_bytes: int,
    ) -> int:
        """Store the bytes of ``chunks`` without holding them all in memory; return the size.

        Raise PayloadTooLarge as soon as more than ``max_bytes`` arrive. On that, on any exception
        raised by ``chunks`` and on cancellation nothing is stored (an existing blob under the key
        is left as it was) and the exception propagates.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The whole blob in memory (small blobs only); raise BlobNotFound when it does not exist."""
        ...

    async def open_stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobReader:
        """Open a blob for reading in chunks; raise BlobNotFound before any byte is read.

        The caller owns the reader: iterate it to the end or ``aclose`` it (``async with``).
        """
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove a blob; a missing key is not an error."""
        ...

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several blobs (missing ones are not an error); raise BlobError if any remain."""
        ...

    async def ping(self) -> None:
        """Raise BlobError when the store is unusable (health check)."""
        ...

    def describe(self) -> str:
        """A short label for logs; never contains credentials."""
        ...
