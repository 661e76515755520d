"""What only the local store does: temp files beside the target, modes, empty directories pruned."""

from __future__ import annotations

import functools
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.blobs.test_contract import chunked, pattern
from vox.blobs import LocalBlobStore
from vox.errors import PayloadTooLarge


async def test_files_are_private_and_complete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    await store.put_stream("attachments/c/m/a.png", chunked(pattern(3_000_000)), "image/png", max_bytes=10**7)
    path = tmp_path / "attachments/c/m/a.png"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "attachments").stat().st_mode) == 0o700
    assert path.read_bytes() == pattern(3_000_000)


async def test_partial_write_is_never_visible(tmp_path: Path) -> None:
    """While a stream is being written only a dot-named temp file exists, never the final name."""
    store = LocalBlobStore(tmp_path)
    halfway = trio.Event()
    resume = trio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield pattern(2_000_000)  # more than the write buffer: bytes reach the temp file
        halfway.set()
        await resume.wait()
        yield b"tail"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(store.put_stream, "a/b.bin", slow(), "x/y", max_bytes=10**7))
        await halfway.wait()
        await trio.sleep(0.1)
        names = [p.name for p in (tmp_path / "a").iterdir()]
        assert len(names) == 1 and names[0].startswith(".b.bin.") and names[0].endswith(".tmp")
        assert not await store.exists("a/b.bin")
        resume.set()
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]
    assert (tmp_path / "a/b.bin").read_bytes() == pattern(2_000_000) + b"tail"


async def test_failure_keeps_other_files_and_the_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    await store.put("attachments/c/m1/keep.txt", b"keep", "text/plain")
    with pytest.raises(PayloadTooLarge):
        await store.put_stream("attachments/c/m2/x.bin", chunked(b"x" * 100), "x/y", max_bytes=10)
    # m2 (empty) is pruned, c (still holding m1) and the root are kept.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "attachments",
        "attachments/c",
        "attachments/c/m1",
        "attachments/c/m1/keep.txt",
    ]
    await store.delete("attachments/c/m1/keep.txt")
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.is_dir()
    await store.ping()


async def test_ping_fails_without_the_directory(tmp_path: Path) -> None:
    from vox.errors import BlobError

    with pytest.raises(BlobError):
        await LocalBlobStore(tmp_path / "missing").ping()
