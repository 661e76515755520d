"""Blob stores: ``open_blob_store(config)`` picks S3 when ``s3_bucket`` is set, else a local directory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import trio

from vox.blobs.base import DEFAULT_CHUNK_SIZE, BlobReader, BlobStore, validate_key
from vox.blobs.local import LocalBlobStore
from vox.config import Config
from vox.errors import ConfigError


def open_blob_store(config: Config) -> AbstractAsyncContextManager[BlobStore]:
    """The configured blob store, ready to use, released on exit."""
    return _open_blob_store(config)


@contextlib.asynccontextmanager
async def _open_blob_store(config: Config) -> AsyncIterator[BlobStore]:
    if config.s3_bucket:
        # Imported here so a local-only daemon never loads boto3 (slow to import, maybe absent).
        try:
            from vox.blobs.s3 import S3Settings, open_s3_blob_store
        except ImportError as exc:
            raise ConfigError(
                "s3_bucket", f"S3 storage needs boto3, which is not installed ({exc})"
            ) from None
        async with open_s3_blob_store(S3Settings.from_config(config)) as s3:
            yield s3
        return
    root = config.data_dir / "blobs"
    await trio.to_thread.run_sync(lambda: root.mkdir(mode=0o700, parents=True, exist_ok=True))
    yield LocalBlobStore(root)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BlobReader",
    "BlobStore",
    "LocalBlobStore",
    "open_blob_store",
    "validate_key",
]
