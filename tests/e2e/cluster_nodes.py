"""Several `vox serve` processes on one PostgreSQL database and one Redis: a deployment of nodes.

Each node is a real subprocess on free ports of 127.0.0.1; its stderr goes to a log file next to
its data (printed when a start fails). Every process is killed on the way out, whatever happens.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests import backends
from tests.process import ready_urls, spawn_vox

READY_TIMEOUT_S = 30.0
# Short liveness settings so that a killed node is noticed in seconds rather than the default 20 s.
FAST_LIVENESS = {"VOX_NODE_TTL_S": "2", "VOX_NODE_HEARTBEAT_S": "0.5", "VOX_NODE_SWEEP_S": "0.5"}


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[str]
    rest: str
    gateway: str
    log_path: Path

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.rest, timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9: no drain, no deregistration; the other nodes must clean up after it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """What the nodes of one deployment share, and the nodes started so far."""

    base: Path
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    def start(self, name: str, **extra_env: str) -> Node:
        log_path = self.base / f"{name}.log"
        log_file = log_path.open("w")
        proc = spawn_vox(env={**self.env, **extra_env}, stderr=log_file)
        log_file.close()
        node = Node(name, proc, "", "", log_path)
        self.nodes.append(node)
        line = _read_line(proc, READY_TIMEOUT_S)
        parts = ready_urls(line)
        if parts is None:
            node.kill()
            raise RuntimeError(f"node {name} did not start: {line!r}\n{node.log_text()[-3000:]}")
        node.rest, node.gateway = parts["rest"], parts["gateway"]
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
            if node.proc.stdout is not None:
                node.proc.stdout.close()


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The first stdout line, or "" when the process exits or says nothing in time."""
    assert proc.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return proc.stdout.readline().strip()


@contextmanager
def cluster(base: Path, **env: str) -> Iterator[Cluster]:
    """A fresh PostgreSQL schema and a fresh Redis key prefix (both removed afterwards) for
    nodes started with ``Cluster.start``; skipped, saying why, without PostgreSQL or Redis."""
    import pytest

    for reason in (backends.postgres_skip_reason(), backends.redis_skip_reason()):
        if reason:
            pytest.skip(reason)
    schema, database_url = backends.make_pg_schema()
    prefix = f"vox:test:cluster:{uuid.uuid4().hex}:"
    base.mkdir(parents=True, exist_ok=True)
    shared = {
        "VOX_DATABASE_URL": database_url,
        "VOX_REDIS_URL": backends.REDIS_URL,
        "VOX_REDIS_PREFIX": prefix,
        # One deployment shares its key files (and, here, its local blob directory).
        "VOX_DATA_DIR": str(base / "data"),
        "VOX_LOG_LEVEL": "info",
        **env,
    }
    deployment = Cluster(base, shared)
    try:
        yield deployment
    finally:
        deployment.close()
        backends.drop_pg_schema(schema)
        client = redis.Redis.from_url(backends.REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# -- gateway clients ----------------------------------------------------------------------------


async def recv(ws: WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        raw = await ws.get_message()
    assert isinstance(raw, str)
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def close_code(ws: WebSocketConnection, timeout: float) -> int | None:
    """Read until the server closes the connection; its close code."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return None if exc.reason is None else exc.reason.code


async def wait_for(
    ws: WebSocketConnection, type_: str, where: Any = None, timeout: float = 10
) -> dict[str, Any]:
    """Skip frames until a ``type_`` one (matching ``where(d)``) arrives; the whole frame."""
    with trio.fail_after(timeout):
        while True:
            frame = await recv(ws, timeout)
            if frame["type"] == type_ and (where is None or where(frame["d"])):
                return frame


async def collect(ws: WebSocketConnection, seconds: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            got.append(await recv(ws, seconds + 1))
    return got


@asynccontextmanager
async def connect(node: Node, token: str) -> AsyncIterator[tuple[WebSocketConnection, dict[str, Any]]]:
    """A gateway connection identified as ``token``; yields (ws, ready d)."""
    async with open_websocket_url(node.gateway, subprotocols=["vox.v1"]) as ws:
        assert (await recv(ws))["type"] == "hello"
        await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
        ready = await recv(ws, 10)
        assert ready["type"] == "ready", ready
        yield ws, ready["d"]
