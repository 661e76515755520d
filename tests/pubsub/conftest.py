from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis


def unique(kind: str = "channel") -> str:
    """A topic no other test (or other test run on the shared Redis) uses."""
    return f"{kind}:{uuid.uuid4()}"


@pytest.fixture
def topic() -> str:
    return unique()


@pytest.fixture
def redis_admin(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client beside the broker under test, to look at Redis from outside."""
    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    try:
        yield client
    finally:
        client.close()


def our_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive, except trio's idle worker cache."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]
