"""Crash durability: ``kill -9`` of a daemon under write load loses no acknowledged message.

A client posts 2,000 messages, a few in flight at once, to a real ``vox serve`` subprocess and
SIGKILLs it after a random number of 201 answers (at least a few hundred). After a restart on the
same database, the channel history must hold every acknowledged message exactly once, with the id
its 201 carried, and nothing that was never sent; the database must then pass an integrity check.
Requests in flight at the kill may or may not have been stored; either way at most once.

The seed is printed (run with ``-s`` to see it); ``VOX_CRASH_SEED=N`` replays one run.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import trio

from tests import backends
from tests.e2e.helpers import PASSWORD, bearer, channel_history
from tests.process import ready_urls, spawn_vox

MESSAGES = 2000
IN_FLIGHT = 6
# Acknowledged messages before the kill: enough that a loss would show, few enough that the kill
# always lands while requests are still being sent.
KILL_AFTER = (300, 1400)
READY_TIMEOUT_S = 60.0
# Generous: the machine may be shared and slow.
SEND_TIMEOUT_S = 30.0


class Daemon:
    """One ``vox serve`` subprocess; its log goes to a file (a pipe nobody reads would fill up)."""

    def __init__(self, args: list[str], env: dict[str, str], log: IO[Any]) -> None:
        self.proc = spawn_vox(*args, env=env, stderr=log)
        self.rest = ""

    async def ready(self) -> str:
        assert self.proc.stdout is not None
        readline = self.proc.stdout.readline
        with trio.fail_after(READY_TIMEOUT_S):
            line = await trio.to_thread.run_sync(readline, abandon_on_cancel=True)
        urls = ready_urls(line)
        assert urls is not None, f"daemon did not start: {line!r} (exit {self.proc.poll()})"
        self.rest = urls["rest"]
        return self.rest

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(timeout=30) == 0
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(name, database URL): SQLite under the data dir, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path / 'data' / 'vox.db'}"
        return
    reason = backends.postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    schema, url = backends.make_pg_schema()
    try:
        yield "postgres", url
    finally:
        backends.drop_pg_schema(schema)


def _seed() -> int:
    given = os.environ.get("VOX_CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


async def _setup(rest: str) -> tuple[str, str]:
    """Register an owner, create a guild; (access token, id of its text channel)."""
    async with httpx.AsyncClient(base_url=rest, timeout=SEND_TIMEOUT_S) as client:
        response = await client.post(
            "/api/v1/auth/register", json={"username": "crash", "password": PASSWORD}
        )
        assert response.status_code == 201, response.text
        tokens = await client.post("/api/v1/auth/login", json={"username": "crash", "password": PASSWORD})
        assert tokens.status_code == 200, tokens.text
        token = str(tokens.json()["access_token"])
        guild = await client.post("/api/v1/guilds", json={"name": "Crash"}, headers=bearer(token))
        assert guild.status_code == 201, guild.text
        channels = await client.get(f"/api/v1/guilds/{guild.json()['id']}/channels", headers=bearer(token))
        assert channels.status_code == 200, channels.text
        text = next(c for c in channels.json() if c["channel_type"] == "text")
        return token, str(text["id"])


async def _send_until_killed(
    rest: str, token: str, channel_id: str, daemon: Daemon, seed: int
) -> tuple[dict[str, str], set[str], int]:
    """Post MESSAGES messages IN_FLIGHT at a time; SIGKILL the daemon after a random number of 201s.

    Returns (content -> id of every 201, every content sent, the kill threshold).
    """
    rng = random.Random(seed)
    kill_after = rng.randint(*KILL_AFTER)
    # A little later than the threshold answer, so the kill falls at a random point of a request.
    kill_delay = rng.uniform(0.0, 0.02)
    acked: dict[str, str] = {}
    attempted: set[str] = set()
    threshold = trio.Event()
    killed = trio.Event()
    next_index = iter(range(MESSAGES))
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)

    async def worker(client: httpx.AsyncClient) -> None:
        for index in next_index:
            if killed.is_set():
                return
            content = f"crash {seed} #{index:04d}"
            attempted.add(content)
            try:
                response = await client.post(
                    f"/api/v1/channels/{channel_id}/messages",
                    json={"content": content, "nonce": f"n{index}"},
                    headers=bearer(token),
                )
            except httpx.TransportError:
                assert killed.is_set(), "the daemon failed a request before it was killed"
                return
            assert response.status_code == 201, response.text
            body = response.json()
            assert body["content"] == content
            acked[content] = str(body["id"])
            if len(acked) >= kill_after:
                threshold.set()

    async def killer() -> None:
        await threshold.wait()
        await trio.sleep(kill_delay)
        daemon.proc.send_signal(signal.SIGKILL)
        killed.set()

    async with httpx.AsyncClient(base_url=rest, timeout=SEND_TIMEOUT_S, limits=limits) as client:
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                async with trio.open_nursery() as workers:
                    for _ in range(IN_FLIGHT):
                        workers.start_soon(worker, client)
                nursery.cancel_scope.cancel()
    assert killed.is_set(), f"all {MESSAGES} messages were sent before the kill (threshold {kill_after})"
    return acked, attempted, kill_after


async def _history(rest: str, channel_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=rest, timeout=SEND_TIMEOUT_S) as client:
        tokens = await client.post("/api/v1/auth/login", json={"username": "crash", "password": PASSWORD})
        assert tokens.status_code == 200, tokens.text
        return await channel_history(client, channel_id, str(tokens.json()["access_token"]))


def _sqlite_integrity(path: Path) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()


def _postgres_integrity(url: str, channel_id: str) -> str:
    """amcheck over every B-tree index of the schema when the extension can be had, plus row checks.

    Returns how the indexes were checked (for the test log).
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        schema = db.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        how = "row checks only (amcheck unavailable)"
        try:
            where = db.execute(
                "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'amcheck'"
            ).fetchone()
            if where is None:
                # Inside the test's own schema, so dropping the schema removes it again.
                db.execute(f'CREATE EXTENSION amcheck SCHEMA "{schema[0]}"')
                where = schema
        except psycopg.Error as exc:
            how = f"row checks only (amcheck: {exc})"
        else:
            indexes = db.execute(
                "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' "
                "AND c.relnamespace = current_schema()::regnamespace"
            ).fetchall()
            assert indexes, "no index found in the test schema"
            for (index,) in indexes:
                db.execute(f'SELECT "{where[0]}".bt_index_check(%s::regclass, true)', (index,))
            how = f"amcheck bt_index_check(heapallindexed) over {len(indexes)} indexes"
        # Rows of the crash channel: unique ids, each pointing at an existing channel and author.
        row = db.execute(
            "SELECT count(*), count(DISTINCT m.id), count(c.id), count(u.id) FROM messages m "
            "LEFT JOIN channels c ON c.id = m.channel_id LEFT JOIN users u ON u.id = m.user_id "
            "WHERE m.channel_id = %s",
            (channel_id,),
        ).fetchone()
        assert row is not None and row[0] == row[1] == row[2] == row[3], row
        return how


async def test_acknowledged_messages_survive_sigkill(tmp_path: Path, backend: tuple[str, str]) -> None:
    name, database_url = backend
    seed = _seed()
    print(f"crash durability ({name}): seed {seed} (replay with VOX_CRASH_SEED={seed})")
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "--database-url", database_url]
    # The api class limits one user to 600 requests a minute; this client sends far more.
    env = {"VOX_RATE_LIMITS": "api=1000000/1", "VOX_LOG_LEVEL": "warning"}
    with open(tmp_path / "first.log", "w") as log:
        first = Daemon(args, env, log)
        try:
            rest = await first.ready()
            token, channel_id = await _setup(rest)
            acked, attempted, kill_after = await _send_until_killed(rest, token, channel_id, first, seed)
            assert first.proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if first.proc.poll() is None:
                first.proc.kill()
                first.proc.wait()
    print(f"killed after {len(acked)} acknowledged of {len(attempted)} sent (threshold {kill_after})")
    assert len(acked) >= kill_after

    with open(tmp_path / "second.log", "w") as log:
        second = Daemon(args, {**env, "VOX_LOG_LEVEL": "info"}, log)
        try:
            history = await _history(await second.ready(), channel_id)
        finally:
            second.stop()
    if name == "sqlite":
        # The level the daemon ran with, from its own startup line: FULL unless configured.
        assert "synchronous=full" in (tmp_path / "second.log").read_text()

    stored = Counter(str(m["content"]) for m in history)
    twice = [content for content, n in stored.items() if n > 1]
    assert not twice, f"stored more than once: {twice[:5]}"
    assert len({m["id"] for m in history}) == len(history)
    never_sent = set(stored) - attempted
    assert not never_sent, f"stored but never sent: {sorted(never_sent)[:5]}"
    ids = {str(m["content"]): str(m["id"]) for m in history}
    lost = [content for content in acked if content not in ids]
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    changed = [content for content, mid in acked.items() if ids[content] != mid]
    assert not changed, f"stored under another id: {changed[:5]}"
    print(f"after restart: {len(history)} stored ({len(history) - len(acked)} of the in-flight ones)")

    if name == "sqlite":
        _sqlite_integrity(data / "vox.db")
    else:
        print(_postgres_integrity(database_url, channel_id))
