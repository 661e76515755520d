from __future__ import annotations

import pytest
import trio

from vox.errors import SchemaError
from vox.storage import Conn, Engine, open_engine
from vox.storage.migrations import DIALECTS, Migration, load_migrations, migrate
from vox.storage.sqlite import split_script

TABLES = {
    "schema_migrations",
    "users",
    "sessions",
    "system_admins",
    "elevated_sessions",
    "guilds",
    "guild_members",
    "guild_roles",
    "guild_member_roles",
    "channel_categories",
    "channels",
    "dm_recipients",
    "channel_overrides",
    "messages",
    "file_attachments",
    "reactions",
    "user_devices",
    "one_time_keys",
    "oidc_providers",
    "invites",
    "guild_bans",
    "friendships",
    "guild_emoji",
    "audit_log",
    "server_settings",
}


def table_names(conn: Conn) -> set[str]:
    if conn.dialect == "sqlite":
        rows = conn.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = conn.fetchall(
            "SELECT table_name AS name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    return {r["name"] for r in rows}


def newest(engine: Engine) -> int:
    return load_migrations(engine.dialect)[-1].version


async def test_migrate_from_empty(database_url: str) -> None:
    async with open_engine(database_url) as engine:
        assert await engine.schema_version() == 0
        assert await engine.read(table_names) == set()

        version = await engine.migrate()

        assert version == newest(engine) == await engine.schema_version()
        assert await engine.read(table_names) >= TABLES
        rows = await engine.read(lambda c: c.fetchall("SELECT version, name FROM schema_migrations"))
        assert sorted((r["version"], r["name"]) for r in rows) == [
            (m.version, m.name) for m in load_migrations(engine.dialect)
        ]


async def test_migrate_again_is_a_no_op(engine: Engine) -> None:
    sql = "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
    before = await engine.read(lambda c: c.fetchall(sql))
    tables = await engine.read(table_names)

    assert await engine.migrate() == newest(engine)

    assert await engine.read(lambda c: c.fetchall(sql)) == before
    assert await engine.read(table_names) == tables


async def test_newer_schema_is_refused(engine: Engine) -> None:
    future = newest(engine) + 1
    await engine.write(
        lambda c: c.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, 'from_the_future', 0)",
            {"v": future},
        )
    )

    with pytest.raises(SchemaError, match="upgrade Vox"):
        await engine.migrate()
    assert await engine.schema_version() == future


async def test_failed_migration_leaves_nothing_behind(engine: Engine) -> None:
    current = newest(engine)
    broken = Migration(
        current + 1,
        "broken",
        "CREATE TABLE half_done (a INTEGER);\nINSERT INTO no_such_table (a) VALUES (1);\n",
    )

    with pytest.raises(SchemaError, match="broken"):
        await migrate(engine, [*load_migrations(engine.dialect), broken])  # type: ignore[arg-type]

    assert await engine.schema_version() == current
    assert "half_done" not in await engine.read(table_names)


async def test_new_migration_is_applied_once(engine: Engine) -> None:
    extra = Migration(
        newest(engine) + 1,
        "extra",
        "CREATE TABLE extra (a INTEGER);\n-- a comment; with a semicolon\nINSERT INTO extra (a) VALUES (7);",
    )
    known = [*load_migrations(engine.dialect), extra]

    assert await migrate(engine, known) == extra.version  # type: ignore[arg-type]
    assert await migrate(engine, known) == extra.version  # type: ignore[arg-type]

    assert await engine.read(lambda c: c.fetchall("SELECT a FROM extra")) == [{"a": 7}]


async def test_daemons_starting_together_migrate_once(database_url: str) -> None:
    versions: list[int] = []

    async def start() -> None:
        async with open_engine(database_url) as engine:
            versions.append(await engine.migrate())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(start)

    async with open_engine(database_url) as engine:
        expected = newest(engine)
        count = await engine.read(lambda c: c.fetchval("SELECT COUNT(*) FROM schema_migrations"))
    assert versions == [expected] * 3
    assert count == expected


def test_migration_files_are_consistent() -> None:
    loaded = {d: load_migrations(d) for d in DIALECTS}
    for migrations in loaded.values():
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert all(m.sql.strip() for m in migrations)
    assert len({tuple((m.version, m.name) for m in ms) for ms in loaded.values()}) == 1


def test_split_script_keeps_trigger_bodies_strings_and_comments_whole() -> None:
    script = """
    -- leading comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT 'semi;colon');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN
        INSERT INTO b VALUES (new.x);
        DELETE FROM c;
    END;
    /* block; comment */
    SELECT 1
    """
    statements = split_script(script)

    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'semi;colon');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2].endswith("*/\n    SELECT 1")


def test_split_script_passes_an_unfinished_statement_on() -> None:
    # SQLite must see it, so that the migration fails with its syntax error.
    assert split_script("SELECT 1; CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;") == [
        "SELECT 1;",
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;",
    ]
