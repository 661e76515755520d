"""``vox backup`` / ``vox restore`` against a real daemon: online, consistent, and a way back.

A single client posts messages one after another while the backup runs, so commit order is send
order: a consistent copy holds exactly a prefix of them (every message acknowledged before the
backup started, then possibly a few more, never a gap).
"""

from __future__ import annotations

import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests import backends
from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.helpers import PASSWORD, bearer, channel_history, login, user_with_token
from tests.process import ready_urls, spawn_vox
from vox import datadir, dirlock
from vox.backup import BackupOptions, make_backup, restore_backup
from vox.backup.pg_dump import restore_command, split_password
from vox.config import Config
from vox.errors import BackupError, ConfigError
from vox.storage import open_engine

NO_RATE_LIMIT = "api=1000000/1"


async def _guild_channel(client: httpx.AsyncClient, token: str) -> str:
    guild = await client.post("/api/v1/guilds", json={"name": "Backup"}, headers=bearer(token))
    assert guild.status_code == 201, guild.text
    channels = await client.get(f"/api/v1/guilds/{guild.json()['id']}/channels", headers=bearer(token))
    return str(next(c["id"] for c in channels.json() if c["channel_type"] == "text"))


async def _post(client: httpx.AsyncClient, token: str, channel_id: str, content: str) -> str:
    response = await client.post(
        f"/api/v1/channels/{channel_id}/messages", json={"content": content}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _stored_contents(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in conn.execute("SELECT content FROM messages WHERE content LIKE 'm %'")]
    finally:
        conn.close()


async def _stop(daemon: Daemon) -> None:
    daemon.stop.set()
    with trio.fail_after(30):
        await daemon.done.wait()


async def _seed(daemon: Daemon, n: int) -> tuple[str, str, list[str]]:
    """A user, a channel and ``n`` messages; (token, channel id, contents)."""
    async with daemon.http() as client:
        _, token = await user_with_token(client, "keeper")
        channel_id = await _guild_channel(client, token)
        contents = [f"m {i:05d}" for i in range(n)]
        for content in contents:
            await _post(client, token, channel_id, content)
    return token, channel_id, contents


async def test_online_backup_under_writes_then_restore_and_serve(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    daemon = await start_daemon(nursery, tmp_path, rate_limits=NO_RATE_LIMIT)
    token, channel_id, contents = await _seed(daemon, 300)
    # An attachment, so that the backup has a blob to carry.
    async with daemon.http() as client:
        upload = await client.post(
            f"/api/v1/channels/{channel_id}/messages/upload",
            files={"file": ("note.txt", b"kept in a blob\n", "text/plain")},
            data={"content": "with a file"},
            headers=bearer(token),
        )
        assert upload.status_code == 201, upload.text
        attachment = upload.json()["attachments"][0]

    acked: list[str] = []
    writing = trio.Event()
    stop_writing = trio.Event()
    acked_at_start = 0
    acked_at_end = 0

    async def writer() -> None:
        async with daemon.http() as client:
            i = 0
            while not stop_writing.is_set():
                content = f"m w{i:05d}"
                await _post(client, token, channel_id, content)
                acked.append(content)
                i += 1
                if i == 5:
                    writing.set()

    dest = tmp_path / "backup"
    async with trio.open_nursery() as inner:
        inner.start_soon(writer)
        await writing.wait()
        acked_at_start = len(acked)
        # One page a step with a pause: the copy takes many steps while commits keep landing, which
        # would restart an unpinned backup over and over.
        options = BackupOptions(pages_per_step=1, pause_s=0.001)
        with trio.fail_after(60):
            # Abandoned on timeout: a copy that keeps restarting would never return.
            summary = await trio.to_thread.run_sync(
                make_backup, daemon.config, dest, options, abandon_on_cancel=True
            )
        acked_at_end = len(acked)
        stop_writing.set()
    assert acked_at_end > acked_at_start, "the writer was blocked while the backup ran"

    manifest = summary.manifest
    assert manifest.database == "sqlite" and manifest.blobs == "included"
    assert manifest.schema_version >= 1
    assert any(name.startswith("keys/jwt_") for name in manifest.files)
    assert any(name.startswith("blobs/attachments/") for name in manifest.files)
    assert sorted(p.name for p in dest.iterdir()) == ["blobs", "keys", "manifest.json", "vox.db"]
    assert not list(tmp_path.glob(".backup.partial-*"))
    backup_db = dest / "vox.db"
    assert (dest / "vox.db").stat().st_mode & 0o077 == 0
    conn = sqlite3.connect(f"file:{backup_db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        conn.close()
    stored = _stored_contents(backup_db)
    assert manifest.counts["messages"] == len(stored) + 1  # + the upload's message
    assert set(contents) <= set(stored)
    written = [c for c in stored if c.startswith("m w")]
    # A prefix of the sequential writer's messages: everything acknowledged before the backup
    # started, nothing that was not acknowledged by the time it ended, and no gap.
    assert written == acked[: len(written)], "the copy is not one consistent snapshot"
    assert acked_at_start <= len(written) <= acked_at_end

    # The way back: a fresh data dir, restored, then served.
    restored = tmp_path / "restored"
    config = Config(data_dir=restored)
    result = await trio.to_thread.run_sync(lambda: restore_backup(config, dest))
    assert result.database_path == restored / "vox.db" and result.replaced == []
    await _stop(daemon)
    again = await start_daemon(nursery, tmp_path / "second", data_dir=restored, rate_limits=NO_RATE_LIMIT)
    async with again.http() as client:
        # Same keys: the token the first daemon issued is still valid.
        history = await channel_history(client, channel_id, token)
        assert sorted(m["content"] for m in history if m["content"].startswith("m ")) == sorted(stored)
        fresh = await login(client, "keeper", PASSWORD)
        assert (await channel_history(client, channel_id, str(fresh["access_token"]))) == history
        blob = await client.get(attachment["url"], headers=bearer(token))
        assert blob.status_code == 200 and blob.content == b"kept in a blob\n"
    await _stop(again)


async def test_restore_refuses_a_running_daemon_and_keeps_what_it_replaces(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    daemon = await start_daemon(nursery, tmp_path)
    await _seed(daemon, 3)
    dest = tmp_path / "backup"
    await trio.to_thread.run_sync(make_backup, daemon.config, dest)
    with pytest.raises(BackupError, match="already exists"):
        make_backup(daemon.config, dest)

    with pytest.raises(ConfigError, match="running daemon"):
        restore_backup(daemon.config, dest, force=True)
    await _stop(daemon)
    data = daemon.config.data_dir
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(BackupError, match="--force"):
        restore_backup(daemon.config, dest)
    assert sorted(p.name for p in data.iterdir()) == before
    result = restore_backup(daemon.config, dest, force=True)
    assert {p.name.split(".replaced-")[0] for p in result.replaced} >= {
        "vox.db",
        "keys",
    }  # blobs: empty, so not in the way
    assert all(p.exists() for p in result.replaced)
    assert (data / "keys" / "server_secret").read_bytes() == (dest / "keys" / "server_secret").read_bytes()
    # A daemon cannot start while a restore holds the directory.
    with dirlock.exclusive(data), pytest.raises(ConfigError, match="vox restore"):
        await start_daemon(nursery, tmp_path)


def test_restore_rejects_a_damaged_backup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = data / "vox.db"
    # A minimal data dir: keys and an (empty-schema) database written by the engine itself.
    datadir.prepare(data)

    async def migrate() -> None:
        async with open_engine(f"sqlite:///{db}") as engine:
            await engine.migrate()

    trio.run(migrate)
    dest = tmp_path / "backup"
    make_backup(Config(data_dir=data), dest)
    target = Config(data_dir=tmp_path / "target")
    raw = bytearray((dest / "vox.db").read_bytes())
    raw[5000] ^= 0xFF
    (dest / "vox.db").write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="does not match the manifest"):
        restore_backup(target, dest)
    assert not (tmp_path / "target").exists() or not any((tmp_path / "target").iterdir())
    (dest / "vox.db").unlink()
    with pytest.raises(BackupError, match="missing"):
        restore_backup(target, dest)
    with pytest.raises(BackupError, match="not a Vox backup"):
        restore_backup(target, tmp_path)


def _vox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vox", *args], capture_output=True, text=True, timeout=120)


def test_cli_backup_and_restore(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = spawn_vox("--data-dir", str(data), stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert ready_urls(proc.stdout.readline()) is not None
        done = _vox("backup", str(tmp_path / "bk"), "--data-dir", str(data), "--no-blobs")
        assert done.returncode == 0, done.stderr
        assert "integrity ok" in done.stdout and "blobs: not included" in done.stdout
        refused = _vox("restore", str(tmp_path / "bk"), "--data-dir", str(data), "--force")
        assert refused.returncode == 2 and "running daemon" in refused.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    restored = _vox("restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "new"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "new" / "vox.db").is_file() and (tmp_path / "new" / "keys" / "server_secret").is_file()
    assert _vox("backup", str(tmp_path / "bk"), "--data-dir", str(data)).returncode == 2


@pytest.fixture
def pg_schema() -> Any:
    reason = backends.postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump / pg_restore (PostgreSQL client tools) not on PATH")
    schema, url = backends.make_pg_schema()
    try:
        yield schema, url
    finally:
        backends.drop_pg_schema(schema)


async def test_postgres_backup_with_pg_dump_and_back(
    nursery: trio.Nursery, tmp_path: Path, pg_schema: tuple[str, str]
) -> None:
    schema, url = pg_schema
    daemon = await start_daemon(nursery, tmp_path, database_url=url, rate_limits=NO_RATE_LIMIT)
    token, channel_id, contents = await _seed(daemon, 40)
    dest = tmp_path / "backup"
    summary = await trio.to_thread.run_sync(make_backup, daemon.config, dest)
    await _stop(daemon)
    manifest = summary.manifest
    assert manifest.database == "postgres" and manifest.counts["messages"] == 40
    assert (dest / "database.dump").stat().st_size > 0

    # Lose the database and the data dir; come back from the backup alone.
    backends.drop_pg_schema(schema)
    config = Config(data_dir=tmp_path / "restored", database_url=url)
    result = restore_backup(config, dest)
    assert result.pg_restore is not None and "password" not in result.pg_restore
    loaded = subprocess.run(shlex.split(result.pg_restore), capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    again = await start_daemon(nursery, tmp_path / "second", data_dir=config.data_dir, database_url=url)
    async with again.http() as client:
        history = await channel_history(client, channel_id, token)
    assert sorted(m["content"] for m in history) == contents
    await _stop(again)


def test_pg_dump_missing_gives_instructions_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://vox:s3cret-pw@db.example:5433/voxdb?options=-csearch_path%3Dtenant1"
    conninfo, password, schema = split_password(url)
    assert password == "s3cret-pw" and schema == "tenant1"
    assert "s3cret" not in conninfo and "host=db.example" in conninfo
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_dump to be found
    keys = tmp_path / "data" / "keys"
    keys.mkdir(parents=True)
    (keys / "server_secret").write_bytes(b"x" * 32)
    with pytest.raises(BackupError) as caught:
        make_backup(Config(data_dir=tmp_path / "data", database_url=url), tmp_path / "bk")
    text = str(caught.value)
    assert "pg_dump is not on PATH" in text and "--format=custom" in text and "--schema=tenant1" in text
    assert "s3cret" not in text
    assert not (tmp_path / "bk").exists() and not list(tmp_path.glob(".bk.partial-*"))
    assert "s3cret" not in restore_command(url, tmp_path / "database.dump")
