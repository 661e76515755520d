"""Batched outbox delivery between two daemons on loopback: order across batch boundaries,
partial acceptance, a batch redelivered after a lost reply, the single-row envelope of older
peers (taken from them, and sent to them), and the federation metrics and /healthz outbox
state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon
from tests.e2e.helpers import db_rows
from tests.federation.fed_helpers import Pings, Server, envelope, post_inbox, stop
from vox.errors import ValidationError
from vox.protocol.federation_inbox import InboxItem, parse_envelope
from vox.services import federation as federation_service

RETRY_MAX_S = 1.0


def batch(*items: tuple[int, dict[str, Any]]) -> bytes:
    return json.dumps({"batch": [{"id": i, "kind": "ping", "payload": p} for i, p in items]}).encode()


async def scrape(daemon: Daemon, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics (0 when it has none with these labels)."""
    async with daemon.http() as http:
        text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def inbox_posts(daemon: Daemon) -> float:
    return await scrape(
        daemon,
        "vox_http_requests_total",
        method="POST",
        route="/api/v1/federation/inbox",
        status="200",
    )


async def outbox_health(daemon: Daemon, field: str) -> Any:
    async with daemon.http() as http:
        return (await http.get("/healthz")).json()["federation_outbox"][field]


async def wait_for(probe: Any, expected: Any, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while (value := await probe()) != expected:
            await trio.sleep(0.05)
    assert value == expected


async def test_a_backlog_goes_in_batches_in_order_with_metrics_and_health(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    da = await a.start(
        nursery,
        tmp_path,
        federation_peers=b.peer_entry(),
        federation_retry_max_s=RETRY_MAX_S,
        federation_batch_max=3,
    )
    sender = pings.services["a.test"]
    # b.test is down: ten rows queue up behind each other.
    for n in range(10):
        await sender.enqueue("b.test", "ping", {"n": n})
    await wait_for(lambda: outbox_health(da, "pending"), 10)
    assert await outbox_health(da, "oldest_age_s") > 0
    assert await scrape(da, "vox_federation_outbox_pending", destination="b.test") == 10
    assert await scrape(da, "vox_federation_delivery_failures_total", destination="b.test") >= 1

    db = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    received = await pings.wait_for("b.test", 10)
    assert received == [("a.test", {"n": n}) for n in range(10)]
    # Three rows a request: 3 + 3 + 3 + 1.
    await wait_for(lambda: inbox_posts(db), 4.0)
    await wait_for(lambda: scrape(da, "vox_federation_outbox_pending", destination="b.test"), 0.0)
    assert await scrape(da, "vox_federation_deliveries_total", destination="b.test") == 10
    assert await scrape(db, "vox_federation_inbox_items_total", origin="a.test", outcome="ok") == 10
    assert db_rows(da, "SELECT id FROM federation_outbox") == []
    await wait_for(lambda: outbox_health(da, "pending"), 0)
    await trio.sleep(0.5)
    assert len(pings.of("b.test")) == 10
    await stop(da)
    await stop(db)


async def test_a_failure_mid_batch_keeps_the_rest_queued_in_order(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    da = await a.start(nursery, tmp_path, federation_peers=b.peer_entry(), federation_retry_max_s=RETRY_MAX_S)
    sender = pings.services["a.test"]
    pings.failures_left = 1
    payloads: list[dict[str, Any]] = [{"n": 0}, {"n": 1, "fail": True}, {"n": 2}, {"n": 3}]
    for payload in payloads:
        await sender.enqueue("b.test", "ping", payload)
    db = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    received = await pings.wait_for("b.test", 4)
    assert received == [("a.test", p) for p in payloads]
    # Two answered requests: the whole backlog, of which row 0 was accepted and row 1 failed
    # (the batch stopped there), then rows 1 to 3 after a backoff; each row processed once.
    await wait_for(lambda: scrape(da, "vox_federation_deliveries_total", destination="b.test"), 4.0)
    assert await inbox_posts(db) == 2
    assert await scrape(db, "vox_federation_inbox_items_total", origin="a.test", outcome="failed") == 1
    assert await scrape(db, "vox_federation_inbox_items_total", origin="a.test", outcome="ok") == 4
    await trio.sleep(0.5)
    assert len(pings.of("b.test")) == 4
    await stop(da)
    await stop(db)


async def test_the_inbox_answers_how_far_a_batch_got_and_dedups_a_redelivery(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    daemon = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    async with httpx.AsyncClient(base_url=daemon.rest, timeout=20) as http:
        # The handler of row 11 fails once: rows 10 is processed, 11 and 12 are not.
        pings.failures_left = 1
        first = await post_inbox(
            http, a, batch((10, {"n": 10}), (11, {"n": 11, "fail": True}), (12, {"n": 12}))
        )
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["accepted"] == 10
        assert body["results"] == [{"id": 10, "ok": True}]
        assert body["stopped"]["id"] == 11 and body["stopped"]["error"]["code"] == "delivery_failed"
        assert pings.of("b.test") == [("a.test", {"n": 10})]

        # The sender retries from the head it kept; the reply to this one is "lost" and it sends
        # the very same batch again: every row lands once.
        retry = batch((11, {"n": 11, "fail": True}), (12, {"n": 12}), (13, {"n": 13}))
        second = await post_inbox(http, a, retry)
        assert second.status_code == 200 and second.json()["accepted"] == 13
        again = await post_inbox(http, a, retry)
        assert again.status_code == 200, again.text
        assert again.json()["accepted"] == 13
        assert [r.get("duplicate") for r in again.json()["results"]] == [True, True, True]
        assert pings.of("b.test") == [
            ("a.test", {"n": n, **({"fail": True} if n == 11 else {})}) for n in range(10, 14)
        ]

        # A batch whose first row cannot be processed is the same error a single row gets.
        pings.failures_left = 1
        stuck = await post_inbox(http, a, batch((20, {"fail": True}), (21, {})))
        assert stuck.status_code == 503 and stuck.json()["error"]["code"] == "delivery_failed"

        # A malformed batch, well signed: 400 naming the problem; nothing processed.
        for bad in (
            {"batch": []},
            {"batch": [{"id": 31, "kind": "ping", "payload": {}}, {"id": 30, "kind": "ping", "payload": {}}]},
            {"batch": [{"id": 32, "kind": "ping", "payload": "x"}]},
        ):
            refused = await post_inbox(http, a, json.dumps(bad).encode())
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "validation_error"
        assert len(pings.of("b.test")) == 4
    await stop(daemon)


async def test_the_single_row_envelope_of_older_peers_is_still_taken(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    daemon = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    async with httpx.AsyncClient(base_url=daemon.rest, timeout=20) as http:
        one = await post_inbox(http, a, envelope(5, n=5))
        assert one.status_code == 200 and one.json() == {"ok": True}
        # The same row then arrives inside a batch (the peer upgraded between attempts): once.
        mixed = await post_inbox(http, a, batch((5, {"n": 5}), (6, {"n": 6})))
        assert mixed.status_code == 200
        assert mixed.json()["results"] == [{"id": 5, "ok": True, "duplicate": True}, {"id": 6, "ok": True}]
        again = await post_inbox(http, a, envelope(6, n=6))
        assert again.json() == {"ok": True, "duplicate": True}
    assert pings.of("b.test") == [("a.test", {"n": 5}), ("a.test", {"n": 6})]
    assert await scrape(daemon, "vox_federation_inbox_items_total", origin="a.test", outcome="duplicate") == 2
    await stop(daemon)


async def test_batching_off_sends_one_row_per_request(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    da = await a.start(
        nursery,
        tmp_path,
        federation_peers=b.peer_entry(),
        federation_retry_max_s=RETRY_MAX_S,
        federation_batch_max=1,
    )
    sender = pings.services["a.test"]
    for n in range(5):
        await sender.enqueue("b.test", "ping", {"n": n})
    db = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    assert await pings.wait_for("b.test", 5) == [("a.test", {"n": n}) for n in range(5)]
    await wait_for(lambda: inbox_posts(db), 5.0)
    await stop(da)
    await stop(db)


async def test_a_peer_that_refuses_batches_gets_one_row_per_request(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def single_rows_only(body: Any) -> tuple[list[InboxItem], bool]:
        # What a version before batches does with {"batch": [...]}: a single row with no fields.
        if isinstance(body, dict) and "batch" in body:
            raise ValidationError("malformed inbox delivery", {"id": "must be a positive integer"})
        return parse_envelope(body)

    # Only receivers parse envelopes, so this makes b.test an older peer and leaves a.test as is.
    monkeypatch.setattr(federation_service.inbox, "parse_envelope", single_rows_only)
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    da = await a.start(nursery, tmp_path, federation_peers=b.peer_entry(), federation_retry_max_s=RETRY_MAX_S)
    sender = pings.services["a.test"]
    for n in range(5):
        await sender.enqueue("b.test", "ping", {"n": n})
    db = await b.start(nursery, tmp_path, federation_peers=a.peer_entry())
    assert await pings.wait_for("b.test", 5) == [("a.test", {"n": n}) for n in range(5)]
    await wait_for(lambda: inbox_posts(db), 5.0)
    refused = await scrape(
        db, "vox_http_requests_total", method="POST", route="/api/v1/federation/inbox", status="400"
    )
    assert refused == 1
    assert await scrape(da, "vox_federation_deliveries_total", destination="b.test") == 5
    await stop(da)
    await stop(db)


async def test_daemons_sharing_a_database_deliver_a_backlog_in_batches_once_in_order(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings, pg_url: str
) -> None:
    a1, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    # A second daemon of the same community: same key, same database; both race for the batches.
    a2 = a1.sibling(tmp_path / "second")
    shared = {
        "federation_peers": b.peer_entry(),
        "database_url": pg_url,
        "federation_retry_max_s": RETRY_MAX_S,
        "federation_batch_max": 7,
    }
    d1 = await a1.start(nursery, tmp_path, **shared)
    first = pings.services.pop("a.test")
    d2 = await a2.start(nursery, tmp_path / "second", **shared)
    second = pings.services["a.test"]
    count = 60
    for n in range(count):
        await (first if n % 2 else second).enqueue("b.test", "ping", {"n": n})
    db = await b.start(nursery, tmp_path, federation_peers=a1.peer_entry())
    received = await pings.wait_for("b.test", count)
    assert received == [("a.test", {"n": n}) for n in range(count)]
    await trio.sleep(1.0)
    assert len(pings.of("b.test")) == count
    assert await scrape(db, "vox_federation_inbox_items_total", origin="a.test", outcome="duplicate") == 0
    delivered = [await scrape(d, "vox_federation_deliveries_total", destination="b.test") for d in (d1, d2)]
    assert sum(delivered) == count
    # At most 7 rows a request: at least ceil(60 / 7) answered inbox requests.
    assert await inbox_posts(db) >= 9
    for daemon in (d1, d2, db):
        await stop(daemon)
