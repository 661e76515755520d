"""Numbered schema migrations, shared by both engines.

Files live in the package (``vox/storage/migrations/``): ``NNNN_name.sql`` runs on every
dialect, ``sqlite/NNNN_name.sql`` and ``postgres/NNNN_name.sql`` where the dialects differ. A
version is either common or present, under the same name, in both dialect folders, and versions
run 1, 2, 3 ... without gaps. Each migration runs in its own write transaction together with its
row in ``schema_migrations``, so a failed migration leaves nothing behind and the next start
retries it. On PostgreSQL every migration transaction first takes a transaction-scoped advisory
lock, so daemons starting together apply each migration once; on SQLite ``BEGIN IMMEDIATE``
already serialises writers across processes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Protocol, TypeVar

from vox.errors import SchemaError, StorageError
from vox.storage.base import Conn, Dialect

__all__ = [
    "Migration",
    "ScriptConn",
    "ScriptEngine",
    "load_migrations",
    "migrate",
    "schema_version",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgres")

# Any fixed 64-bit number works; this one spells "voxmigr" so it is recognisable in pg_locks.
_PG_LOCK_KEY = 0x766F786D696772

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


class ScriptConn(Conn, Protocol):
    """A Conn that can also run a whole migration file (several statements, no parameters)."""

    def executescript(self, sql: str) -> None: ...


class ScriptEngine(Protocol):
    """What the migration runner needs from an engine."""

    dialect: Dialect

    async def read(self, fn: Callable[[Conn], T]) -> T: ...

    async def write(self, fn: Callable[[ScriptConn], T]) -> T: ...


def _sql_files(folder: Traversable) -> dict[int, Migration]:
    found: dict[int, Migration] = {}
    if not folder.is_dir():
        return found
    for entry in folder.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        match = _FILENAME.match(entry.name)
        if match is None:
            raise SchemaError(f"migration file {entry.name!r} is not named NNNN_lower_case_name.sql")
        version = int(match.group(1))
        if version in found:
            raise SchemaError(f"two migration files have version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return found


def load_migrations(dialect: Dialect) -> list[Migration]:
    """The migrations for ``dialect`` in version order; SchemaError if the files are inconsistent."""
    root = resources.files("vox.storage").joinpath("migrations")
    common = _sql_files(root)
    per_dialect = {d: _sql_files(root.joinpath(d)) for d in DIALECTS}
    for version in sorted(set().union(*per_dialect.values())):
        present = [per_dialect[d].get(version) for d in DIALECTS]
        if version in common:
            raise SchemaError(f"migration {version} is both common and dialect-specific")
        if any(m is None for m in present):
            raise SchemaError(f"migration {version} must exist for every dialect: {', '.join(DIALECTS)}")
        if len({m.name for m in present if m is not None}) != 1:
            raise SchemaError(f"migration {version} has different names in the dialect folders")
    chosen = {**common, **per_dialect[dialect]}
    versions = sorted(chosen)
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migration versions must run 1, 2, 3 ... without gaps; found {versions}")
    return [chosen[v] for v in versions]


def _lock(conn: Conn) -> None:
    if conn.dialect == "postgres":
        conn.fetchval("SELECT pg_advisory_xact_lock(:key)", {"key": _PG_LOCK_KEY})


def _table_exists(conn: Conn) -> bool:
    if conn.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    else:
        # to_regclass follows search_path, like the unqualified names in the migrations.
        sql = "SELECT 1 WHERE to_regclass('schema_migrations') IS NOT NULL"
    return conn.fetchval(sql) is not None


def _current_version(conn: Conn) -> int:
    if not _table_exists(conn):
        return 0
    return int(conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


def _check_not_newer(version: int, newest: int) -> None:
    if version > newest:
        raise SchemaError(
            f"the database schema is at version {version}, newer than the newest this Vox knows "
            f"({newest}); upgrade Vox to run against this database"
        )


async def schema_version(engine: ScriptEngine) -> int:
    """The highest applied migration version, 0 for an empty database."""
    return await engine.read(_current_version)


async def migrate(engine: ScriptEngine, migrations: Sequence[Migration] | None = None) -> int:
    """Apply pending migrations in order and return the schema version. Idempotent.

    ``migrations`` defaults to the packaged files for the engine's dialect (tests pass their own).
    """
    known = list(migrations) if migrations is not None else load_migrations(engine.dialect)
    newest = known[-1].version if known else 0

    def prepare(conn: ScriptConn) -> set[int]:
        _lock(conn)
        conn.execute(_CREATE_TABLE)
        applied = {int(r["version"]) for r in conn.fetchall("SELECT version FROM schema_migrations")}
        _check_not_newer(max(applied, default=0), newest)
        return applied

    applied = await engine.write(prepare)
    for migration in known:
        if migration.version in applied:
            continue
        if await engine.write(_applier(migration, newest)):
            log.info("applied migration %s", migration.label)
    return await schema_version(engine)


def _applier(migration: Migration, newest: int) -> Callable[[ScriptConn], bool]:
    def apply(conn: ScriptConn) -> bool:
        _lock(conn)
        # Another daemon may have applied it (or a newer schema) since prepare() looked.
        _check_not_newer(_current_version(conn), newest)
        done = conn.fetchval(
            "SELECT 1 FROM schema_migrations WHERE version = :version", {"version": migration.version}
        )
        if done is not None:
            return False
        try:
            conn.executescript(migration.sql)
        except StorageError as exc:
            raise SchemaError(f"migration {migration.label} failed: {exc}") from exc
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :now)",
            {"version": migration.version, "name": migration.name, "now": time.time_ns() // 1_000_000},
        )
        return True

    return apply
