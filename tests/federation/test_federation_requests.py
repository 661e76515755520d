"""Signed server-to-server requests against a real daemon (b.test): the key document, the inbox,
and each refusal (forged signature, old timestamp, replay, wrong destination, unknown origin,
policy, rate limit, federation off)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.conftest import start_daemon
from tests.federation.fed_helpers import INBOX, Pings, Server, envelope, post_inbox, stop
from vox.protocol.federation import public_key_b64


def error(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


async def start_b(nursery: trio.Nursery, tmp_path: Path, a: Server, b: Server, **overrides: Any) -> Any:
    # a.test's URL is never used here: b.test only needs its key to verify what it receives.
    return await b.start(nursery, tmp_path, federation_peers=a.peer_entry(), **overrides)


async def test_key_document_and_a_signed_delivery(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    daemon = await start_b(nursery, tmp_path, a, b)
    async with daemon.http() as http:
        key = await http.get("/api/v1/federation/key")
        assert key.status_code == 200
        assert key.json() == {"server_name": "b.test", "public_key": b.public_key, "algorithm": "ed25519"}
        # The daemon loaded the key file made before it started, mode 0600.
        assert (b.data_dir / "keys" / "federation_ed25519.pem").stat().st_mode & 0o777 == 0o600

        ok = await post_inbox(http, a, envelope(1, n=1))
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"ok": True}
        assert pings.of("b.test") == [("a.test", {"n": 1})]

        # The same delivery again (a retry after a lost acknowledgement): acknowledged, not re-run.
        again = await post_inbox(http, a, envelope(1, n=1))
        assert again.status_code == 200 and again.json() == {"ok": True, "duplicate": True}
        assert len(pings.of("b.test")) == 1

        # A kind nobody handles is acknowledged (it must not block the sender's queue) and reported.
        unknown = await post_inbox(http, a, envelope(2, kind="no_such_kind"))
        assert unknown.status_code == 200 and unknown.json()["error"]["code"] == "unknown_kind"

        # A malformed envelope, well signed, is a 400 naming the field.
        bad = await post_inbox(http, a, json.dumps({"id": "x", "kind": "ping", "payload": {}}).encode())
        assert bad.status_code == 400 and "id" in error(bad)["fields"]
        not_json = await post_inbox(http, a, b"{nope")
        assert not_json.status_code == 400 and error(not_json)["code"] == "validation_error"
    await stop(daemon)


async def test_each_bad_request_is_refused(nursery: trio.Nursery, tmp_path: Path, pings: Pings) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    daemon = await start_b(nursery, tmp_path, a, b)
    body = envelope(1, n=1)

    def refused(response: httpx.Response, reason: str) -> None:
        assert response.status_code == 401, response.text
        assert error(response)["code"] == "federation_unauthorized"
        assert error(response)["reason"] == reason

    async with daemon.http() as http:
        # Forged: signed by a key that is not a.test's.
        mallory = Server(a.name, a.data_dir, Ed25519PrivateKey.generate(), a.port)
        refused(await post_inbox(http, mallory, body), "bad_signature")
        # Altered after signing.
        headers = a.sign("b.test", "POST", INBOX, body)
        altered = await http.post(INBOX, content=envelope(1, n=2), headers=headers)
        refused(altered, "bad_signature")
        # Signed for another path.
        headers = a.sign("b.test", "POST", "/api/v1/federation/other", body)
        refused(await http.post(INBOX, content=body, headers=headers), "bad_signature")
        # Old: 301 s ago, beyond the 300 s window; and as far in the future.
        now = int(time.time() * 1000)
        refused(await post_inbox(http, a, body, now_ms=now - 301_000), "stale")
        refused(await post_inbox(http, a, body, now_ms=now + 301_000), "stale")
        # Addressed to another server.
        refused(await post_inbox(http, a, body, destination="c.test"), "wrong_destination")
        # From a server whose key b.test cannot find (no static entry, no DNS record).
        stranger = Server.make(tmp_path, "c.test")
        refused(await post_inbox(http, stranger, body), "unknown_key")
        # Unsigned.
        unsigned = await http.post(INBOX, content=body)
        refused(unsigned, "missing_header")
        assert pings.of("b.test") == []

        # Replayed: the very same signed request twice.
        headers = a.sign("b.test", "POST", INBOX, body)
        first = await http.post(INBOX, content=body, headers=headers)
        assert first.status_code == 200, first.text
        refused(await http.post(INBOX, content=body, headers=headers), "replayed")
        assert pings.of("b.test") == [("a.test", {"n": 1})]
    await stop(daemon)


async def test_policy_closed_and_allowlist(nursery: trio.Nursery, tmp_path: Path, pings: Pings) -> None:
    a, b, c = (Server.make(tmp_path, n) for n in ("a.test", "b.test", "c.test"))
    peers = f"{a.peer_entry()},{c.peer_entry()}"
    closed = await b.start(nursery, tmp_path, federation_peers=peers, federation_policy="closed")
    async with closed.http() as http:
        response = await post_inbox(http, a, envelope(1))
        assert response.status_code == 403 and error(response)["code"] == "federation_forbidden"
        # The public key stays published (peers may still verify past vouchers and messages).
        assert (await http.get("/api/v1/federation/key")).status_code == 200
    await stop(closed)

    allow = await b.start(
        nursery,
        tmp_path,
        federation_peers=peers,
        federation_policy="allowlist",
        federation_allowlist="c.test",
    )
    async with allow.http() as http:
        response = await post_inbox(http, a, envelope(1))
        assert response.status_code == 403 and error(response)["code"] == "federation_forbidden"
        response = await post_inbox(http, c, envelope(1, n=3))
        assert response.status_code == 200, response.text
    await stop(allow)
    assert pings.of("b.test") == [("c.test", {"n": 3})]


async def test_rate_limit_per_peer(nursery: trio.Nursery, tmp_path: Path, pings: Pings) -> None:
    a, b, c = (Server.make(tmp_path, n) for n in ("a.test", "b.test", "c.test"))
    peers = f"{a.peer_entry()},{c.peer_entry()}"
    daemon = await b.start(nursery, tmp_path, federation_peers=peers, federation_rate=3)
    forger = Server(a.name, a.data_dir, Ed25519PrivateKey.generate(), a.port)
    async with daemon.http() as http:
        # Forged requests in a.test's name do not spend a.test's budget...
        for n in range(2):
            assert (await post_inbox(http, forger, envelope(100 + n))).status_code == 401
        for n in range(1, 4):
            response = await post_inbox(http, a, envelope(n))
            assert response.status_code == 200, response.text
        limited = await post_inbox(http, a, envelope(4))
        assert limited.status_code == 429 and error(limited)["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # Another peer has its own bucket.
        assert (await post_inbox(http, c, envelope(1))).status_code == 200
        # ...but they are counted against their source address, which is then refused outright.
        assert (await post_inbox(http, forger, envelope(102))).status_code == 401
        cut_off = await post_inbox(http, forger, envelope(103))
        assert cut_off.status_code == 429 and error(cut_off)["code"] == "rate_limited"
    await stop(daemon)
    assert len(pings.of("b.test")) == 4


async def test_federation_off_answers_404(nursery: trio.Nursery, tmp_path: Path) -> None:
    daemon = await start_daemon(nursery, tmp_path)
    async with daemon.http() as http:
        for method, path in (("GET", "/api/v1/federation/key"), ("POST", INBOX)):
            response = await http.request(method, path, content=b"{}")
            assert response.status_code == 404
            assert error(response)["code"] == "federation_disabled"
    await stop(daemon)


async def test_handler_failure_is_retried_by_the_sender(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    daemon = await start_b(nursery, tmp_path, a, b)
    pings.failures_left = 1
    async with daemon.http() as http:
        failed = await post_inbox(http, a, envelope(5, fail=True))
        # Not acknowledged: the sender keeps the row and tries again.
        assert failed.status_code == 503 and error(failed)["code"] == "delivery_failed"
        retried = await post_inbox(http, a, envelope(5, fail=True))
        assert retried.status_code == 200 and retried.json() == {"ok": True}
    await stop(daemon)
    assert pings.of("b.test") == [("a.test", {"fail": True})]


async def test_the_key_is_generated_on_first_start_and_kept(nursery: trio.Nursery, tmp_path: Path) -> None:
    daemon = await start_daemon(nursery, tmp_path, server_name="a.test")
    path = tmp_path / "data" / "keys" / "federation_ed25519.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    async with daemon.http() as http:
        first = (await http.get("/api/v1/federation/key")).json()
    assert first["public_key"] == public_key_b64(key) and first["server_name"] == "a.test"
    await stop(daemon)
    daemon = await start_daemon(nursery, tmp_path, server_name="a.test")
    async with daemon.http() as http:
        assert (await http.get("/api/v1/federation/key")).json() == first
    await stop(daemon)


async def test_replays_are_refused_across_daemons_sharing_redis(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings, pg_url: str, redis_url: str
) -> None:
    a, b1 = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    b2 = Server.make(tmp_path / "second", "b.test")
    b2.key = b1.key
    (b2.data_dir / "keys" / "federation_ed25519.pem").write_bytes(
        (b1.data_dir / "keys" / "federation_ed25519.pem").read_bytes()
    )
    shared = {
        "federation_peers": a.peer_entry(),
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": f"voxtest-{uuid.uuid4().hex[:8]}:",
    }
    d1 = await b1.start(nursery, tmp_path, **shared)
    d2 = await b2.start(nursery, tmp_path / "second", **shared)
    body = envelope(1, n=1)
    headers = {**a.sign("b.test", "POST", INBOX, body), "Content-Type": "application/json"}
    async with d1.http() as h1, d2.http() as h2:
        assert (await h1.post(INBOX, content=body, headers=headers)).status_code == 200
        replayed = await h2.post(INBOX, content=body, headers=headers)
        assert replayed.status_code == 401 and error(replayed)["reason"] == "replayed"
        # A fresh signature of the same delivery reaches the other daemon: deduplicated by the
        # shared database, acknowledged without running the handler again.
        again = await post_inbox(h2, a, body)
        assert again.status_code == 200 and again.json() == {"ok": True, "duplicate": True}
    assert pings.of("b.test") == [("a.test", {"n": 1})]
    await stop(d1)
    await stop(d2)
