"""The BlobStore contract, on the local directory and on a real S3-compatible server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio

from tests.blobs.conftest import Backend
from vox.errors import BlobError, BlobNotFound, PayloadTooLarge

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ per position, so a misplaced chunk shows up."""
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await trio.lowlevel.checkpoint()


async def test_put_get_overwrite(backend: Backend) -> None:
    store = backend.store
    await store.put("emoji/g1/e1.png", b"first", "image/png")
    assert await store.get("emoji/g1/e1.png") == b"first"
    await store.put("emoji/g1/e1.png", b"second", "image/png")
    assert await store.get("emoji/g1/e1.png") == b"second"
    assert await store.exists("emoji/g1/e1.png")


async def test_missing_blob(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(BlobNotFound):
        await store.get("attachments/c/m/nope.png")
    with pytest.raises(BlobNotFound):
        await store.open_stream("attachments/c/m/nope.png")
    assert not await store.exists("attachments/c/m/nope.png")
    await store.delete("attachments/c/m/nope.png")  # not an error
    await store.delete_many(["attachments/c/m/nope.png", "attachments/c/m/nope2.png"])
    assert await backend.leftovers() == []


async def test_streaming_put_large_in_chunks(backend: Backend) -> None:
    """~12 MiB in 64 KiB chunks: more than one S3 part, so the multipart path."""
    store = backend.store
    data = pattern(12 * MiB + 12345)
    key = "attachments/c1/m1/a1.bin"
    written = await store.put_stream(key, chunked(data), "application/zip", max_bytes=25 * MiB)
    assert written == len(data)
    assert await store.get(key) == data
    assert await store.exists(key)


async def test_streaming_put_small_and_empty(backend: Backend) -> None:
    store = backend.store
    assert await store.put_stream("a/small", chunked(b"hello"), "text/plain", max_bytes=5) == 5
    assert await store.get("a/small") == b"hello"
    assert await store.put_stream("a/empty", chunked(b""), "text/plain", max_bytes=5) == 0
    assert await store.get("a/empty") == b""


async def test_streaming_put_exactly_a_part(backend: Backend) -> None:
    """A multiple of the S3 part size leaves no empty last part."""
    data = pattern(16 * MiB, seed=3)
    assert await backend.store.put_stream("a/parts", chunked(data, MiB), "x/y", max_bytes=16 * MiB) == len(
        data
    )
    assert await backend.store.get("a/parts") == data


@pytest.mark.parametrize("size", [11 * MiB, 100])
async def test_too_large_stores_nothing(backend: Backend, size: int) -> None:
    store = backend.store
    with pytest.raises(PayloadTooLarge) as err:
        await store.put_stream("attachments/c/m/big.bin", chunked(pattern(size)), "x/y", max_bytes=size - 1)
    assert err.value.status == 413
    assert not await store.exists("attachments/c/m/big.bin")
    assert await backend.leftovers() == []


async def test_too_large_keeps_the_previous_blob(backend: Backend) -> None:
    store = backend.store
    await store.put("a/keep", b"old", "text/plain")
    with pytest.raises(PayloadTooLarge):
        await store.put_stream("a/keep", chunked(pattern(10 * MiB)), "x/y", max_bytes=9 * MiB)
    assert await store.get("a/keep") == b"old"


async def test_source_failure_mid_stream_stores_nothing(backend: Backend) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield pattern(9 * MiB)  # past the first S3 part: a multipart upload is open
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await backend.store.put_stream("attachments/c/m/x.bin", broken(), "x/y", max_bytes=25 * MiB)
    assert await backend.leftovers() == []


@pytest.mark.parametrize("before_block", [0, 64 * 1024, 9 * MiB])
async def test_cancellation_mid_stream_stores_nothing(backend: Backend, before_block: int) -> None:
    started = trio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        if before_block:
            yield pattern(before_block)
        started.set()
        await trio.sleep_forever()
        yield b"never"

    async with trio.open_nursery() as nursery:

        async def upload() -> None:
            await backend.store.put_stream("attachments/c/m/x.bin", stalls(), "x/y", max_bytes=25 * MiB)

        nursery.start_soon(upload)
        await started.wait()
        # Let the store finish writing what it has (a temp file, or the first S3 part) before the cancel.
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert await backend.leftovers() == []


async def test_streaming_read_in_chunks(backend: Backend) -> None:
    store = backend.store
    data = pattern(3 * MiB + 7, seed=9)
    await store.put_stream("a/read", chunked(data), "x/y", max_bytes=len(data))
    reader = await store.open_stream("a/read", chunk_size=MiB)
    assert reader.size == len(data)
    chunks = [chunk async for chunk in reader]
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= MiB
    assert len(chunks) >= 4
    # Stopping early and closing releases the reader; closing twice is fine.
    async with await store.open_stream("a/read", chunk_size=1000) as early:
        first = await early.__anext__()
        assert first == data[: len(first)]
    await early.aclose()
    assert [c async for c in early] == []


async def test_delete_and_delete_many(backend: Backend) -> None:
    store = backend.store
    keys = [f"attachments/c/m/{i}.txt" for i in range(5)]
    for key in keys:
        await store.put(key, key.encode(), "text/plain")
    await store.delete(keys[0])
    assert not await store.exists(keys[0])
    assert await store.exists(keys[1])
    await store.delete_many([*keys[1:], "attachments/c/m/missing.txt"])
    for key in keys:
        assert not await store.exists(key)
    await store.delete_many([])
    assert await backend.leftovers() == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a//b",
        "a/",
        ".hidden",
        "a/.tmp",
        "a\\b",
        "a b",
        "caf\u00e9",
        "a/b\x00",
        "x" * 1025,
    ],
)
async def test_invalid_keys_refused(backend: Backend, key: str) -> None:
    store = backend.store
    with pytest.raises(BlobError):
        await store.put(key, b"x", "text/plain")
    with pytest.raises(BlobError):
        await store.put_stream(key, chunked(b"x"), "text/plain", max_bytes=10)
    with pytest.raises(BlobError):
        await store.get(key)
    with pytest.raises(BlobError):
        await store.open_stream(key)
    with pytest.raises(BlobError):
        await store.exists(key)
    with pytest.raises(BlobError):
        await store.delete(key)
    with pytest.raises(BlobError):
        await store.delete_many(["ok/key", key])
    assert await backend.leftovers() == []


async def test_ping_and_describe(backend: Backend) -> None:
    await backend.store.ping()
    label = backend.store.describe()
    assert label.startswith(backend.name)
    assert "testing" not in label  # the test credentials never appear


async def test_concurrent_streams(backend: Backend) -> None:
    datas = [os.urandom(300_000 + i) for i in range(6)]

    async def one(i: int) -> None:
        await backend.store.put_stream(
            f"attachments/c/m/{i}", chunked(datas[i], 10_000), "x/y", max_bytes=MiB
        )

    async with trio.open_nursery() as nursery:
        for i in range(len(datas)):
            nursery.start_soon(one, i)
    for i, data in enumerate(datas):
        assert await backend.store.get(f"attachments/c/m/{i}") == data
