"""The durable outbox between two daemons on loopback: delivery in order, nothing lost while the
peer is down (nor across a restart of the sender), backoff, and a peer that answers garbage."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Daemon
from tests.e2e.helpers import db_rows
from tests.federation.fed_helpers import Pings, Server, stop
from vox.errors import PeerError, PeerUnavailable

RETRY_MAX_S = 1.0


def outbox(daemon: Daemon) -> list[tuple[Any, ...]]:
    return db_rows(daemon, "SELECT id, destination, kind, attempts FROM federation_outbox ORDER BY id")


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_peer_down_queues_and_delivers_everything_in_order(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    a_conf = {"federation_peers": b.peer_entry(), "federation_retry_max_s": RETRY_MAX_S}
    b_conf = {"federation_peers": a.peer_entry()}
    da = await a.start(nursery, tmp_path, **a_conf)
    db = await b.start(nursery, tmp_path, **b_conf)

    await pings.services["a.test"].enqueue("b.test", "ping", {"n": 0})
    assert await pings.wait_for("b.test", 1) == [("a.test", {"n": 0})]
    await wait_until(lambda: outbox(da) == [])

    # b.test goes down; a.test keeps queueing and retrying.
    await stop(db)
    for n in range(1, 6):
        await pings.services["a.test"].enqueue("b.test", "ping", {"n": n})
    await wait_until(lambda: len(outbox(da)) == 5 and outbox(da)[0][3] >= 2)
    rows = outbox(da)
    # Only the head is tried: later rows wait behind it, so order is kept.
    assert [r[3] for r in rows[1:]] == [0, 0, 0, 0]
    assert [r[2] for r in rows] == ["ping"] * 5

    # a.test itself restarts while b.test is down: the queue is on disk, not in memory.
    await stop(da)
    da = await a.start(nursery, tmp_path, **a_conf)
    assert len(outbox(da)) == 5
    await pings.services["a.test"].enqueue("b.test", "ping", {"n": 6})

    # b.test returns on the same address: everything arrives, once each, in order.
    db = await b.start(nursery, tmp_path, **b_conf)
    received = await pings.wait_for("b.test", 7)
    assert received == [("a.test", {"n": n}) for n in range(7)]
    await wait_until(lambda: outbox(da) == [])
    await trio.sleep(0.5)
    assert len(pings.of("b.test")) == 7
    await stop(da)
    await stop(db)


async def test_destinations_do_not_block_each_other(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    # c.test is listed but nothing listens at its address.
    dead = Server.make(tmp_path, "c.test")
    peers = f"{b.peer_entry()},{dead.peer_entry()}"
    da = await a.start(nursery, tmp_path, federation_peers=peers, federation_retry_max_s=RETRY_MAX_S)
    db = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    sender = pings.services["a.test"]
    await sender.enqueue("c.test", "ping", {"n": "lost?"})
    for n in range(3):
        await sender.enqueue("b.test", "ping", {"n": n})
    assert await pings.wait_for("b.test", 3) == [("a.test", {"n": n}) for n in range(3)]
    await wait_until(lambda: [r[1] for r in outbox(da)] == ["c.test"])
    await stop(da)
    await stop(db)


async def test_backoff_doubles_up_to_the_cap(nursery: trio.Nursery, tmp_path: Path, pings: Pings) -> None:
    a, nobody = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    da = await a.start(nursery, tmp_path, federation_peers=nobody.peer_entry(), federation_retry_max_s=2.0)
    sender = pings.services["a.test"]
    await sender.enqueue("b.test", "ping", {})

    def next_attempt() -> tuple[int, int]:
        attempts, next_at = db_rows(da, "SELECT attempts, next_attempt_at FROM federation_outbox")[0]
        return int(attempts), int(next_at)

    await wait_until(lambda: next_attempt()[0] >= 1)
    (created_at,) = db_rows(da, "SELECT created_at FROM federation_outbox")[0]
    seen: dict[int, int] = {0: int(created_at)}
    with trio.fail_after(30):
        while len(seen) < 4:
            attempts, next_at = next_attempt()
            seen.setdefault(attempts, next_at)
            await trio.sleep(0.02)
    ordered = [seen[k] for k in sorted(seen)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(ordered)]
    # Waits of 1 s, 2 s, then capped at 2 s (each gap also holds the time a failed attempt took).
    assert 900 <= gaps[0] < 1900, gaps
    assert 1900 <= gaps[1] < 2900, gaps
    assert 1900 <= gaps[2] < 2900, gaps
    await stop(da)


async def garbage_peer(
    answer: bytes, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """An HTTP server that reads a request and answers ``answer`` verbatim, whatever was asked."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            await stream.send_all(answer)

    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\nConnection: close\r\n\r\n<html>",
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops",
        # Well-formed JSON, but not signed by b.test's key: whoever answered, it was not b.test.
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
        b'Vox-Origin: b.test\r\nConnection: close\r\n\r\n{"ok":true}',
    ],
    ids=["not-json", "5xx", "unsigned"],
)
async def test_a_peer_answering_garbage_is_logged_and_throttled(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings, caplog: pytest.LogCaptureFixture, answer: bytes
) -> None:
    caplog.set_level(logging.WARNING, logger="vox.federation")
    port = await nursery.start(garbage_peer, answer)
    a, junk = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    junk.port = port
    da = await a.start(nursery, tmp_path, federation_peers=junk.peer_entry(), federation_retry_max_s=30.0)
    sender = pings.services["a.test"]

    with pytest.raises(PeerError) as caught:
        await sender.request("b.test", "GET", "/api/v1/federation/key")
    assert caught.value.status == 502
    assert (caught.value.peer_status, caught.value.peer_code) == (0, "garbage")
    # Throttled: the next call fails fast without reaching the peer.
    with pytest.raises(PeerUnavailable):
        await sender.request("b.test", "GET", "/api/v1/federation/key")

    # The outbox keeps the row (garbage is not an acknowledgement) and backs off.
    await sender.enqueue("b.test", "ping", {})
    await wait_until(lambda: db_rows(da, "SELECT attempts FROM federation_outbox")[0][0] >= 1)
    await trio.sleep(0.5)
    (row,) = db_rows(da, "SELECT attempts, last_error FROM federation_outbox")
    assert row[0] == 1 and str(row[1]).startswith("peer answered")
    assert any("throttled" in r.getMessage() for r in caplog.records)
    await stop(da)


async def test_daemons_sharing_a_database_deliver_each_row_once_in_order(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings, pg_url: str
) -> None:
    a1, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    # A second daemon of the same community: same key (copied keys), same database.
    a2 = a1.sibling(tmp_path / "second")
    shared = {
        "federation_peers": b.peer_entry(),
        "database_url": pg_url,
        "federation_retry_max_s": RETRY_MAX_S,
    }
    d1 = await a1.start(nursery, tmp_path, **shared)
    first = pings.services.pop("a.test")
    d2 = await a2.start(nursery, tmp_path / "second", **shared)
    second = pings.services["a.test"]
    db = await b.start(nursery, tmp_path, federation_peers=a1.peer_entry())

    count = 40
    for n in range(count):
        await (first if n % 2 else second).enqueue("b.test", "ping", {"n": n})
    received = await pings.wait_for("b.test", count)
    assert received == [("a.test", {"n": n}) for n in range(count)]
    await trio.sleep(1.0)
    assert len(pings.of("b.test")) == count
    for daemon in (d1, d2, db):
        await stop(daemon)
