"""The daemon on PostgreSQL + Redis, and two daemons sharing them behaving as one server."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from tests.e2e.conftest import start_daemon
from tests.e2e.helpers import bearer, close_code, gateway, login, register


async def test_daemon_on_postgres_and_redis(
    nursery: trio.Nursery, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    d = await start_daemon(
        nursery,
        tmp_path,
        database_url=pg_url,
        redis_url=redis_url,
        redis_prefix=f"vox:test:{uuid.uuid4().hex}:",
    )
    async with d.http() as client:
        health = (await client.get("/healthz")).json()
        assert health == health | {"status": "ok", "storage": "ok", "pubsub": "ok"}
        assert health["storage_backend"] == "postgres"
        assert health["pubsub_backend"] == "redis"
        user_id = await register(client, "pguser")
        tokens = await login(client, "pguser")
        me = (await client.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))).json()
        assert me["id"] == user_id and me["is_admin"] is True
    d.stop.set()


async def test_two_daemons_share_sessions_and_events(
    nursery: trio.Nursery, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    shared = {
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": f"vox:test:{uuid.uuid4().hex}:",
        "data_dir": tmp_path / "shared-keys",  # one deployment shares its key files
    }
    one = await start_daemon(nursery, tmp_path / "one", **shared)
    two = await start_daemon(nursery, tmp_path / "two", **shared)
    async with one.http() as c1, two.http() as c2:
        await register(c1, "roamer")
        tokens = await login(c2, "roamer")  # registered on one, logs in on two
        assert (await c1.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))).status_code == 200
        # a gateway connection on daemon two is closed when daemon one revokes its session
        async with gateway(two, tokens["access_token"]) as (ws, ready):
            assert ready is not None and ready["type"] == "ready"
            assert (
                await c1.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
            ).status_code == 204
            assert await close_code(ws) == 4004
        assert (await c2.get("/api/v1/users/@me", headers=bearer(tokens["access_token"]))).status_code == 401
    one.stop.set()
    two.stop.set()
