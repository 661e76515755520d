"""Three `vox serve` processes on one PostgreSQL database and one Redis behave as one server:
events, typing, presence, rate limits and revocations cross nodes; a client resumes on another
node without losing an event; a killed node's users go offline; a voice room lives on one node;
a DM call's ring timeout fires once whichever nodes see it.

Skipped, saying why, where PostgreSQL or Redis is absent.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.cluster_nodes import (
    FAST_LIVENESS,
    Cluster,
    Node,
    close_code,
    cluster,
    collect,
    connect,
    recv,
    wait_for,
)
from tests.e2e.helpers import bearer, login, register

RING_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Nodes a, b and c, started once for the module (each test uses users of its own)."""
    with cluster(
        tmp_path_factory.mktemp("cluster"),
        **FAST_LIVENESS,
        VOX_RATE_LIMITS="presence=3/60",
        VOX_CALL_RING_TIMEOUT_S=str(RING_TIMEOUT_S),
        VOX_VOICE_HOST_ADDRESSES="127.0.0.1",
    ) as deployment:
        for name in ("a", "b", "c"):
            deployment.start(name)
        yield deployment


class U:
    def __init__(self, user_id: str, token: str) -> None:
        self.id, self.token = user_id, token

    @property
    def h(self) -> dict[str, str]:
        return bearer(self.token)


async def user(client: httpx.AsyncClient, name: str) -> U:
    user_id = await register(client, name)
    return U(user_id, str((await login(client, name))["access_token"]))


async def ok(
    client: httpx.AsyncClient, who: U, method: str, path: str, body: Any = None, status: int = 200
) -> Any:
    response = await client.request(method, "/api/v1" + path, headers=who.h, json=body)
    assert response.status_code == status, (method, path, response.text)
    return None if status == 204 else response.json()


async def guild_of(
    owner_client: httpx.AsyncClient, owner: U, *members: tuple[httpx.AsyncClient, U]
) -> dict[str, Any]:
    """A guild of ``owner`` that each member joins through their own node."""
    guild: dict[str, Any] = await ok(owner_client, owner, "POST", "/guilds", {"name": "G"}, 201)
    for client, member in members:
        invite = await ok(owner_client, owner, "POST", f"/guilds/{guild['id']}/invites", {}, 201)
        await ok(client, member, "POST", f"/invites/{invite['code']}")
    return guild


def text_channel(guild: dict[str, Any]) -> str:
    return str(next(c for c in guild["channels"] if c["channel_type"] == "text")["id"])


def nodes(deployment: Cluster) -> tuple[Node, Node, Node]:
    a, b, c = deployment.nodes[:3]
    return a, b, c


async def test_messages_typing_and_presence_cross_nodes(deployment: Cluster) -> None:
    a, b, c = nodes(deployment)
    async with a.http() as ca, b.http() as cb, c.http() as cc:
        ann, bob, cat = await user(ca, "x_ann"), await user(cb, "x_bob"), await user(cc, "x_cat")
        guild = await guild_of(ca, ann, (cb, bob), (cc, cat))
        channel = text_channel(guild)
        async with connect(b, bob.token) as (bob_ws, _), connect(c, cat.token) as (cat_ws, _):
            # a message sent through a reaches the gateway clients of b and c
            sent = await ok(ca, ann, "POST", f"/channels/{channel}/messages", {"content": "hello"}, 201)
            for ws in (bob_ws, cat_ws):
                got = await wait_for(ws, "message_new")
                assert got["d"]["id"] == sent["id"]

            # typing on b reaches a client on c that shows the channel
            await cat_ws.send_message(json.dumps({"type": "subscribe", "d": {"channel_id": channel}}))
            await trio.sleep(0.2)
            await bob_ws.send_message(json.dumps({"type": "typing", "d": {"channel_id": channel}}))
            typing = await wait_for(cat_ws, "typing_start")
            assert typing["d"] == {"channel_id": channel, "user_id": bob.id}

            # online on a is online everywhere, and offline once the last session anywhere ends
            async with connect(a, ann.token):
                for ws in (bob_ws, cat_ws):
                    await wait_for(
                        ws, "presence_update", lambda d: d["user_id"] == ann.id and d["status"] == "online"
                    )
            for ws in (bob_ws, cat_ws):
                await wait_for(
                    ws, "presence_update", lambda d: d["user_id"] == ann.id and d["status"] == "offline"
                )


async def test_a_rate_limit_spent_on_one_node_applies_on_another(deployment: Cluster) -> None:
    a, b, _ = nodes(deployment)
    async with a.http() as ca:
        dan = await user(ca, "x_dan")
    async with connect(a, dan.token) as (ws_a, _), connect(b, dan.token) as (ws_b, _):
        for status in ("away", "busy", "online"):  # the module's limit: presence=3/60
            await ws_a.send_message(json.dumps({"type": "set_status", "d": {"status": status}}))
            await wait_for(ws_a, "presence_update", lambda d, s=status: d["status"] == s)
        await ws_b.send_message(json.dumps({"type": "set_status", "d": {"status": "away"}}))
        assert await close_code(ws_b, 5) == 4008


async def test_logout_on_one_node_closes_the_connection_on_another(deployment: Cluster) -> None:
    a, b, _ = nodes(deployment)
    async with a.http() as ca:
        eli = await user(ca, "x_eli")
        async with connect(b, eli.token) as (ws, _):
            assert (await ca.post("/api/v1/auth/logout", headers=eli.h)).status_code == 204
            assert await close_code(ws, 5) == 4004


async def _resume(
    ws: Any, token: str, session_id: str, last_seq: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Resume on an open connection; (the replayed frames, resumed d)."""
    assert (await recv(ws))["type"] == "hello"
    d = {"token": token, "session_id": session_id, "last_seq": last_seq}
    await ws.send_message(json.dumps({"type": "resume", "d": d}))
    replayed: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws, 10)
        if frame["type"] == "resumed":
            return replayed, frame["d"]
        replayed.append(frame)


async def test_a_client_resumes_on_another_node_without_losing_an_event(deployment: Cluster) -> None:
    a, b, c = nodes(deployment)
    async with a.http() as ca, c.http() as cc:
        eve, fay = await user(ca, "x_eve"), await user(cc, "x_fay")
        guild = await guild_of(cc, fay, (ca, eve))
        channel = text_channel(guild)
        posted: list[str] = []

        async def post(text: str) -> None:
            message = await ok(cc, fay, "POST", f"/channels/{channel}/messages", {"content": text}, 201)
            posted.append(message["id"])

        async with open_websocket_url(a.gateway, subprotocols=["vox.v1"]) as ws:
            await recv(ws)
            await ws.send_message(json.dumps({"type": "identify", "d": {"token": eve.token}}))
            ready = await recv(ws, 10)
            session_id = ready["d"]["session_id"]
            await post("seen")
            seen = await wait_for(ws, "message_new")
            last_seq = seen["seq"]
            # the network drops (not a deliberate close: the session stays resumable)
            await ws.aclose(3000)

        for i in range(5):  # missed while disconnected
            await post(f"missed {i}")

        async def keep_posting() -> None:
            # and more during the handoff itself
            for i in range(10):
                await post(f"during {i}")
                await trio.sleep(0.02)

        async with open_websocket_url(b.gateway, subprotocols=["vox.v1"]) as ws2:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_posting)
                replayed, resumed = await _resume(ws2, eve.token, session_id, last_seq)
            await post("after")
            frames = list(replayed)
            with trio.fail_after(10):
                while not any(f["type"] == "message_new" and f["d"]["id"] == posted[-1] for f in frames):
                    frames.append(await recv(ws2, 10))
            seqs = [f["seq"] for f in frames]
            assert seqs == list(range(last_seq + 1, last_seq + 1 + len(frames))), seqs
            got = [f["d"]["id"] for f in frames if f["type"] == "message_new"]
            assert got == posted[1:], "every event once, in order"
            # the session now lives on b, and says so in its id
            assert resumed["session_id"] != session_id
            new_id, new_last = resumed["session_id"], seqs[-1]
            await ws2.aclose(3000)  # dropped again, not closed on purpose

        # resumable again, from a third node
        await post("later")
        async with open_websocket_url(c.gateway, subprotocols=["vox.v1"]) as ws3:
            replayed, _ = await _resume(ws3, eve.token, new_id, new_last)
            assert [f["d"]["id"] for f in replayed if f["type"] == "message_new"] == [posted[-1]]
            assert replayed[0]["seq"] == new_last + 1

        # the old id is gone: identify again
        async with open_websocket_url(a.gateway, subprotocols=["vox.v1"]) as ws4:
            await recv(ws4)
            await ws4.send_message(
                json.dumps(
                    {"type": "resume", "d": {"token": eve.token, "session_id": session_id, "last_seq": 0}}
                )
            )
            assert await close_code(ws4, 10) == 4009


async def test_a_killed_nodes_users_go_offline_on_the_others(deployment: Cluster) -> None:
    a, _, _ = nodes(deployment)
    d = await trio.to_thread.run_sync(deployment.start, "d")
    async with a.http() as ca, d.http() as cd:
        gus, hal = await user(cd, "x_gus"), await user(ca, "x_hal")
        await guild_of(ca, hal, (cd, gus))
        async with connect(a, hal.token) as (hal_ws, _), connect(d, gus.token) as (_, ready):
            await wait_for(
                hal_ws, "presence_update", lambda d_: d_["user_id"] == gus.id and d_["status"] == "online"
            )
            session_id = ready["session_id"]
            killed_at = trio.current_time()
            d.kill()
            offline = await wait_for(
                hal_ws,
                "presence_update",
                lambda d_: d_["user_id"] == gus.id and d_["status"] == "offline",
                timeout=30,
            )
            took = trio.current_time() - killed_at
            assert offline["d"]["activity"] is None
            assert took < 30, took
        # a session of the dead node cannot be resumed elsewhere: identify again
        async with open_websocket_url(a.gateway, subprotocols=["vox.v1"]) as ws:
            await recv(ws)
            await ws.send_message(
                json.dumps(
                    {"type": "resume", "d": {"token": gus.token, "session_id": session_id, "last_seq": 0}}
                )
            )
            assert await close_code(ws, 10) == 4009


async def test_a_voice_room_lives_on_one_node(deployment: Cluster) -> None:
    a, b, _ = nodes(deployment)
    async with a.http() as ca, b.http() as cb:
        ivy, jay = await user(ca, "x_ivy"), await user(cb, "x_jay")
        guild = await guild_of(ca, ivy, (cb, jay))
        voice = await ok(
            ca,
            ivy,
            "POST",
            f"/guilds/{guild['id']}/channels",
            {"name": "Lounge", "channel_type": "voice"},
            201,
        )
        async with connect(a, ivy.token) as (ivy_ws, _), connect(b, jay.token) as (jay_ws, _):
            await ivy_ws.send_message(json.dumps({"type": "voice_join", "d": {"channel_id": voice["id"]}}))
            await wait_for(ivy_ws, "voice_offer")
            await jay_ws.send_message(json.dumps({"type": "voice_join", "d": {"channel_id": voice["id"]}}))
            error = await wait_for(jay_ws, "voice_error")
            assert error["d"]["code"] == "room_elsewhere"
            assert error["d"]["gateway_url"] == a.gateway
            # over a's gateway the join goes through
            async with connect(a, jay.token) as (jay_on_a, _):
                await jay_on_a.send_message(
                    json.dumps({"type": "voice_join", "d": {"channel_id": voice["id"]}})
                )
                await wait_for(jay_on_a, "voice_offer")


async def test_a_dm_call_rings_out_exactly_once_across_nodes(deployment: Cluster) -> None:
    a, b, c = nodes(deployment)
    async with a.http() as ca, b.http() as cb, c.http() as cc:
        kim, lou = await user(ca, "x_kim"), await user(cb, "x_lou")
        await guild_of(ca, kim, (cb, lou))
        dm = await ok(ca, kim, "POST", "/dms", {"recipients": [lou.id]}, 201)
        async with connect(a, kim.token) as (kim_ws, _), connect(b, lou.token) as (lou_ws, _):
            await ok(ca, kim, "POST", f"/dms/{dm['id']}/call", status=201)
            await wait_for(lou_ws, "call_ringing")
            # b and c answer GET at about the deadline while a's timer fires: one end all the same
            await trio.sleep(RING_TIMEOUT_S - 0.1)
            answers: list[Any] = []

            async def get(client: httpx.AsyncClient, who: U) -> None:
                for _ in range(6):
                    answers.append(await ok(client, who, "GET", f"/dms/{dm['id']}/call"))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(get, cb, lou)
                nursery.start_soon(get, cc, lou)
            after = await ok(cc, kim, "GET", f"/dms/{dm['id']}/call")
            assert after["state"] == "ended" and after["ended_reason"] == "timeout"
            for ws in (kim_ws, lou_ws):
                ended = [f for f in await collect(ws, 1.5) if f["type"] == "call_ended"]
                assert len(ended) == 1, ended
                assert ended[0]["d"]["reason"] == "timeout"


async def test_a_stalled_node_is_presumed_dead_and_then_counts_its_sessions_again(
    deployment: Cluster,
) -> None:
    a, b, _ = nodes(deployment)
    e = await trio.to_thread.run_sync(deployment.start, "e")
    try:
        async with a.http() as ca, e.http() as ce:
            ivo, joe = await user(ce, "x_ivo"), await user(ca, "x_joe")
            await guild_of(ca, joe, (ce, ivo))
            async with connect(a, joe.token) as (joe_ws, _), connect(e, ivo.token) as (ivo_ws, ready):
                await wait_for(
                    joe_ws, "presence_update", lambda d: d["user_id"] == ivo.id and d["status"] == "online"
                )
                e.proc.send_signal(signal.SIGSTOP)
                try:
                    # a stalled node cannot hand its session over: 4009 once the wait is over
                    started = trio.current_time()
                    async with open_websocket_url(b.gateway, subprotocols=["vox.v1"]) as ws:
                        await recv(ws)
                        d = {"token": ivo.token, "session_id": ready["session_id"], "last_seq": 0}
                        await ws.send_message(json.dumps({"type": "resume", "d": d}))
                        assert await close_code(ws, 15) == 4009
                    assert trio.current_time() - started < 10
                    # and the others take it for dead: its users go offline
                    await wait_for(
                        joe_ws,
                        "presence_update",
                        lambda d: d["user_id"] == ivo.id and d["status"] == "offline",
                        timeout=30,
                    )
                finally:
                    e.proc.send_signal(signal.SIGCONT)
                # back: it counts its sessions in again, and the expired handoff took nothing away
                await wait_for(
                    joe_ws,
                    "presence_update",
                    lambda d: d["user_id"] == ivo.id and d["status"] == "online",
                    timeout=15,
                )
                await ivo_ws.send_message(json.dumps({"type": "heartbeat"}))
                await wait_for(ivo_ws, "heartbeat_ack")
    finally:
        await trio.to_thread.run_sync(e.stop)
