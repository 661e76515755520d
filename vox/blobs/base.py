"""The blob store interface: attachments and emoji, local directory by default, S3 to scale out."""

from __future__ import annotations

from typing import Protocol


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """Raise BlobNotFound when the key does not exist."""
        ...

    async def delete(self, key: str) -> None: ...

    async def ping(self) -> None: ...

    def describe(self) -> str: ...
