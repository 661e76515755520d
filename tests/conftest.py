from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import backends


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL pointing at a fresh, empty schema (dropped afterwards)."""
    reason = backends.postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    schema, url = backends.make_pg_schema()
    try:
        yield url
    finally:
        backends.drop_pg_schema(schema)


@pytest.fixture
def redis_url() -> str:
    reason = backends.redis_skip_reason()
    if reason:
        pytest.skip(reason)
    return backends.REDIS_URL


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage contract test runs on both engines."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vox.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture(params=["memory", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str | None:
    """Every broker contract test runs on both backends (None selects the in-process broker)."""
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("redis_url"))
