"""Emoji rules without a daemon: names, the multipart form, and that an upload whose insert does
not happen (refused, failed or cancelled) leaves no blob behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from vox.blobs import LocalBlobStore
from vox.errors import APIError, Conflict, Forbidden, NotFound, PayloadTooLarge, StorageError, ValidationError
from vox.protocol.permissions import ALL_PERMISSIONS
from vox.pubsub import open_broker
from vox.services.emoji import EmojiForm, EmojiService, read_emoji_form, validate_emoji_name
from vox.services.uploads import PNG
from vox.storage.emoji import EmojiRefused, NewEmoji

IMAGE = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
GUILD = "11111111-1111-4111-8111-111111111111"
USER = "22222222-2222-4222-8222-222222222222"


@pytest.mark.parametrize("name", ["ok", "a_b", "Z9", "x" * 32, "__", "PartyParrot_2"])
def test_good_names(name: str) -> None:
    assert validate_emoji_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "x" * 33, "a-b", "a b", "é_a", ":ab:", "ab\n", "ab.", "\uff21b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_emoji_name(name)
    assert "name" in info.value.extra["fields"]


def form(*parts: tuple[str, str | None, bytes], boundary: str = "xyz") -> tuple[list[bytes], str]:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    # Small chunks: the reader must not depend on how the body is cut.
    return [body[i : i + 7] for i in range(0, len(body), 7)], f"multipart/form-data; boundary={boundary}"


async def chunks_of(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def read(*parts: tuple[str, str | None, bytes]) -> EmojiForm:
    pieces, content_type = form(*parts)
    return await read_emoji_form(chunks_of(pieces), content_type)


async def test_form_in_any_order_ignoring_other_fields() -> None:
    got = await read(("image", "x.gif", IMAGE), ("note", None, b"hi"), ("name", None, b"blob_cat"))
    assert got == EmojiForm("blob_cat", IMAGE, PNG)


@pytest.mark.parametrize(
    ("parts", "error", "field"),
    [
        ([("name", None, b"cat")], ValidationError, "image"),
        ([("image", "a.png", IMAGE)], ValidationError, "name"),
        ([("name", None, b"c"), ("image", "a.png", IMAGE)], ValidationError, "name"),
        (
            [("name", None, b"cat"), ("name", None, b"dog"), ("image", "a.png", IMAGE)],
            ValidationError,
            "name",
        ),
        ([("name", None, b"cat"), ("image", "a", IMAGE), ("image", "b", IMAGE)], ValidationError, "image"),
        ([("name", None, b"cat"), ("image", "a.png", b"")], ValidationError, "image"),
        ([("name", None, b"x" * 300), ("image", "a.png", IMAGE)], PayloadTooLarge, None),
        ([("name", None, b"cat"), ("image", "a.png", IMAGE + b"\x00" * 256 * 1024)], PayloadTooLarge, None),
    ],
)
async def test_bad_forms(
    parts: list[tuple[str, str | None, bytes]], error: type[APIError], field: str | None
) -> None:
    with pytest.raises(error) as info:
        await read(*parts)
    if field is not None:
        assert field in info.value.extra["fields"]


class _Access:
    def permissions(self) -> int:
        return ALL_PERMISSIONS


class _Permissions:
    async def member_access(self, user_id: str, guild_id: str) -> _Access:
        return _Access()


class _Store:
    """An emoji store whose insert does what a test tells it to."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.started = trio.Event()

    async def name_taken(self, guild_id: str, name: str) -> bool:
        return False

    async def count(self, guild_id: str) -> int:
        return 0

    async def create(self, new: NewEmoji, max_per_guild: int) -> Any:
        self.started.set()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if self.outcome == "hang":
            await trio.sleep_forever()
        return self.outcome


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (EmojiRefused.NAME_TAKEN, Conflict),
        (EmojiRefused.LIMIT, Forbidden),
        (EmojiRefused.NO_GUILD, NotFound),
        (StorageError("database went away"), StorageError),
    ],
)
async def test_refused_or_failed_insert_removes_the_blob(
    tmp_path: Path, outcome: Any, error: type[Exception]
) -> None:
    blobs = LocalBlobStore(tmp_path)
    async with open_broker(None) as broker:
        service = EmojiService(_Store(outcome), _Permissions(), blobs, broker)  # type: ignore[arg-type]
        with pytest.raises(error):
            await service.create(USER, GUILD, EmojiForm("cat", IMAGE, PNG))
    assert files(tmp_path) == []


async def test_cancelled_insert_removes_the_blob(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    store = _Store("hang")
    async with open_broker(None) as broker:
        service = EmojiService(store, _Permissions(), blobs, broker)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.create, USER, GUILD, EmojiForm("cat", IMAGE, PNG))
            await store.started.wait()
            assert len(files(tmp_path)) == 1  # stored before the insert
            nursery.cancel_scope.cancel()
    assert files(tmp_path) == []
