"""The storage interfaces: an Engine runs SQL on one dialect; a Store holds the queries.

SQL is written once, with named placeholders (``:name``) and a dict of parameters; each engine
translates to its driver's style. Work runs as a *transaction function*: a plain synchronous
function ``fn(conn) -> T`` that an engine runs in a worker thread inside one transaction
(the model of Synapse's ``runInteraction``), so one request costs one thread hop, the event loop
never blocks, and a failure anywhere in ``fn`` rolls back all of it.

Portable schema rules (see migrations/): ids are TEXT (UUID strings), times are BIGINT epoch
milliseconds, booleans are BOOLEAN (0/1 on SQLite, bool on PostgreSQL: read them with ``bool()``),
JSON is TEXT. Dialect-specific files live in migrations/sqlite/ and migrations/postgres/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")

Row = dict[str, Any]
Params = Mapping[str, Any] | None
Dialect = Literal["sqlite", "postgres"]


class Conn(Protocol):
    """One connection inside one transaction; only valid within the transaction function."""

    dialect: Dialect

    def execute(self, sql: str, params: Params = None) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None: ...

    def fetchone(self, sql: str, params: Params = None) -> Row | None: ...

    def fetchall(self, sql: str, params: Params = None) -> list[Row]: ...

    def fetchval(self, sql: str, params: Params = None) -> Any:
        """The first column of the first row, or None when there is no row."""
        ...


TxFn = Callable[[Conn], T]


class Engine(Protocol):
    """A database dialect behind a thread pool. Created by ``open_engine`` and closed by its owner."""

    dialect: Dialect

    async def read(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in a worker thread in a read-only-intent transaction (may run concurrently)."""
        ...

    async def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in a worker thread in one read-write transaction; roll back if it raises."""
        ...

    async def migrate(self) -> int:
        """Apply pending migrations in order; return the schema version. Idempotent."""
        ...

    async def schema_version(self) -> int: ...

    async def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        ...

    async def aclose(self) -> None: ...

    def describe(self) -> str:
        """A short human name for logs and /healthz, with no credentials (e.g. ``sqlite``)."""
        ...
