"""Real-time gateway features: resume with replay, typing, presence (protocol.md sections 6, 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User, gd
from tests.e2e.helpers import close_code, gateway, next_frame
from vox.nurseries import session as session_mod

__all__ = ["gd"]


async def _guild_pair(api: Api) -> tuple[User, User, str, str]:
    owner = await api.user("owner")
    member = await api.user("member")
    guild = await api.guild(owner)
    await api.join(owner, member, guild["id"])
    channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
    return owner, member, guild["id"], channel


async def _next_of(ws: Any, types: set[str], timeout: float = 5) -> dict[str, Any]:
    """The next frame whose type is one of ``types`` (others, such as presence, are skipped)."""
    with trio.fail_after(timeout):
        while True:
            got: dict[str, Any] = json.loads(await ws.get_message())
            if got["type"] in types:
                return got


async def _none_of(ws: Any, types: set[str], seconds: float = 0.4) -> None:
    with trio.move_on_after(seconds):
        while True:
            got = json.loads(await ws.get_message())
            assert got["type"] not in types, got


async def test_resume_replays_missed_events_in_order(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, _, channel = await _guild_pair(api)
        async with gateway(gd, member.token) as (ws, ready):
            assert ready is not None
            session_id = ready["d"]["session_id"]
            await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "before"}, 201)
            seen = await _next_of(ws, {"message_new"})
            last_seq = seen["seq"]
            await ws.aclose(4000)  # the network "drops": not a deliberate 1000
        missed = [
            await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": f"missed {i}"}, 201)
            for i in range(3)
        ]
        async with open_websocket_url(gd.gateway) as ws:
            assert (await next_frame(ws))["type"] == "hello"
            await ws.send_message(
                json.dumps(
                    {
                        "type": "resume",
                        "d": {"token": member.token, "session_id": session_id, "last_seq": last_seq},
                    }
                )
            )
            replayed = []
            while True:
                got = await next_frame(ws)
                if got["type"] == "resumed":
                    break
                replayed.append(got)
            messages = [f for f in replayed if f["type"] == "message_new"]
            assert [m["d"]["id"] for m in messages] == [m["id"] for m in missed]
            seqs = [f["seq"] for f in replayed]
            assert seqs == list(range(last_seq + 1, last_seq + 1 + len(replayed)))
            # and the stream goes on live with the next seq
            await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "live"}, 201)
            live = await _next_of(ws, {"message_new"})
            assert live["d"]["content"] == "live" and live["seq"] > seqs[-1]
            # another user cannot take the session over
            async with open_websocket_url(gd.gateway) as thief:
                await next_frame(thief)
                await thief.send_message(
                    json.dumps(
                        {
                            "type": "resume",
                            "d": {"token": owner.token, "session_id": session_id, "last_seq": 0},
                        }
                    )
                )
                assert await close_code(thief) == 4009


async def test_deliberate_close_ends_the_session(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        member = await api.user("member")
    async with gateway(gd, member.token) as (ws, ready):
        assert ready is not None
        session_id = ready["d"]["session_id"]
        await ws.aclose(1000)
    async with open_websocket_url(gd.gateway) as ws:
        await next_frame(ws)
        await ws.send_message(
            json.dumps(
                {"type": "resume", "d": {"token": member.token, "session_id": session_id, "last_seq": 0}}
            )
        )
        assert await close_code(ws) == 4009


async def test_typing_reaches_subscribers_only(gd: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "TYPING_TTL_S", 1.0)
    async with gd.http() as client:
        api = Api(client)
        owner, member, _, channel = await _guild_pair(api)
        async with gateway(gd, owner.token) as (o_ws, _), gateway(gd, member.token) as (m_ws, _):
            typing = {"typing_start", "typing_stop"}
            # not subscribed: typing is not delivered (messages still are)
            await o_ws.send_message(json.dumps({"type": "typing", "d": {"channel_id": channel}}))
            await _none_of(m_ws, typing)
            await o_ws.send_message(json.dumps({"type": "stop_typing", "d": {"channel_id": channel}}))
            await _none_of(m_ws, typing, 0.2)
            await m_ws.send_message(json.dumps({"type": "subscribe", "d": {"channel_id": channel}}))
            await trio.sleep(0.1)
            await o_ws.send_message(json.dumps({"type": "typing", "d": {"channel_id": channel}}))
            start = await _next_of(m_ws, typing)
            assert start["type"] == "typing_start"
            assert start["d"] == {"channel_id": channel, "user_id": owner.id}
            # no refresh: it expires by itself (TTL shortened for the test)
            stop = await _next_of(m_ws, typing, timeout=4)
            assert stop["type"] == "typing_stop" and stop["d"]["user_id"] == owner.id
            # after unsubscribe, nothing again
            await m_ws.send_message(json.dumps({"type": "unsubscribe", "d": {"channel_id": channel}}))
            await trio.sleep(0.1)
            await o_ws.send_message(json.dumps({"type": "typing", "d": {"channel_id": channel}}))
            await _none_of(m_ws, typing)
            # typing in a channel one cannot see is ignored; a malformed request is a decode error
            await m_ws.send_message(json.dumps({"type": "typing", "d": {"channel_id": "nope"}}))
            await m_ws.send_message(json.dumps({"type": "typing", "d": {}}))
            assert await close_code(m_ws) == 4002


async def test_presence_reaches_co_members_not_strangers(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, _, _ = await _guild_pair(api)
        stranger = await api.user("stranger")
        async with gateway(gd, member.token) as (m_ws, _), gateway(gd, stranger.token) as (s_ws, _):
            presence = {"presence_update", "rich_presence_update"}
            async with gateway(gd, owner.token) as (o_ws, _):
                online = await _next_of(m_ws, presence)
                assert online["d"] == {"user_id": owner.id, "status": "online", "activity": None}
                await o_ws.send_message(json.dumps({"type": "set_status", "d": {"status": "busy"}}))
                busy = await _next_of(m_ws, presence)
                assert busy["type"] == "presence_update" and busy["d"]["status"] == "busy"
                activity = {"type": "playing", "name": "Factorio", "details": "megabase"}
                await o_ws.send_message(json.dumps({"type": "set_activity", "d": {"activity": activity}}))
                rich = await _next_of(m_ws, presence)
                assert rich["type"] == "rich_presence_update"
                assert rich["d"] == {"user_id": owner.id, "activity": activity}
                # the user's other devices follow too
                assert (await _next_of(o_ws, presence))["d"]["status"] == "busy"
                await o_ws.aclose(1000)
            offline = await _next_of(m_ws, presence)
            assert offline["d"] == {"user_id": owner.id, "status": "offline", "activity": None}
            await _none_of(s_ws, presence, 0.2)
        # the chosen status is remembered for the next connection
        async with gateway(gd, member.token) as (m_ws, _), gateway(gd, owner.token) as (o_ws, _):
            back = await _next_of(m_ws, {"presence_update"})
            assert back["d"]["status"] == "busy"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "set_status", "d": {"status": "sleeping"}},
        {"type": "set_status", "d": {}},
        {"type": "set_activity", "d": {"activity": {"type": "hacking", "name": "x"}}},
        {"type": "set_activity", "d": {"activity": {"type": "playing", "name": "x" * 200}}},
        {"type": "set_activity", "d": {"activity": "just a string"}},
        {"type": "subscribe", "d": {"channel_id": 5}},
    ],
)
async def test_bad_requests_close_4002(gd: Daemon, frame: dict[str, Any]) -> None:
    async with gd.http() as client:
        member = await Api(client).user("member")
    async with gateway(gd, member.token) as (ws, _):
        await ws.send_message(json.dumps(frame))
        assert await close_code(ws) == 4002


async def test_client_that_does_not_read_is_cut_and_others_are_not_slowed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import socket

    # A small queue so the test needs few events; the kernel's socket buffers come on top.
    gd = await start_daemon(nursery, tmp_path, rate_limits="api=1000000/1", gateway_queue_frames=16)

    async with gd.http() as client:
        api = Api(client)
        owner, member, _, channel = await _guild_pair(api)
        sleeper = await api.user("sleeper")
        guild_id = (await api.ok(owner, "GET", "/guilds"))[0]["id"]
        await api.join(owner, sleeper, guild_id)
        host, port = gd.gateway.removeprefix("ws://").removesuffix("/gateway").rsplit(":", 1)
        # A raw client with a tiny receive window that identifies and then never reads.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect((host, int(port)))
        raw.sendall(
            b"GET /gateway HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        raw.settimeout(5)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await trio.to_thread.run_sync(raw.recv, 1024)
        assert answer.startswith(b"HTTP/1.1 101")
        payload = json.dumps({"type": "identify", "d": {"token": sleeper.token}}).encode()
        mask = b"\x00\x00\x00\x00"
        header = b"\x81" + bytes([0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
        raw.sendall(header + payload)
        try:
            async with gateway(gd, member.token) as (ws, _):
                big = "x" * 3900
                received = 0
                cut = False
                for i in range(1500):
                    await api.ok(
                        owner, "POST", f"/channels/{channel}/messages", {"content": f"{i} {big}"}, 201
                    )
                    got = await _next_of(ws, {"message_new"})
                    assert got["d"]["content"].startswith(f"{i} ")  # the reader keeps up, in order
                    received += 1
                    if i % 50 == 49:
                        metrics = (await client.get("/metrics")).text
                        if 'vox_gateway_closes_total{code="4008"}' in metrics:
                            cut = True
                            break
                metrics = (await client.get("/metrics")).text
                closes = [line for line in metrics.splitlines() if "closes_total{" in line]
                assert cut, ("the client that never reads was not disconnected", closes)
                assert received >= 50
        finally:
            raw.close()
    gd.stop.set()


async def test_profile_change_is_a_patch_event(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, _, _ = await _guild_pair(api)
        async with gateway(gd, member.token) as (m_ws, _):
            await api.ok(owner, "PATCH", "/users/@me", {"display_name": "The Owner"})
            patch = await _next_of(m_ws, {"patch"})
            assert patch["d"] == {
                "entity_type": "user",
                "entity_id": owner.id,
                "diff": {"display_name": "The Owner"},
            }
            # an unchanged value announces nothing
            await api.ok(owner, "PATCH", "/users/@me", {"display_name": "The Owner"})
            await _none_of(m_ws, {"patch"}, 0.3)
