"""Blobs as files under ``data_dir/blobs``, written atomically (temp file + rename)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

import trio

from vox.errors import BlobError, BlobNotFound

# Keys are built by Vox (e.g. attachments/{channel}/{message}/{uuid}.png); anything else is refused
# so a key can never climb out of the root.
_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
            raise BlobError(f"invalid blob key {key!r}")
        return self.root / key

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        await trio.to_thread.run_sync(self._put_sync, path, data)

    @staticmethod
    def _put_sync(path: Path, data: bytes) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    async def get(self, key: str) -> bytes:
        path = trio.Path(self._path(key))
        try:
            return await path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await trio.Path(self._path(key)).unlink()

    async def ping(self) -> None:
        if not await trio.Path(self.root).is_dir():
            raise BlobError(f"blob directory {self.root} is missing")

    def describe(self) -> str:
        return "local"
