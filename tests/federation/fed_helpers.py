"""Federation test scaffolding: server identities made before a daemon starts (so two daemons
can list each other as static peers), signed requests from a test-held key, and a test-only
``ping`` inbox kind recorded per receiving server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.conftest import Daemon, start_daemon
from vox.nurseries import root
from vox.protocol import federation as fed
from vox.services.federation import Federation, open_federation

# Spelled out, not imported: the route is part of the server-to-server contract.
INBOX = "/api/v1/federation/inbox"


def free_port() -> int:
    """A loopback TCP port free right now (for a daemon that must restart on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One federating community: its domain, data directory, pre-made key and REST port."""

    name: str
    data_dir: Path
    key: Ed25519PrivateKey
    port: int

    @classmethod
    def make(cls, tmp_path: Path, name: str) -> Server:
        data_dir = tmp_path / name
        keys = data_dir / "keys"
        keys.mkdir(mode=0o700, parents=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = keys / "federation_ed25519.pem"
        path.write_bytes(pem)
        os.chmod(path, 0o600)
        return cls(name, data_dir, key, free_port())

    def sibling(self, tmp_path: Path) -> Server:
        """A second daemon of the same community: its own data directory and port, the same key
        (copied, as an operator copies data_dir/keys)."""
        other = Server.make(tmp_path, self.name)
        shutil.copy(
            self.data_dir / "keys" / "federation_ed25519.pem",
            other.data_dir / "keys" / "federation_ed25519.pem",
        )
        other.key = self.key
        return other

    @property
    def public_key(self) -> str:
        return fed.public_key_b64(self.key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peer_entry(self) -> str:
        return f"{self.name}={self.url}={self.public_key}"

    async def start(self, nursery: trio.Nursery, tmp_path: Path, **overrides: Any) -> Daemon:
        settings: dict[str, Any] = {
            "server_name": self.name,
            "data_dir": self.data_dir,
            "rest_port": self.port,
        }
        settings.update(overrides)
        return await start_daemon(nursery, tmp_path, **settings)

    def sign(
        self, destination: str, method: str, path: str, body: bytes, now_ms: int | None = None
    ) -> dict[str, str]:
        return fed.sign_request(
            self.key,
            origin=self.name,
            destination=destination,
            method=method,
            path=path,
            body=body,
            now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        )


async def stop(daemon: Daemon) -> None:
    daemon.stop.set()
    with trio.fail_after(20):
        await daemon.done.wait()


async def post_inbox(
    http: httpx.AsyncClient, sender: Server, body: bytes, *, destination: str = "b.test", **sign: Any
) -> httpx.Response:
    headers = sender.sign(destination, "POST", INBOX, body, **sign)
    return await http.post(INBOX, content=body, headers={**headers, "Content-Type": "application/json"})


async def post_signed_inbox(
    http: httpx.AsyncClient, key: Ed25519PrivateKey, origin: str, destination: str, body: bytes
) -> httpx.Response:
    """An inbox delivery signed with ``key`` as ``origin`` would sign it (a peer's own key)."""
    return await post_inbox(http, Server(origin, Path(), key, 0), body, destination=destination)


def envelope(outbox_id: int, kind: str = "ping", **payload: Any) -> bytes:
    return json.dumps({"id": outbox_id, "kind": kind, "payload": payload}).encode()


@dataclass
class Pings:
    """Every Federation service the daemons of a test opened, and the pings each received."""

    services: dict[str, Federation] = field(default_factory=dict)
    received: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    # A ping whose payload has "fail": true raises this many times before it succeeds.
    failures_left: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def of(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return self.received.setdefault(name, [])

    async def wait_for(
        self, name: str, count: int, timeout: float = 30.0
    ) -> list[tuple[str, dict[str, Any]]]:
        with trio.fail_after(timeout):
            while len(self.of(name)) < count:
                self.changed = trio.Event()
                await self.changed.wait()
        return self.of(name)


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Pings:
    """Register a ``ping`` inbox kind on every daemon this test starts (tests only)."""
    record = Pings()

    @asynccontextmanager
    async def open_with_ping(*args: Any, **kwargs: Any) -> AsyncIterator[Federation]:
        async with open_federation(*args, **kwargs) as service:
            name = service.server_name

            async def on_ping(origin: str, payload: dict[str, Any]) -> None:
                if payload.get("fail") and record.failures_left > 0:
                    record.failures_left -= 1
                    raise RuntimeError("handler failed")
                record.of(name).append((origin, payload))
                record.changed.set()

            service.on("ping", on_ping)
            record.services[name] = service
            yield service

    # The root nursery looks the name up in its own module when it starts.
    monkeypatch.setattr(root, "open_federation", open_with_ping)
    return record
