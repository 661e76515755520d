"""Gateway handshake: hello, identify (frame or subprotocol header), ready, close codes."""

from __future__ import annotations

import json

import pytest
from trio_websocket import open_websocket_url

from tests.e2e.conftest import Daemon
from tests.e2e.helpers import bearer, close_code, gateway, login, next_frame, register, user_with_token


async def test_identify_by_frame(daemon: Daemon) -> None:
    async with daemon.http() as client:
        user_id, token = await user_with_token(client, "gw_frame")
    async with gateway(daemon, token) as (ws, ready):
        assert ready is not None
        assert ready["type"] == "ready"
        assert ready["d"]["user_id"] == user_id
        assert ready["d"]["guilds"] == []
        assert ready["d"]["heartbeat_interval_ms"] == daemon.config.heartbeat_interval_ms
        assert isinstance(ready["d"]["session_id"], str)
        await ws.send_message(json.dumps({"type": "heartbeat"}))
        assert (await next_frame(ws))["type"] == "heartbeat_ack"


async def test_identify_by_subprotocol_header(daemon: Daemon) -> None:
    async with daemon.http() as client:
        user_id, token = await user_with_token(client, "gw_header")
    async with gateway(daemon, token, via_header=True) as (ws, ready):
        assert ws.subprotocol == "vox.v1"
        assert ready is not None and ready["type"] == "ready"
        assert ready["d"]["user_id"] == user_id
        # identifying again on an authenticated connection is refused
        await ws.send_message(json.dumps({"type": "identify", "d": {"token": token}}))
        assert await close_code(ws) == 4005


@pytest.mark.parametrize("via_header", [False, True])
async def test_bad_token_closes_4004(daemon: Daemon, via_header: bool) -> None:
    async with open_websocket_url(
        daemon.gateway, subprotocols=["vox.v1", "access_token.x.y.z"] if via_header else []
    ) as ws:
        await next_frame(ws)
        if not via_header:
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": "x.y.z"}}))
        assert await close_code(ws) == 4004


@pytest.mark.parametrize("d", [None, {}, {"token": 5}, {"token": ""}])
async def test_identify_without_token_is_decode_error(daemon: Daemon, d: object) -> None:
    async with open_websocket_url(daemon.gateway) as ws:
        await next_frame(ws)
        await ws.send_message(json.dumps({"type": "identify", "d": d}))
        assert await close_code(ws) == 4002


async def test_revoked_session_closes_live_connections(daemon: Daemon) -> None:
    async with daemon.http() as client:
        await register(client, "gw_revoke")
        doomed = await login(client, "gw_revoke")
        keeper = await login(client, "gw_revoke")
        async with (
            gateway(daemon, doomed["access_token"]) as (ws_doomed, _),
            gateway(daemon, keeper["access_token"]) as (ws_keeper, _),
        ):
            response = await client.post("/api/v1/auth/logout", headers=bearer(doomed["access_token"]))
            assert response.status_code == 204
            assert await close_code(ws_doomed) == 4004
            # the other session's connection is untouched
            await ws_keeper.send_message(json.dumps({"type": "heartbeat"}))
            assert (await next_frame(ws_keeper))["type"] == "heartbeat_ack"
        # and the revoked token cannot identify again
        async with open_websocket_url(daemon.gateway) as ws:
            await next_frame(ws)
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": doomed["access_token"]}}))
            assert await close_code(ws) == 4004


async def test_resume_of_unknown_session_is_4009(daemon: Daemon) -> None:
    async with daemon.http() as client:
        _, token = await user_with_token(client, "resumer")
    async with open_websocket_url(daemon.gateway) as ws:
        await next_frame(ws)
        await ws.send_message(
            json.dumps({"type": "resume", "d": {"token": token, "session_id": "nope", "last_seq": 0}})
        )
        assert await close_code(ws) == 4009
    async with open_websocket_url(daemon.gateway) as ws:
        await next_frame(ws)
        await ws.send_message(json.dumps({"type": "resume", "d": {"token": token, "session_id": "x"}}))
        assert await close_code(ws) == 4002
