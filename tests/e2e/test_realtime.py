"""Real-time gateway features: resume with replay, typing, presence (protocol.md sections 6, 7)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.conftest import Daemon
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
