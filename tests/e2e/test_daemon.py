"""The daemon over real sockets: health, errors, metrics, gateway basics, graceful shutdown."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.e2e.conftest import Daemon, start_daemon


async def test_healthz_over_tcp(daemon: Daemon) -> None:
    async with daemon.http() as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["storage"] == "ok"
    assert body["pubsub"] == "ok"
    assert body["storage_backend"].startswith("sqlite")


async def test_unknown_route_and_method_use_error_shape(daemon: Daemon) -> None:
    async with daemon.http() as client:
        missing = await client.get("/api/v1/nope")
        wrong_method = await client.post("/healthz")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert isinstance(missing.json()["error"]["message"], str)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_empty_path_segment_is_a_404_not_a_redirect(daemon: Daemon) -> None:
    async with daemon.http() as client:
        response = await client.get("/api/v1/guilds//channels")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_oversized_body_is_413(daemon: Daemon) -> None:
    too_big = daemon.config.max_upload_bytes + 1
    async with daemon.http() as client:
        response = await client.post(
            "/api/v1/nope", content=b"x" * too_big, headers={"content-type": "text/plain"}
        )
    assert response.status_code in (404, 413)
    assert "error" in response.json()


async def test_metrics_count_requests(daemon: Daemon) -> None:
    async with daemon.http() as client:
        await client.get("/healthz")
        await client.get("/healthz")
        response = await client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'vox_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    assert "vox_gateway_connections" in text


async def test_gateway_discovery(daemon: Daemon) -> None:
    async with daemon.http() as client:
        body = (await client.get("/api/v1/gateway")).json()
    assert body["url"] == daemon.gateway
    assert body["protocol_version"] == 1


async def test_gateway_hello_and_heartbeat(daemon: Daemon) -> None:
    async with open_websocket_url(daemon.gateway, subprotocols=["vox.v1"]) as ws:
        assert ws.subprotocol == "vox.v1"
        hello = json.loads(await ws.get_message())
        assert hello["type"] == "hello"
        assert hello["d"]["heartbeat_interval_ms"] == daemon.config.heartbeat_interval_ms
        await ws.send_message(json.dumps({"type": "heartbeat", "d": None}))
        ack = json.loads(await ws.get_message())
        assert ack["type"] == "heartbeat_ack"
        async with daemon.http() as client:
            metrics = (await client.get("/metrics")).text
        assert "vox_gateway_connections 1.0" in metrics


async def _close_code(url: str, frames: list[str | bytes]) -> int | None:
    async with open_websocket_url(url) as ws:
        await ws.get_message()  # hello
        for frame in frames:
            await ws.send_message(frame)
        with trio.fail_after(5):
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code
    return None


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (["not json"], 4002),
        ([b"\x00\x01binary"], 4002),
        (['{"d": {}}'], 4002),
        (['{"type": 5}'], 4002),
        (['{"type": "definitely_not_a_type"}'], 4001),
        (['{"type": "subscribe", "d": {"channel_id": "x"}}'], 4003),
    ],
)
async def test_gateway_bad_frames_close_with_code(
    daemon: Daemon, frames: list[str | bytes], code: int
) -> None:
    assert await _close_code(daemon.gateway, frames) == code
    async with daemon.http() as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_gateway_wrong_path_rejected(daemon: Daemon) -> None:
    from trio_websocket import HandshakeError

    with pytest.raises(HandshakeError):
        async with open_websocket_url(daemon.gateway.replace("/gateway", "/other")):
            pass


async def test_gateway_identify_timeout(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, heartbeat_interval_ms=200)
    try:
        async with open_websocket_url(d.gateway) as ws:
            await ws.get_message()
            # heartbeats alone do not keep an unidentified connection open
            await ws.send_message('{"type": "heartbeat"}')
            with trio.fail_after(3), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
            assert closed.value.reason.code == 4003
    finally:
        d.stop.set()
        await d.done.wait()


async def test_gateway_heartbeat_timeout(nursery: trio.Nursery, tmp_path: Path) -> None:
    from tests.e2e.helpers import gateway, user_with_token

    d = await start_daemon(nursery, tmp_path, heartbeat_interval_ms=300)
    try:
        async with d.http() as client:
            _, token = await user_with_token(client, "sleepy")
        async with gateway(d, token) as (ws, ready):
            assert ready is not None and ready["type"] == "ready"
            start = trio.current_time()
            with trio.fail_after(3), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
            assert closed.value.reason.code == 4009
            assert trio.current_time() - start >= 0.25
    finally:
        d.stop.set()
        await d.done.wait()


async def test_shutdown_closes_gateway_and_leaves_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    d = await start_daemon(nursery, tmp_path)
    async with open_websocket_url(d.gateway) as ws:
        await ws.get_message()
        d.stop.set()
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
        assert closed.value.reason.code == 1001
    with trio.fail_after(10):
        await d.done.wait()
    # Only this test's own tasks remain in the test nursery.
    assert not nursery.child_tasks
    # Worker threads from trio's cache idle out; none of ours (db, broker) may be left running.
    leftover = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
    assert not [t for t in leftover if not t.name.startswith("Trio thread")], leftover


async def test_many_abusive_connections_do_not_hurt(daemon: Daemon) -> None:
    async def abuse(i: int) -> None:
        try:
            async with open_websocket_url(daemon.gateway) as ws:
                await ws.send_message("{" * (i % 7 + 1))
                with trio.move_on_after(2):
                    while True:
                        await ws.get_message()
        except (ConnectionClosed, OSError):
            pass

    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(abuse, i)
    async with daemon.http() as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
