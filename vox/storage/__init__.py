"""Persistent storage: an Engine per SQL dialect, and the Store of queries over it.

    async with open_engine("sqlite:///vox-data/vox.db") as engine:
        await engine.migrate()
        store = Store(engine)

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``postgresql://...`` (or
``postgres://...``, any libpq URI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from vox.errors import ConfigError
from vox.storage.base import Conn, Engine, Row
from vox.storage.store import Store

__all__ = ["Conn", "Engine", "Row", "Store", "open_engine", "sqlite_path"]

_SQLITE_PREFIX = "sqlite:///"


def _sqlite_path(database_url: str) -> Path:
    rest = database_url[len(_SQLITE_PREFIX) :]
    # No percent-decoding or query string: the path is taken as written, which is what
    # f"sqlite:///{path}" produces for any path, spaces and '?' included.
    if not rest or rest.endswith("/"):
        raise ConfigError("database_url", "a sqlite URL needs a file path: sqlite:///path/to/vox.db")
    if rest == ":memory:" or rest.startswith("file:"):
        raise ConfigError(
            "database_url",
            "sqlite needs a file (readers and the writer are separate connections): sqlite:///path/to/vox.db",
        )
    return Path(rest)


def sqlite_path(database_url: str) -> Path | None:
    """The database file a ``sqlite:///`` URL names; None for another scheme."""
    if _scheme(database_url) != "sqlite":
        return None
    if not database_url.lower().startswith(_SQLITE_PREFIX):
        raise ConfigError("database_url", "use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return _sqlite_path(database_url)


def _scheme(database_url: str) -> str:
    head, sep, _ = database_url.partition("://")
    return head.lower() if sep else ""


@asynccontextmanager
async def open_engine(
    database_url: str, *, pool_size: int = 10, sqlite_synchronous: str = "full"
) -> AsyncIterator[Engine]:
    """Open the engine ``database_url`` names; close it when the block exits, however it exits.

    ``pool_size`` is the PostgreSQL connection pool's maximum (SQLite has one writer and a fixed
    set of readers); ``sqlite_synchronous`` is SQLite's durability level (full or normal). Raises
    ConfigError for a URL it cannot use and StorageError when the database cannot be opened. Does
    not migrate: call ``engine.migrate()``.
    """
    scheme = _scheme(database_url)
    engine: Engine
    path = sqlite_path(database_url)
    if path is not None:
        from vox.storage.sqlite import SQLiteEngine

        engine = await SQLiteEngine.open(path, synchronous=sqlite_synchronous)
    elif scheme in ("postgresql", "postgres"):
        # Imported here so that an embedded (SQLite) daemon never loads libpq.
        from vox.storage.postgres import PostgresEngine

        engine = await PostgresEngine.open(database_url, pool_size=pool_size)
    else:
        # The URL itself is not repeated: it may carry a password.
        shown = f"{scheme!r}" if scheme else "none"
        raise ConfigError(
            "database_url",
            f"unsupported scheme {shown}; use sqlite:///path/to/vox.db or postgresql://user@host/dbname",
        )
    try:
        yield engine
    finally:
        await engine.aclose()
