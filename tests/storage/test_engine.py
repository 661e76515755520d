from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
import trio

from tests.storage.helpers import NOW, add_user, new_id
from vox.errors import IntegrityError, StorageError
from vox.storage import Conn, Engine


def count(conn: Conn, table: str) -> int:
    return int(conn.fetchval(f"SELECT COUNT(*) FROM {table}"))


async def test_rows_are_dicts_and_helpers_behave(engine: Engine) -> None:
    def fn(conn: Conn) -> None:
        assert (
            conn.execute("INSERT INTO server_settings (key, value) VALUES (:k, :v)", {"k": "a", "v": '"1"'})
            == 1
        )
        conn.executemany(
            "INSERT INTO server_settings (key, value) VALUES (:k, :v)",
            [{"k": "b", "v": '"2"'}, {"k": "c", "v": '"3"'}],
        )
        assert conn.fetchone("SELECT key, value FROM server_settings WHERE key = :k", {"k": "a"}) == {
            "key": "a",
            "value": '"1"',
        }
        assert conn.fetchone("SELECT key FROM server_settings WHERE key = 'zzz'") is None
        assert conn.fetchval("SELECT value FROM server_settings WHERE key = 'zzz'") is None
        assert conn.fetchval("SELECT COUNT(*) FROM server_settings") == 3
        assert conn.execute("UPDATE server_settings SET value = '0' WHERE key <> :k", {"k": "a"}) == 2
        rows = conn.fetchall("SELECT key FROM server_settings ORDER BY key")
        assert rows == [{"key": "a"}, {"key": "b"}, {"key": "c"}]

    await engine.write(fn)


async def test_percent_literals_and_casts_pass_through(engine: Engine) -> None:
    def fn(conn: Conn) -> dict[str, object] | None:
        conn.execute("INSERT INTO server_settings (key, value) VALUES ('100%', '50% off')")
        return conn.fetchone(
            "SELECT key, value, 'a:b' AS colon FROM server_settings"
            " WHERE value LIKE '%' || :word || '%' AND key LIKE '1%'",
            {"word": "off"},
        )

    assert await engine.write(fn) == {"key": "100%", "value": "50% off", "colon": "a:b"}


async def test_booleans_and_bigints_round_trip(engine: Engine) -> None:
    big = (1 << 62) | 1

    def fn(conn: Conn) -> dict[str, object] | None:
        user_id = add_user(conn, "bits", mfa_enabled=True)
        guild_id = new_id()
        conn.execute(
            "INSERT INTO guilds (id, name, owner_id, created_at) VALUES (:id, 'g', :u, :now)",
            {"id": guild_id, "u": user_id, "now": NOW},
        )
        conn.execute(
            "INSERT INTO guild_roles (id, guild_id, name, permissions, is_default, created_at)"
            " VALUES (:id, :g, '@everyone', :p, TRUE, :now)",
            {"id": new_id(), "g": guild_id, "p": big, "now": NOW},
        )
        return conn.fetchone(
            "SELECT u.mfa_enabled, u.disabled, r.permissions, r.is_default"
            " FROM users u JOIN guild_roles r ON r.guild_id = :g WHERE u.id = :u",
            {"g": guild_id, "u": user_id},
        )

    row = await engine.write(fn)
    assert row is not None
    assert (bool(row["mfa_enabled"]), bool(row["disabled"]), bool(row["is_default"])) == (True, False, True)
    assert row["permissions"] == big


async def test_exception_rolls_back_every_write(engine: Engine) -> None:
    class Boom(Exception):
        pass

    def fn(conn: Conn) -> None:
        add_user(conn, "first")
        conn.execute("INSERT INTO server_settings (key, value) VALUES ('k', 'v')")
        add_user(conn, "second")
        raise Boom

    with pytest.raises(Boom):
        await engine.write(fn)

    assert await engine.read(lambda c: count(c, "users")) == 0
    assert await engine.read(lambda c: count(c, "server_settings")) == 0


async def test_duplicate_key_raises_integrity_error_and_writes_nothing(engine: Engine) -> None:
    await engine.write(lambda c: add_user(c, "Alice"))

    def fn(conn: Conn) -> None:
        add_user(conn, "bob")
        add_user(conn, "alice")  # same username_lower as "Alice"

    with pytest.raises(IntegrityError) as caught:
        await engine.write(fn)

    driver_error = sqlite3.IntegrityError if engine.dialect == "sqlite" else psycopg.IntegrityError
    assert isinstance(caught.value.__cause__, driver_error)
    names = await engine.read(lambda c: c.fetchall("SELECT username FROM users"))
    assert names == [{"username": "Alice"}]
    # The engine is still usable after the failed transaction.
    await engine.write(lambda c: add_user(c, "carol"))


async def test_foreign_keys_are_enforced_and_cascade(engine: Engine) -> None:
    def orphan(conn: Conn) -> None:
        conn.execute(
            "INSERT INTO sessions (id, user_id, refresh_hash, created_at, last_used_at, expires_at)"
            " VALUES (:id, :u, 'h', 0, 0, 0)",
            {"id": new_id(), "u": new_id()},
        )

    with pytest.raises(IntegrityError):
        await engine.write(orphan)

    def with_session(conn: Conn) -> str:
        user_id = add_user(conn, "dave")
        conn.execute(
            "INSERT INTO sessions (id, user_id, refresh_hash, created_at, last_used_at, expires_at)"
            " VALUES (:id, :u, 'h', 0, 0, 0)",
            {"id": new_id(), "u": user_id},
        )
        return user_id

    user_id = await engine.write(with_session)
    await engine.write(lambda c: c.execute("DELETE FROM users WHERE id = :u", {"u": user_id}))
    assert await engine.read(lambda c: count(c, "sessions")) == 0


async def test_check_constraints_raise_integrity_error(engine: Engine) -> None:
    with pytest.raises(IntegrityError):
        await engine.write(lambda c: add_user(c, "eve", auth_method="saml"))


async def test_concurrent_writers_lose_no_updates(engine: Engine) -> None:
    await engine.write(
        lambda c: (
            c.execute("CREATE TABLE test_counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)"),
            c.execute("CREATE TABLE test_rows (writer INTEGER NOT NULL, i INTEGER NOT NULL)"),
            c.execute("INSERT INTO test_counter (id, n) VALUES (1, 0)"),
        )
    )
    writers, rounds = 20, 25

    async def writer(w: int) -> None:
        for i in range(rounds):

            def fn(conn: Conn, i: int = i) -> None:
                conn.execute("UPDATE test_counter SET n = n + 1 WHERE id = 1")
                conn.execute("INSERT INTO test_rows (writer, i) VALUES (:w, :i)", {"w": w, "i": i})

            await engine.write(fn)

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, w)

    assert await engine.read(lambda c: c.fetchval("SELECT n FROM test_counter WHERE id = 1")) == 500
    assert await engine.read(lambda c: count(c, "test_rows")) == writers * rounds
    distinct = await engine.read(
        lambda c: c.fetchval("SELECT COUNT(*) FROM (SELECT DISTINCT writer, i FROM test_rows) AS d")
    )
    assert distinct == writers * rounds


async def test_reads_run_concurrently_with_each_other(engine: Engine) -> None:
    await engine.write(lambda c: add_user(c, "reader"))
    results: list[int] = []

    async def reader() -> None:
        results.append(await engine.read(lambda c: count(c, "users")))

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(reader)
    assert results == [1] * 30


async def test_reads_are_not_blocked_by_an_open_write(engine: Engine) -> None:
    # WAL on SQLite, MVCC on PostgreSQL: a reader sees the last commit while a writer works.
    wrote, read_done = threading.Event(), threading.Event()
    seen: list[int] = []

    def slow_write(conn: Conn) -> bool:
        add_user(conn, "pending")
        wrote.set()
        return read_done.wait(timeout=10)

    async def reader() -> None:
        await trio.to_thread.run_sync(wrote.wait)
        seen.append(await engine.read(lambda c: count(c, "users")))
        read_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        assert await engine.write(slow_write), "the read waited for the write to finish"

    assert seen == [0]
    assert await engine.read(lambda c: count(c, "users")) == 1


async def test_read_transactions_cannot_write(engine: Engine) -> None:
    with pytest.raises(StorageError):
        await engine.read(lambda c: add_user(c, "sneaky"))
    assert await engine.read(lambda c: count(c, "users")) == 0


async def test_sql_errors_become_storage_errors(engine: Engine) -> None:
    with pytest.raises(StorageError) as caught:
        await engine.read(lambda c: c.fetchall("SELECT nope FROM nowhere"))
    assert not isinstance(caught.value, IntegrityError)
    with pytest.raises(StorageError):
        await engine.read(lambda c: c.fetchall("SELECT :missing AS x", {}))


async def test_async_transaction_function_is_rejected(engine: Engine) -> None:
    async def not_sync(conn: Conn) -> None:
        pass

    with pytest.raises(TypeError, match="synchronous"):
        _ = await engine.write(not_sync)


async def test_conn_is_dead_after_its_transaction(engine: Engine) -> None:
    leaked = await engine.read(lambda c: c)
    with pytest.raises(StorageError, match="only valid inside"):
        leaked.fetchval("SELECT 1")


async def test_ping_and_describe(engine: Engine) -> None:
    await engine.ping()
    assert engine.describe().startswith(engine.dialect)


async def test_closed_engine_refuses_work(database_url: str) -> None:
    from vox.storage import open_engine

    async with open_engine(database_url) as engine:
        pass
    with pytest.raises(StorageError, match="closed"):
        await engine.read(lambda c: c.fetchval("SELECT 1"))
    await engine.aclose()  # idempotent
