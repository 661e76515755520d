"""Serving stored blobs over HTTP: streamed in chunks, never sniffed, never run by a browser."""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Response

from vox.api import ctx
from vox.errors import BlobNotFound, NotFound


async def blob_response(key: str, *, content_type: str, disposition: str, cache_seconds: int) -> Response:
    """The blob at ``key`` as a streamed response; 404 when the blob is gone."""
    try:
        reader = await ctx().blobs.open_stream(key)
    except BlobNotFound:
        raise NotFound("file not found") from None

    async def body() -> AsyncIterator[bytes]:
        async with reader:
            async for chunk in reader:
                yield chunk

    return Response(
        body(),
        content_type=content_type,
        headers={
            "Content-Length": str(reader.size),
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": disposition,
            "Cache-Control": f"private, max-age={cache_seconds}",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )
