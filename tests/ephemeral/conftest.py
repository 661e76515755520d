from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from vox.ephemeral import Ephemeral, open_ephemeral


def _unique_prefix() -> str:
    # Redis is shared by concurrent test runs (and other suites): each test gets its own keys.
    return f"vox:test:eph:{uuid.uuid4().hex}:"


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis, emptied afterwards."""
    prefix = _unique_prefix()
    yield prefix
    _delete_prefix(redis_url, prefix)


@pytest.fixture(params=["memory", "redis"])
def ephemeral_target(request: pytest.FixtureRequest) -> tuple[str | None, str]:
    """(redis_url or None for the in-process store, key prefix)."""
    if request.param == "memory":
        return None, _unique_prefix()
    return str(request.getfixturevalue("redis_url")), str(request.getfixturevalue("redis_prefix"))


@pytest.fixture
async def ephemeral(ephemeral_target: tuple[str | None, str]) -> AsyncIterator[Ephemeral]:
    """Every Ephemeral contract test runs on both backends (Redis skipped, with the reason, if absent)."""
    url, prefix = ephemeral_target
    async with open_ephemeral(url, prefix=prefix) as store:
        yield store
