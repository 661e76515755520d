from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from vox.errors import ConfigError, StorageError
from vox.storage import Store, open_engine


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:hunter2@localhost/vox",
        "redis://localhost:6379/0",
        "postgresql+psycopg://u:hunter2@h/db",
        "vox.db",
        "",
        "sqlite://relative.db",
        "sqlite:///:memory:",
        "sqlite:///",
    ],
)
async def test_unusable_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        async with open_engine(url):
            pass
    assert caught.value.key == "database_url"
    assert "hunter2" not in str(caught.value)


async def test_sqlite_file_and_directory_permissions(tmp_path: Path) -> None:
    db = tmp_path / "data" / "nested" / "vox.db"
    tmp_mode = stat.S_IMODE(tmp_path.stat().st_mode)
    async with open_engine(f"sqlite:///{db}") as engine:
        await engine.migrate()
        await engine.write(lambda c: c.execute("INSERT INTO server_settings (key, value) VALUES ('a', '1')"))
        for path in [db, *db.parent.glob("vox.db-*")]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    # An existing directory is left as its owner made it.
    assert stat.S_IMODE(tmp_path.stat().st_mode) == tmp_mode


async def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_engine("sqlite:///rel/vox.db") as engine:
        assert await engine.migrate() >= 1
        assert str(tmp_path / "rel" / "vox.db") in engine.describe()
    assert (tmp_path / "rel" / "vox.db").is_file()


async def test_sqlite_engine_reopens_existing_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/vox.db"
    async with open_engine(url) as engine:
        version = await engine.migrate()
        await engine.write(lambda c: c.execute("INSERT INTO server_settings (key, value) VALUES ('a', '1')"))
    async with open_engine(url) as engine:
        assert await engine.schema_version() == version
        assert await engine.read(lambda c: c.fetchval("SELECT value FROM server_settings")) == "1"


async def test_postgres_scheme_alias(pg_url: str) -> None:
    url = "postgres://" + pg_url.removeprefix("postgresql://")
    async with open_engine(url, pool_size=2) as engine:
        assert engine.dialect == "postgres"
        await engine.ping()


async def test_unreachable_postgres_is_a_storage_error_without_password() -> None:
    with pytest.raises(StorageError) as caught:
        async with open_engine("postgresql://vox:hunter2@127.0.0.1:1/vox"):
            pass
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


async def test_engine_is_closed_when_the_block_raises(database_url: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with open_engine(database_url) as engine:
            raise Boom
    with pytest.raises(StorageError, match="closed"):
        await engine.ping()


async def test_sqlite_closes_under_cancellation(tmp_path: Path) -> None:
    db = tmp_path / "vox.db"
    with trio.move_on_after(0.2):
        async with open_engine(f"sqlite:///{db}") as engine:
            await engine.migrate()
            assert db.with_name("vox.db-wal").exists()
            await trio.sleep_forever()
    # Closing the last connection checkpoints the WAL and removes it: the close really ran.
    assert not db.with_name("vox.db-wal").exists()


async def test_store_wraps_an_engine(database_url: str) -> None:
    async with open_engine(database_url) as engine:
        store = Store(engine)
        assert store.engine is engine
        await store.ping()
        assert store.describe() == engine.describe()
