"""Blobs as files under ``data_dir/blobs``, written atomically (temp file + fsync + rename).

A blob is written to ``.{name}.{random}.tmp`` beside its final path and renamed over it only once
complete and fsynced, so readers never see a partial file. Every failure path removes the temp file
under a shielded cancel scope: a cancelled upload leaves nothing, not even an empty directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import trio

from vox.blobs.base import DEFAULT_CHUNK_SIZE, BlobReader, validate_key
from vox.errors import BlobError, BlobNotFound, PayloadTooLarge

T = TypeVar("T")

# Incoming chunks (often a few KiB from the network) are gathered up to this size before a write,
# so a 25 MiB upload costs tens of thread hops instead of thousands.
_WRITE_BUFFER = 1024 * 1024

# A concurrent delete may prune a directory between our mkdir and our open; trying again is safe.
_CREATE_ATTEMPTS = 3


class LocalBlobStore:
    def __init__(self, root: Path, *, limiter: trio.CapacityLimiter | None = None) -> None:
        self.root = root
        self._limiter = limiter

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    # -- writing ---------------------------------------------------------------------------------

    def _create_temp(self, path: Path) -> tuple[Path, BinaryIO]:
        last: OSError | None = None
        for _ in range(_CREATE_ATTEMPTS):
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                self._make_dirs(path.parent)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError as exc:
                last = exc
                continue
            return tmp, os.fdopen(fd, "wb")
        raise BlobError(f"cannot create {path.parent}: {last}")

    def _make_dirs(self, directory: Path) -> None:
        # One level at a time: mkdir(parents=True) would give the intermediate levels the umask's
        # mode instead of 0700.
        current = self.root
        for part in directory.relative_to(self.root).parts:
            current = current / part
            with contextlib.suppress(FileExistsError):
                current.mkdir(mode=0o700)

    def _commit(self, file: BinaryIO, tmp: Path, path: Path) -> None:
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(tmp, path)
        # The rename is only durable once the directory entry is on disk too. Best effort: the blob
        # is already in place, and some filesystems cannot fsync a directory.
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _discard(self, file: BinaryIO, tmp: Path) -> None:
        with contextlib.suppress(OSError):
            file.close()
        # Never raises: it runs while another exception (or a cancellation) is on its way out.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
            self._prune(tmp.parent)

    def _prune(self, directory: Path) -> None:
        """Remove now-empty directories up to (not including) the root."""
        root = self.root.resolve()
        current = directory.resolve()
        while current != root and root in current.parents:
            try:
                current.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            current = current.parent

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        await self._io(key, self._put_sync, path, data)

    def _put_sync(self, path: Path, data: bytes) -> None:
        tmp, file = self._create_temp(path)
        try:
            file.write(data)
            self._commit(file, tmp, path)
        except BaseException:
            self._discard(file, tmp)
            raise

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str,
        *,
        max_bytes: int,
    ) -> int:
        path = self._path(key)
        tmp, file = await self._io(key, self._create_temp, path)
        committed = False
        try:
            written = 0
            pending = bytearray()
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise PayloadTooLarge(f"larger than {max_bytes} bytes", max_bytes=max_bytes)
                pending += chunk
                if len(pending) >= _WRITE_BUFFER:
                    data, pending = bytes(pending), bytearray()
                    await self._io(key, file.write, data)
            if pending:
                await self._io(key, file.write, bytes(pending))
            # Not abandoned on cancel: once the rename has started it finishes, and `committed`
            # tells the cleanup below whether there is anything left to remove.
            await self._io(key, self._commit, file, tmp, path)
            committed = True
            return written
        finally:
            if not committed:
                # Shielded so that a cancelled upload still removes its temp file.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._discard, file, tmp, limiter=self._limiter)

    async def _io(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file work in a thread; OSError becomes BlobError naming the key."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except OSError as exc:
            raise BlobError(f"cannot write blob {key!r}: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await trio.to_thread.run_sync(path.read_bytes, limiter=self._limiter)
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {key!r}: {exc}") from exc

    async def open_stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobReader:
        path = self._path(key)
        try:
            file, size = await trio.to_thread.run_sync(self._open_sync, path, limiter=self._limiter)
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {key!r}: {exc}") from exc

        def read(n: int) -> bytes:
            try:
                return file.read(n)
            except OSError as exc:
                raise BlobError(f"cannot read blob {key!r}: {exc}") from exc

        return BlobReader(read, file.close, size=size, chunk_size=chunk_size, limiter=self._limiter)

    @staticmethod
    def _open_sync(path: Path) -> tuple[BinaryIO, int]:
        file = path.open("rb")
        try:
            size = os.fstat(file.fileno()).st_size
        except BaseException:
            file.close()
            raise
        return file, size

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        return await trio.to_thread.run_sync(path.is_file, limiter=self._limiter)

    # -- deleting --------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: Iterable[str]) -> None:
        paths = [self._path(key) for key in keys]
        if paths:
            await trio.to_thread.run_sync(self._delete_sync, paths, limiter=self._limiter)

    def _delete_sync(self, paths: list[Path]) -> None:
        failures: list[str] = []
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures.append(f"{path.relative_to(self.root)}: {exc}")
                continue
            try:
                self._prune(path.parent)
            except OSError as exc:
                failures.append(f"{path.parent.relative_to(self.root)}: {exc}")
        if failures:
            raise BlobError("cannot delete blobs: " + "; ".join(failures))

    # -- housekeeping ----------------------------------------------------------------------------

    async def ping(self) -> None:
        if not await trio.to_thread.run_sync(self.root.is_dir, limiter=self._limiter):
            raise BlobError(f"blob directory {self.root} is missing")

    def describe(self) -> str:
        return "local"
