"""The scale-out engine: PostgreSQL through psycopg 3 (sync) and a psycopg_pool.ConnectionPool.

psycopg's async API needs asyncio, so under trio each transaction function runs in a worker
thread with a pooled synchronous connection (about 0.26 ms a query on the reference machine).
The thread limiter has as many tokens as the pool has connections, so a thread never waits
inside the pool, where trio could not cancel it; waiting happens in trio instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from vox.errors import IntegrityError, StorageError
from vox.storage import migrations
from vox.storage.base import Dialect, Params, Row
from vox.threads import run_in_thread

__all__ = ["PostgresConn", "PostgresEngine", "describe_url", "translate_placeholders"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Everything that may contain a ':' or '%' which is not a placeholder is matched as a whole and
# kept (with '%' doubled, because psycopg scans the entire query text for '%' placeholders).
_TOKENS = re.compile(
    r"""
      (?P<keep>
          (?<![A-Za-z0-9_$])[eE]'(?:[^'\\]|\\.|'')*'       # E'...' string, backslash escapes
        | '(?:[^']|'')*'                                   # '...' string
        | "(?:[^"]|"")*"                                   # "quoted identifier"
        | --[^\n]*                                         # line comment
        | /\*.*?\*/                                        # block comment
        | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?\$(?P=tag)\$   # $tag$ ... $tag$
        | ::                                               # type cast
      )
    | :(?P<name>[A-Za-z_][A-Za-z0-9_]*)                    # placeholder
    | %                                                    # literal percent sign
    """,
    re.VERBOSE | re.DOTALL,
)


def _replace(match: re.Match[str]) -> str:
    if match.group("keep") is not None:
        return match.group("keep").replace("%", "%%")
    name = match.group("name")
    if name is not None:
        return f"%({name})s"
    return "%%"


def translate_placeholders(sql: str) -> str:
    """Rewrite ``:name`` placeholders as psycopg's ``%(name)s`` and escape literal ``%``.

    ``::type`` casts, string literals, quoted identifiers, comments and dollar-quoted bodies are
    left alone (apart from doubling their ``%``), as SQLite leaves them alone.
    """
    return _TOKENS.sub(_replace, sql)


def describe_url(url: str) -> str:
    """``postgres (user@host:port/dbname)``: enough for logs, never the password or options."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgres"
    host = str(info.get("host") or "localhost")
    port = info.get("port")
    user = info.get("user")
    where = f"{host}:{port}" if port else host
    if user:
        where = f"{user}@{where}"
    dbname = info.get("dbname")
    if dbname:
        where = f"{where}/{dbname}"
    return f"postgres ({where})"


def translate_error(exc: psycopg.Error) -> StorageError:
    """The Vox exception for a driver error (the caller raises it ``from exc``)."""
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityError(str(exc))
    return StorageError(f"postgres: {exc}")


# Settings under which a COMMIT can return before its WAL reaches disk, so a 201 could be lost
# in a server crash. Vox never changes them; an operator (role, database or URL options) might.
_DURABILITY_SETTINGS = {"synchronous_commit": "off", "fsync": "off"}


def _probe(url: str, timeout: float) -> list[str]:
    """Connect once; return the settings that weaken durability (empty when none do)."""
    with psycopg.connect(url, connect_timeout=max(1, round(timeout))) as db:
        db.execute("SELECT 1")
        unsafe: list[str] = []
        for name, bad in _DURABILITY_SETTINGS.items():
            row = db.execute(f"SHOW {name}").fetchone()
            if row is not None and str(row[0]).lower() == bad:
                unsafe.append(f"{name}={bad}")
        return unsafe


def _reject_awaitable(result: object) -> None:
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError("a transaction function must be synchronous (it runs in a worker thread)")


class PostgresConn:
    """The Conn handed to a transaction function; dead once the transaction ends.

    After a statement fails, PostgreSQL refuses every further statement of the transaction, so
    a transaction function cannot catch IntegrityError and carry on: use ON CONFLICT instead.
    """

    dialect: Dialect = "postgres"

    def __init__(self, cursor: psycopg.Cursor[Row], translate: Callable[[str], str]) -> None:
        self._cursor: psycopg.Cursor[Row] | None = cursor
        self._translate = translate

    def _live(self) -> psycopg.Cursor[Row]:
        if self._cursor is None:
            raise StorageError("a Conn is only valid inside its transaction function")
        return self._cursor

    def _end(self) -> None:
        self._cursor = None

    def _run(self, sql: str, params: Params) -> psycopg.Cursor[Row]:
        cursor = self._live()
        try:
            # Always pass a mapping, so psycopg always un-doubles the '%' that translation doubled.
            cursor.execute(self._translate(sql), params if params is not None else {})
        except psycopg.Error as exc:
            raise translate_error(exc) from exc
        return cursor

    def execute(self, sql: str, params: Params = None) -> int:
        return self._run(sql, params).rowcount

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        cursor = self._live()
        try:
            cursor.executemany(self._translate(sql), params)
        except psycopg.Error as exc:
            raise translate_error(exc) from exc

    def fetchone(self, sql: str, params: Params = None) -> Row | None:
        cursor = self._run(sql, params)
        try:
            return cursor.fetchone()
        except psycopg.Error as exc:
            raise translate_error(exc) from exc

    def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        cursor = self._run(sql, params)
        try:
            return cursor.fetchall()
        except psycopg.Error as exc:
            raise translate_error(exc) from exc

    def fetchval(self, sql: str, params: Params = None) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else next(iter(row.values()))

    def executescript(self, sql: str) -> None:
        # Without parameters psycopg uses the simple query protocol, which accepts several
        # statements in one string and leaves '%' and ':' alone.
        cursor = self._live()
        try:
            cursor.execute(sql)
        except psycopg.Error as exc:
            raise translate_error(exc) from exc


class PostgresEngine:
    """An Engine over a PostgreSQL database. Create with ``await PostgresEngine.open(url)``."""

    dialect: Dialect = "postgres"

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], pool_size: int, description: str) -> None:
        self._pool = pool
        self._limiter = trio.CapacityLimiter(pool_size)
        self._description = description
        # Per engine rather than per module: SQL text is bounded by the code, but a caller that
        # formats values into SQL must not grow memory without limit.
        self._translate: Callable[[str], str] = functools.lru_cache(maxsize=1024)(translate_placeholders)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10, connect_timeout: float = 10.0) -> PostgresEngine:
        """Open the pool and wait until its first connection works (StorageError otherwise)."""
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        description = describe_url(url)
        try:
            # One plain connection first: when the server is unreachable or refuses us, libpq's
            # reason (which never includes the password) beats the pool's bare PoolTimeout.
            unsafe = await trio.to_thread.run_sync(_probe, url, connect_timeout)
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {description}: {exc}") from exc
        if unsafe:
            log.warning(
                "postgres: acknowledged writes may be lost in a server crash",
                extra={"fields": {"database": description, "settings": ",".join(unsafe)}},
            )
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            name="vox",
        )
        try:
            await trio.to_thread.run_sync(functools.partial(pool.open, wait=True, timeout=connect_timeout))
        except BaseException as exc:
            with trio.CancelScope(shield=True):  # also when cancelled: the pool owns threads
                await trio.to_thread.run_sync(pool.close)
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"cannot connect to {description}: {exc}") from exc
            raise
        return cls(pool, pool_size, description)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the storage engine is closed")

    async def read(self, fn: Callable[[PostgresConn], T]) -> T:
        self._check_open()
        return await run_in_thread(self._run_sync, fn, True, limiter=self._limiter)

    async def write(self, fn: Callable[[PostgresConn], T]) -> T:
        self._check_open()
        return await run_in_thread(self._run_sync, fn, False, limiter=self._limiter)

    def _run_sync(self, fn: Callable[[PostgresConn], T], read_only: bool) -> T:
        try:
            with self._pool.connection() as db:
                # Only changes the BEGIN psycopg sends (BEGIN READ ONLY): no extra round trip.
                db.read_only = read_only
                with db.transaction(), db.cursor(row_factory=dict_row) as cursor:
                    conn = PostgresConn(cursor, self._translate)
                    try:
                        result = fn(conn)
                        _reject_awaitable(result)
                    finally:
                        conn._end()
                return result
        except psycopg.Error as exc:  # PoolTimeout included
            raise translate_error(exc) from exc

    async def migrate(self) -> int:
        self._check_open()
        return await migrations.migrate(self)

    async def schema_version(self) -> int:
        self._check_open()
        return await migrations.schema_version(self)

    async def ping(self) -> None:
        self._check_open()
        await trio.to_thread.run_sync(self._ping_sync, limiter=self._limiter)

    def _ping_sync(self) -> None:
        try:
            # A short timeout: a health check must answer "down" quickly, not after 30 s.
            with self._pool.connection(timeout=5.0) as db:
                db.execute("SELECT 1")
        except psycopg.Error as exc:  # PoolTimeout included
            raise translate_error(exc) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: owners close in a finally that usually runs under cancellation (shutdown).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close)

    def describe(self) -> str:
        return self._description
