from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vox.storage import Engine, open_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    """A migrated engine on each backend (sqlite file per test, postgres schema per test)."""
    async with open_engine(database_url) as engine:
        await engine.migrate()
        yield engine
