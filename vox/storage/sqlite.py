"""The embedded engine: one SQLite file in WAL mode.

SQLite allows one writer at a time, so writes share a single connection behind a
``trio.CapacityLimiter(1)`` and queue in trio (cheaply, and cancellably while they wait) instead of
spinning on SQLITE_BUSY inside threads. WAL lets readers run beside the writer, so reads use a
small pool of their own connections, marked ``query_only`` so that read-intent code cannot write.
Connections are opened with ``check_same_thread=False`` because each transaction function runs in
whichever worker thread trio hands it; the limiters guarantee one thread per connection at a time.
"""

from __future__ import annotations

import inspect
import logging
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from vox.errors import IntegrityError, StorageError
from vox.storage import migrations
from vox.storage.base import Dialect, Params, Row
from vox.threads import run_in_thread

__all__ = ["SYNCHRONOUS_LEVELS", "SQLiteConn", "SQLiteEngine", "split_script"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# PRAGMA synchronous values by name, as SQLite reports them back (0 OFF, 1 NORMAL, 2 FULL). OFF is
# not offered: an OS crash or power loss could then corrupt the file, not only lose recent commits.
SYNCHRONOUS_LEVELS: dict[str, int] = {"normal": 1, "full": 2}


def translate_error(exc: sqlite3.Error) -> StorageError:
    """The Vox exception for a driver error (the caller raises it ``from exc``)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(str(exc))
    return StorageError(f"sqlite: {exc}")


def split_script(sql: str) -> list[str]:
    """Split a script into complete statements.

    ``sqlite3.complete_statement`` runs SQLite's own tokenizer, so a ``;`` inside a string, a
    comment or a trigger's BEGIN ... END body does not end a statement.
    """
    statements: list[str] = []
    pending = ""
    *pieces, tail = sql.split(";")
    for piece in pieces:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    # What is left is whitespace, comments, a last statement without its ";", or one that never
    # completes; the last must still reach SQLite so that it reports the syntax error.
    statements.append((pending + tail).strip())
    return [s for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    """False for a piece made only of whitespace, comments and semicolons."""
    return _strip_comments(statement).strip(" \t\r\n;") != ""


def _strip_comments(sql: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(sql):
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = len(sql) if end < 0 else end + 2
        elif sql[i] in "'\"":
            end = sql.find(sql[i], i + 1)
            end = len(sql) if end < 0 else end + 1
            out.append(sql[i:end])
            i = end
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


def _bind(params: Params) -> dict[str, Any]:
    # sqlite3 binds named parameters only from a real dict.
    if params is None:
        return {}
    return params if isinstance(params, dict) else dict(params)


def _reject_awaitable(result: object) -> None:
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError("a transaction function must be synchronous (it runs in a worker thread)")


class SQLiteConn:
    """The Conn handed to a transaction function; dead once the transaction ends."""

    dialect: Dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db: sqlite3.Connection | None = db

    def _live(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("a Conn is only valid inside its transaction function")
        return self._db

    def _end(self) -> None:
        self._db = None

    def _run(self, sql: str, params: Params) -> sqlite3.Cursor:
        try:
            return self._live().execute(sql, _bind(params))
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    def execute(self, sql: str, params: Params = None) -> int:
        cursor = self._run(sql, params)
        try:
            return cursor.rowcount
        finally:
            cursor.close()

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        try:
            self._live().executemany(sql, [_bind(p) for p in params]).close()
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    def fetchone(self, sql: str, params: Params = None) -> Row | None:
        cursor = self._run(sql, params)
        try:
            row: Row | None = cursor.fetchone()
            return row
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        finally:
            # Finalise the statement now rather than leave it holding a read cursor open.
            cursor.close()

    def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        cursor = self._run(sql, params)
        try:
            rows: list[Row] = cursor.fetchall()
            return rows
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        finally:
            cursor.close()

    def fetchval(self, sql: str, params: Params = None) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else next(iter(row.values()))

    def executescript(self, sql: str) -> None:
        # sqlite3's own executescript() COMMITs an open transaction first, which would break the
        # one-transaction-per-migration rule, so run the statements one by one instead.
        for statement in split_script(sql):
            self.execute(statement)


def _prepare_path(path: Path) -> None:
    """Create missing parent directories (0700) and the database file (0600) before SQLite does.

    Existing directories and files keep the permissions their owner gave them. SQLite creates
    the -wal and -shm files with the database file's permissions.
    """
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        directory.chmod(0o700)  # mkdir's mode is filtered through the umask
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _connect(path: Path, *, busy_timeout_ms: int, query_only: bool, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit BEGINs from the sqlite3 module; the engine issues its own.
    db = sqlite3.connect(
        path,
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        db.row_factory = _dict_row
        db.execute("PRAGMA foreign_keys = ON")
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # WAL mode. NORMAL: a COMMIT only writes the WAL (the OS page cache holds it, so a killed
        # process loses nothing), and fsyncs happen at checkpoints; a power loss or OS crash can
        # drop the last acknowledged commits (never corrupt the file). FULL: a COMMIT also fsyncs
        # the WAL before it returns, so an acknowledged write survives a power loss too.
        db.execute(f"PRAGMA synchronous = {SYNCHRONOUS_LEVELS[synchronous]}")
        if query_only:
            db.execute("PRAGMA query_only = ON")
    except BaseException:
        db.close()
        raise
    return db


def _switch_to_wal(db: sqlite3.Connection, path: Path, busy_timeout_ms: int) -> None:
    # Switching the journal mode needs an exclusive lock, and SQLite answers SQLITE_BUSY at once
    # (without calling the busy handler) while another process is opening the same new file. Daemons
    # that start together race here, so the switch is retried until the busy timeout runs out.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            transient = "locked" in str(exc) or "busy" in str(exc)
            if not transient or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    if mode is None or str(next(iter(mode.values()))).lower() != "wal":
        raise StorageError(f"sqlite: cannot switch {path} to WAL mode (got {mode})")


class SQLiteEngine:
    """An Engine over one SQLite database file. Create with ``await SQLiteEngine.open(path)``."""

    dialect: Dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        readers: list[sqlite3.Connection],
        synchronous: str = "full",
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer = writer
        self._write_limiter = trio.CapacityLimiter(1)
        self._all_readers = list(readers)
        # The read limiter has one token per reader, so a thread holding a token always finds an
        # idle connection in the queue.
        self._idle_readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        for reader in readers:
            self._idle_readers.put(reader)
        self._read_limiter = trio.CapacityLimiter(len(readers))
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readers: int = 4,
        busy_timeout_ms: int = 5000,
        synchronous: str = "full",
    ) -> SQLiteEngine:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}")
        return await trio.to_thread.run_sync(cls._open_sync, path, readers, busy_timeout_ms, synchronous)

    @classmethod
    def _open_sync(
        cls, given: str | os.PathLike[str], readers: int, busy_timeout_ms: int, synchronous: str
    ) -> SQLiteEngine:
        # Absolute, so that a later chdir cannot point the engine at another file.
        path = Path(given).expanduser().absolute()
        opened: list[sqlite3.Connection] = []
        try:
            _prepare_path(path)
            writer = _connect(
                path, busy_timeout_ms=busy_timeout_ms, query_only=False, synchronous=synchronous
            )
            opened.append(writer)
            _switch_to_wal(writer, path, busy_timeout_ms)
            for _ in range(readers):
                opened.append(
                    _connect(path, busy_timeout_ms=busy_timeout_ms, query_only=True, synchronous=synchronous)
                )
        except BaseException as exc:
            for db in opened:
                db.close()
            if isinstance(exc, sqlite3.Error):
                raise translate_error(exc) from exc
            if isinstance(exc, OSError):
                raise StorageError(f"sqlite: cannot open {path}: {exc}") from exc
            raise
        return cls(path, opened[0], opened[1:], synchronous)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the storage engine is closed")

    async def read(self, fn: Callable[[SQLiteConn], T]) -> T:
        self._check_open()
        return await run_in_thread(self._read_sync, fn, limiter=self._read_limiter)

    async def write(self, fn: Callable[[SQLiteConn], T]) -> T:
        self._check_open()
        return await run_in_thread(self._write_sync, fn, limiter=self._write_limiter)

    def _read_sync(self, fn: Callable[[SQLiteConn], T]) -> T:
        db = self._idle_readers.get_nowait()
        try:
            # Deferred BEGIN: the snapshot is taken at the first read, and stays for the whole fn.
            return self._transaction(db, "BEGIN", fn)
        finally:
            self._idle_readers.put(db)

    def _write_sync(self, fn: Callable[[SQLiteConn], T]) -> T:
        # IMMEDIATE takes the write lock up front, so a transaction never fails half-way with
        # SQLITE_BUSY when it upgrades from reading to writing (another process may hold it).
        return self._transaction(self._writer, "BEGIN IMMEDIATE", fn)

    @staticmethod
    def _transaction(db: sqlite3.Connection, begin: str, fn: Callable[[SQLiteConn], T]) -> T:
        try:
            db.execute(begin)
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        conn = SQLiteConn(db)
        try:
            result = fn(conn)
            _reject_awaitable(result)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("sqlite: ROLLBACK failed")
            if isinstance(exc, sqlite3.Error):
                raise translate_error(exc) from exc
            raise
        finally:
            conn._end()
        return result

    async def migrate(self) -> int:
        self._check_open()
        return await migrations.migrate(self)

    async def schema_version(self) -> int:
        self._check_open()
        return await migrations.schema_version(self)

    async def ping(self) -> None:
        value = await self.read(lambda conn: conn.fetchval("SELECT 1"))
        if value != 1:
            raise StorageError(f"sqlite: ping returned {value!r}")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: owners close in a finally that usually runs under cancellation (shutdown).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        for reader in self._all_readers:
            reader.close()
        try:
            # Recommended before closing a long-lived connection: refreshes planner statistics
            # where they matter, and is cheap when nothing changed.
            self._writer.execute("PRAGMA optimize")
        except sqlite3.Error:
            log.warning("sqlite: PRAGMA optimize failed", exc_info=True)
        # The last connection to close checkpoints the WAL back into the database file.
        self._writer.close()

    async def pragma(self, name: str) -> Any:
        """The writer connection's value of ``PRAGMA name`` (what its commits actually run with)."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        self._check_open()

        def read() -> Any:
            row = self._writer.execute(f"PRAGMA {name}").fetchone()
            return None if row is None else next(iter(row.values()))

        return await run_in_thread(read, limiter=self._write_limiter)

    def describe(self) -> str:
        return f"sqlite ({self.path}, synchronous={self.synchronous})"
