"""Durability levels: what the config says is what every connection commits with."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vox import config as config_mod
from vox.errors import ConfigError
from vox.storage import open_engine
from vox.storage.sqlite import SQLiteEngine

# PRAGMA synchronous reports a number: 1 NORMAL, 2 FULL.
LEVELS = {"normal": 1, "full": 2}


def test_default_is_full() -> None:
    assert config_mod.Config().sqlite_synchronous == "full"
    assert config_mod.load(env={}).sqlite_synchronous == "full"


def test_config_accepts_the_levels_and_rejects_others() -> None:
    assert config_mod.load(env={"VOX_SQLITE_SYNCHRONOUS": "normal"}).sqlite_synchronous == "normal"
    for bad in ("off", "FULL", "extra", ""):
        with pytest.raises(ConfigError) as caught:
            config_mod.load(env={"VOX_SQLITE_SYNCHRONOUS": bad})
        assert caught.value.key == "sqlite_synchronous"


async def test_open_engine_default_commits_with_full(tmp_path: Path) -> None:
    async with open_engine(f"sqlite:///{tmp_path / 'vox.db'}") as engine:
        assert isinstance(engine, SQLiteEngine)
        assert await engine.pragma("synchronous") == LEVELS["full"]
        assert await engine.pragma("journal_mode") == "wal"
        assert "synchronous=full" in engine.describe()


@pytest.mark.parametrize("level", sorted(LEVELS))
async def test_every_connection_uses_the_configured_level(tmp_path: Path, level: str) -> None:
    async with open_engine(f"sqlite:///{tmp_path / 'vox.db'}", sqlite_synchronous=level) as engine:
        assert isinstance(engine, SQLiteEngine)
        assert await engine.pragma("synchronous") == LEVELS[level]
        # Readers too: a reader that ends up checkpointing the WAL syncs at its own level.
        for _ in range(8):
            assert await engine.read(lambda c: c.fetchval("PRAGMA synchronous")) == LEVELS[level]


async def test_engine_refuses_unknown_levels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteEngine.open(tmp_path / "vox.db", synchronous="off")
    with pytest.raises(ValueError, match="pragma"):
        async with open_engine(f"sqlite:///{tmp_path / 'other.db'}") as engine:
            assert isinstance(engine, SQLiteEngine)
            await engine.pragma("synchronous; DROP TABLE x")


async def test_postgres_warns_when_commits_are_not_durable(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vox.storage.postgres")
    async with open_engine(pg_url, pool_size=1):
        pass
    assert not [r for r in caplog.records if "may be lost" in r.getMessage()]
    # synchronous_commit=off through the URL's options, as an operator might set it.
    unsafe = pg_url.replace("options=", "options=-csynchronous_commit%3Doff%20")
    assert unsafe != pg_url
    async with open_engine(unsafe, pool_size=1) as engine:
        assert await engine.read(lambda c: c.fetchval("SHOW synchronous_commit")) == "off"
    warned = [r for r in caplog.records if "may be lost" in r.getMessage()]
    assert len(warned) == 1
    assert getattr(warned[0], "fields", {})["settings"] == "synchronous_commit=off"


async def test_postgres_commits_before_write_returns(pg_url: str) -> None:
    """What a 201 waits for: engine.write returns only after COMMIT, so another connection sees it."""
    import psycopg

    async with open_engine(pg_url, pool_size=2) as engine:
        await engine.migrate()
        await engine.write(lambda c: c.execute("INSERT INTO server_settings (key, value) VALUES ('k', 'v')"))
        with psycopg.connect(pg_url) as other:
            row = other.execute("SELECT value FROM server_settings WHERE key = 'k'").fetchone()
        assert row == ("v",)
