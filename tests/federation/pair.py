"""Two daemons on loopback that federate with each other (static peers, or DNS through the
test nameserver), and small clients for the federated-feature suites.

Each daemon's federation key is created in its data directory before it starts (the daemon
loads the same file), and each REST port is chosen up front, so each configuration can name the
other server's URL and public key.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.helpers import PASSWORD, bearer
from tests.federation.dns_server import DnsServer
from tests.federation.fed_helpers import free_port
from vox import datadir
from vox.protocol.federation import public_key_b64

A, B = "a.test", "b.test"


def prepare_identity(root: Path) -> str:
    """Create the data directory's keys now; the base64url federation public key."""
    keys = datadir.prepare(root / "data")
    return public_key_b64(keys.federation_key)


@dataclass
class Server:
    """One federating daemon and what its peers must know about it."""

    daemon: Daemon
    domain: str
    public_key: str
    root: Path
    settings: dict[str, Any]

    @property
    def rest(self) -> str:
        return self.daemon.rest

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.daemon.rest, timeout=20)

    async def stop(self) -> None:
        self.daemon.stop.set()
        with trio.fail_after(20):
            await self.daemon.done.wait()

    async def restart(self, nursery: trio.Nursery) -> None:
        """Start it again (after ``stop``) on the same port, data directory and database."""
        self.daemon = await start_daemon(nursery, self.root, **self.settings)


async def start_pair(
    nursery: trio.Nursery,
    tmp_path: Path,
    *,
    a: dict[str, Any] | None = None,
    b: dict[str, Any] | None = None,
    dns: DnsServer | None = None,
) -> tuple[Server, Server]:
    """a.test and b.test, each listing the other as a static peer, or, given a running ``dns``
    server, each publishing its SRV and key TXT records there and finding the other through it."""
    roots = {A: tmp_path / "a", B: tmp_path / "b"}
    keys = {d: prepare_identity(root) for d, root in roots.items()}
    ports = {A: free_port(), B: free_port()}
    extra = {A: a or {}, B: b or {}}
    servers = []
    for domain, other in ((A, B), (B, A)):
        settings: dict[str, Any] = {
            "server_name": domain,
            "rest_port": ports[domain],
            "federation_retry_max_s": 2.0,
        }
        if dns is None:
            settings["federation_peers"] = f"{other}=http://127.0.0.1:{ports[other]}={keys[other]}"
        else:
            dns.add_peer(domain, port=ports[domain], public_key=keys[domain])
            settings["federation_dns_server"] = f"127.0.0.1:{dns.port}"
            settings["federation_insecure_http"] = True
        settings.update(extra[domain])
        daemon = await start_daemon(nursery, roots[domain], **settings)
        servers.append(Server(daemon, domain, keys[domain], roots[domain], settings))
    return servers[0], servers[1]


async def stop(*servers: Server) -> None:
    for server in servers:
        server.daemon.stop.set()
    with trio.fail_after(20):
        for server in servers:
            await server.daemon.done.wait()


@dataclass
class Account:
    """A user signed in on one server."""

    server: Server
    client: httpx.AsyncClient
    id: str
    name: str
    token: str

    @property
    def address(self) -> str:
        return f"{self.name}@{self.server.domain}"

    @property
    def h(self) -> dict[str, str]:
        return bearer(self.token)

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        kwargs: dict[str, Any] = {"headers": self.h}
        if body is not None:
            kwargs["json"] = body
        return await self.client.request(method, "/api/v1" + path, **kwargs)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.call(method, path, body)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        return None if status == 204 else response.json()


async def account(server: Server, client: httpx.AsyncClient, name: str) -> Account:
    registered = await client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    tokens = await client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    return Account(server, client, registered.json()["user_id"], name, tokens.json()["access_token"])


def rows(server: Server, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a daemon's database directly, SQLite or PostgreSQL (``?`` placeholders)."""
    url = server.daemon.config.database_url
    if url.startswith("postgres"):
        with psycopg.connect(url) as conn:
            return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), params).fetchall()]
    conn = sqlite3.connect(server.daemon.config.data_dir / "vox.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def b_database(request: pytest.FixtureRequest) -> dict[str, Any]:
    """b.test's storage: its own SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("pg_url")}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return dict(body["error"])
