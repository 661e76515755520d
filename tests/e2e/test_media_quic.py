"""The QUIC media transport end to end: real aioquic clients (sans-IO on trio UDP sockets) join
voice channels through the gateway of an in-process daemon and exchange media datagrams."""

from __future__ import annotations

import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, voice_room
from tests.e2e.media_helpers import Inbox, datagram, gateway, metric_value, metrics_text
from tests.e2e.voice_helpers import voice_client
from vox.config import Config
from vox.errors import ConfigError
from vox.protocol.media import HEADER_SIZE, MediaType, decode_header
from vox.protocol.permissions import DEFAULT_EVERYONE, Permission
from vox.transports.quic import CloseCode, ensure_certificate
from vox.transports.quic_client import MediaClient, MediaClientError, open_media_client

DATAGRAMS = 1000
DROPPED = "vox_media_datagrams_dropped_total"
REFUSED = "vox_media_auth_failures_total"


@pytest.fixture
async def md(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, tmp_path, voice_room_limit=5, media_auth_timeout_s=1.0)
    yield d
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


@pytest.fixture
async def api(md: Daemon) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=md.rest, timeout=10) as client:
        yield Api(client)


async def test_three_clients_forward_every_datagram(md: Daemon, api: Api) -> None:
    users, _guild, channel = await voice_room(api, 3)
    async with (
        gateway(md, users[0].token, "a") as ga,
        gateway(md, users[1].token, "b") as gb,
        gateway(md, users[2].token, "c") as gc,
    ):
        gateways = [ga, gb, gc]
        sessions = [await g.join_quic(channel["id"]) for g in gateways]
        assert len({s["room_id"] for s in sessions}) == 1
        assert len({s["ssrc"] for s in sessions}) == 3
        assert all(s["media_url"] == md.addresses.media_url for s in sessions)
        state = await ga.wait_event("voice_room_state", lambda d: len(d["participants"]) == 3)
        assert {p["user_id"] for p in state["participants"]} == {u.id for u in users}
        await ga.wait_event("voice_user_joined", lambda d: d["user_id"] == users[2].id)

        inboxes = [Inbox(), Inbox(), Inbox()]
        async with (
            open_media_client(sessions[0]["media_url"]) as ca,
            open_media_client(sessions[1]["media_url"]) as cb,
            open_media_client(sessions[2]["media_url"]) as cc,
        ):
            clients = [ca, cb, cc]
            for client, session, inbox in zip(clients, sessions, inboxes, strict=True):
                client.on_datagram = inbox
                with trio.fail_after(10):
                    await client.authenticate(session["media_token"])
            sent: list[dict[int, bytes]] = [{}, {}, {}]
            started = trio.current_time()

            async def speak(i: int) -> None:
                # 1,000 datagrams at about 500/s: 10 every 20 ms.
                for seq in range(DATAGRAMS):
                    data = datagram(sessions[i], seq)
                    sent[i][seq] = data
                    clients[i].send(data)
                    if seq % 10 == 9:
                        await clients[i].flush()
                        await trio.sleep(0.02)
                await clients[i].flush()

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(speak, i)
            expected = 2 * DATAGRAMS
            with trio.move_on_after(10):
                for inbox in inboxes:
                    await inbox.wait_count(expected, timeout=10)
            elapsed = trio.current_time() - started
            for i, inbox in enumerate(inboxes):
                by_ssrc: dict[int, dict[int, bytes]] = {}
                for data in inbox.datagrams:
                    h = decode_header(data)
                    by_ssrc.setdefault(h.ssrc, {})[h.sequence] = data
                assert sessions[i]["ssrc"] not in by_ssrc, "a client received its own datagrams"
                others = [j for j in range(3) if j != i]
                assert set(by_ssrc) <= {sessions[j]["ssrc"] for j in others}
                for j in others:
                    got = by_ssrc.get(sessions[j]["ssrc"], {})
                    # Intact: header and payload byte-identical to what the sender sent.
                    assert all(data == sent[j][seq] for seq, data in got.items())
                loss = 1 - len(inbox.datagrams) / expected
                print(
                    f"client {i}: received {len(inbox.datagrams)}/{expected} in {elapsed:.2f} s, "
                    f"loss {loss:.4%}"
                )
                assert loss <= 0.001, f"client {i} lost {loss:.2%} on loopback"
        text = await metrics_text(api.client)
        assert metric_value(text, "vox_media_datagrams_received_total") >= 3 * DATAGRAMS
        forwarded = metric_value(text, "vox_media_datagrams_forwarded_total")
        assert forwarded >= 6 * DATAGRAMS * 0.999
        assert metric_value(text, "vox_media_forward_delay_seconds_count") == forwarded
        # QUIC close: the participants leave the room everywhere.
        left = await ga.wait_event("voice_user_left", lambda d: d["user_id"] == users[0].id)
        assert left["channel_id"] == channel["id"]
        with trio.fail_after(10):
            while metric_value(await metrics_text(api.client), "vox_media_participants") != 0:
                await trio.sleep(0.05)


async def test_bad_clients_are_dropped_and_the_daemon_carries_on(md: Daemon, api: Api) -> None:
    users, guild, channel = await voice_room(api, 3)
    other = await api.channel(users[0], guild["id"], "Other", "voice")
    async with (
        gateway(md, users[0].token, "a") as ga,
        gateway(md, users[1].token, "b") as gb,
        gateway(md, users[2].token, "c") as gc,
    ):
        sa = await ga.join_quic(channel["id"])
        sb = await gb.join_quic(channel["id"])
        url = sa["media_url"]

        async def refused(token: str) -> MediaClientError:
            async with open_media_client(url) as bad:
                with pytest.raises(MediaClientError) as err, trio.fail_after(10):
                    await bad.authenticate(token)
            return err.value

        # Garbage, a forged MAC, a token of a session that ended (it was for another room).
        assert (await refused("not-a-token")).reason == "bad_token"
        forged = sa["media_token"][:-4] + ("AAAA" if not sa["media_token"].endswith("AAAA") else "BBBB")
        err = await refused(forged)
        assert (err.reason, err.error_code) == ("bad_token", CloseCode.AUTH_FAILED)
        sc_old = await gc.join_quic(other["id"])
        sc = await gc.join_quic(channel["id"])  # leaves the other room: its token is now void
        assert sc_old["room_id"] != sc["room_id"]
        assert (await refused(sc_old["media_token"])).reason == "unknown_session"

        # UDP garbage that is not QUIC at all, and a long datagram of noise.
        host, port = url.removeprefix("quic://").rsplit(":", 1)
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            await raw.sendto(b"\x00\x01", (host, int(port)))
            await raw.sendto(bytes(range(256)) * 6, (host, int(port)))

        # A client that never authenticates is closed after media_auth_timeout_s, and its
        # datagrams were never forwarded.
        async with open_media_client(url) as silent:
            with trio.fail_after(10):
                await silent.connected.wait()
            silent.send(datagram(sa, 0))
            await silent.flush()
            with trio.fail_after(10):
                await silent.closed.wait()
            assert silent.close_code == CloseCode.AUTH_TIMEOUT

        inbox_b = Inbox()
        async with open_media_client(url) as ca, open_media_client(url) as cb:
            cb.on_datagram = inbox_b
            with trio.fail_after(10):
                await ca.authenticate(sa["media_token"])
                await cb.authenticate(sb["media_token"])
            # The same token again: the session already has its connection.
            assert (await refused(sa["media_token"])).reason == "session_claimed"
            # Forged ssrc, wrong room, wrong version, truncated, garbage, too large.
            bad = [
                datagram(sa, 1, ssrc=sb["ssrc"]),
                datagram(sa, 2, room_id=sa["room_id"] ^ 0xFF),
                b"\x02" + datagram(sa, 3)[1:],
                datagram(sa, 4)[: HEADER_SIZE - 1],
                b"\xff" * 40,
                datagram(sa, 5, payload_size=2000)[:1090] + b"x" * 20,
            ]
            for data in bad:
                ca.send(data)
            ca.send(datagram(sa, 99))
            await ca.flush()
            await inbox_b.wait_count(1)
            await trio.sleep(0.2)
            assert [decode_header(d).sequence for d in inbox_b.datagrams] == [99]
            text = await metrics_text(api.client)
            for reason, count in (
                ("wrong_ssrc", 1),
                ("wrong_room", 1),
                ("bad_version", 2),  # 0x02 and 0xff
                ("truncated", 1),
                ("too_large", 1),
                ("unauthenticated", 1),
                ("not_quic", 1),
            ):
                assert metric_value(text, DROPPED, f'reason="{reason}"') >= count, reason
            for reason, count in (
                ("bad_token", 2),
                ("unknown_session", 1),
                ("session_claimed", 1),
                ("auth_timeout", 1),
            ):
                assert metric_value(text, REFUSED, f'reason="{reason}"') == count, reason

            # Self-mute and server mute stop A's audio; unmuting brings it back.
            await ga.send("voice_mute")
            await gb.wait_event("voice_user_muted", lambda d: d["user_id"] == users[0].id)
            ca.send(datagram(sa, 100))
            await ca.flush()
            await trio.sleep(0.2)
            await ga.send("voice_unmute")
            await gb.wait_event("voice_user_unmuted", lambda d: d["user_id"] == users[0].id)
            path = f"/channels/{channel['id']}/voice/{users[0].id}/mute"
            state = await api.ok(users[0], "POST", path)
            assert state["server_muted"] is True
            ca.send(datagram(sa, 101))
            await ca.flush()
            await trio.sleep(0.2)
            await api.ok(users[0], "POST", path, {"muted": False})
            ca.send(datagram(sa, 102))
            await ca.flush()
            await inbox_b.wait_count(2)
            assert [decode_header(d).sequence for d in inbox_b.datagrams] == [99, 102]
            assert metric_value(await metrics_text(api.client), DROPPED, 'reason="muted"') == 2

            # A WebRTC join of a channel in use over QUIC is refused (one transport per room).
            await gc.send("voice_join", {"channel_id": channel["id"]})
            err_frame = await gc.wait_event("voice_error", lambda d: d["request"] == "voice_join")
            assert err_frame["code"] == "transport_mismatch" and err_frame["transport"] == "quic"


async def test_permissions_limits_and_expiry(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, media_token_ttl_s=0.6, media_rate_pps=50, media_rate_burst=20)
    try:
        async with httpx.AsyncClient(base_url=d.rest, timeout=10) as http:
            api = Api(http)
            users, guild, channel = await voice_room(api, 2)
            await api.everyone(users[0], guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_SPEAK)
            async with gateway(d, users[0].token, "a") as ga, gateway(d, users[1].token, "b") as gb:
                sa = await ga.join_quic(channel["id"])  # the owner keeps every permission
                sb = await gb.join_quic(channel["id"])
                # The server sends a fresh token before the first expires; the first is refused.
                fresh = await gb.wait_event("voice_media_session", timeout=5)
                assert fresh["media_token"] != sb["media_token"] and fresh["ssrc"] == sb["ssrc"]
                await trio.sleep(0.7)
                async with open_media_client(sb["media_url"]) as late:
                    with pytest.raises(MediaClientError) as err, trio.fail_after(10):
                        await late.authenticate(sb["media_token"])
                    assert err.value.reason == "expired_token"
                # The next fresh tokens of both (older ones may have expired meanwhile).
                for g in (ga, gb):
                    g.events = [e for e in g.events if e["type"] != "voice_media_session"]
                sa = await ga.wait_event("voice_media_session", timeout=5)
                latest = await gb.wait_event("voice_media_session", timeout=5)
                inbox_a, inbox_b = Inbox(), Inbox()
                async with (
                    open_media_client(sa["media_url"]) as ca,
                    open_media_client(latest["media_url"]) as cb,
                ):
                    ca.on_datagram, cb.on_datagram = inbox_a, inbox_b
                    with trio.fail_after(10):
                        await ca.authenticate(sa["media_token"])
                        await cb.authenticate(latest["media_token"])
                    # B lacks VOICE_SPEAK: its audio is dropped, its screen datagrams are not.
                    cb.send(datagram(latest, 0))
                    cb.send(datagram(latest, 1, type_=MediaType.SCREEN, codec=3))
                    await cb.flush()
                    await inbox_a.wait_count(1)
                    # A sends a burst of 100: the bucket lets the burst (20) through.
                    for seq in range(100):
                        ca.send(datagram(sa, seq))
                    await ca.flush()
                    await inbox_b.wait_count(20)
                    await trio.sleep(0.3)
                    assert 20 <= len(inbox_b.datagrams) < 60
                    text = await metrics_text(http)
                    assert metric_value(text, DROPPED, 'reason="no_permission"') == 1
                    assert metric_value(text, DROPPED, 'reason="rate_limited"') >= 40
                    assert [decode_header(x).type for x in inbox_a.datagrams] == [MediaType.SCREEN]
                    assert metric_value(text, REFUSED, 'reason="expired_token"') == 1
    finally:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


async def test_leaving_removes_the_participant_everywhere(md: Daemon, api: Api) -> None:
    users, _guild, channel = await voice_room(api, 3)
    async with gateway(md, users[0].token, "a") as ga, gateway(md, users[1].token, "b") as gb:
        sa = await ga.join_quic(channel["id"])
        sb = await gb.join_quic(channel["id"])
        inbox_a = Inbox()
        async with open_media_client(sa["media_url"]) as ca, open_media_client(sb["media_url"]) as cb:
            ca.on_datagram = inbox_a
            with trio.fail_after(10):
                await ca.authenticate(sa["media_token"])
                await cb.authenticate(sb["media_token"])
            cb.send(datagram(sb, 0))
            await cb.flush()
            await inbox_a.wait_count(1)
            # Gateway voice_leave: B's connection is closed and A sees B go.
            await gb.send("voice_leave")
            await ga.wait_event("voice_user_left", lambda d: d["user_id"] == users[1].id)
            state = await ga.wait_event("voice_room_state", lambda d: len(d["participants"]) == 1)
            assert [p["user_id"] for p in state["participants"]] == [users[0].id]
            with trio.fail_after(10):
                await cb.closed.wait()
            assert cb.close_code == CloseCode.NO_ERROR
            await gb.send("voice_leave")
            again = await gb.wait_event("voice_error", lambda d: d["request"] == "voice_leave")
            assert again["code"] == "not_in_voice"
            sb2 = await gb.join_quic(channel["id"])
            assert sb2["ssrc"] != sb["ssrc"] or sb2["media_token"] != sb["media_token"]
    # Gateway disconnect: C's session goes with its gateway connection.
    async with gateway(md, users[0].token, "a2") as ga2, gateway(md, users[2].token, "c") as gc:
        sc = await gc.join_quic(channel["id"])
        await ga2.join_quic(channel["id"])
        async with open_media_client(sc["media_url"]) as cc:
            with trio.fail_after(10):
                await cc.authenticate(sc["media_token"])
            await gc.ws.aclose()
            await ga2.wait_event("voice_user_left", lambda d: d["user_id"] == users[2].id)
            with trio.fail_after(10):
                await cc.closed.wait()
    with trio.fail_after(10):
        while metric_value(await metrics_text(api.client), "vox_media_participants") != 0:
            await trio.sleep(0.05)


def test_generated_certificate_is_private_and_reused(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    (tmp_path / "keys").mkdir(mode=0o700)
    cert, key = ensure_certificate(config)
    assert stat.S_IMODE(cert.stat().st_mode) == 0o600 and stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    assert ensure_certificate(config) == (cert, key) and cert.read_bytes() == first
    with pytest.raises(ConfigError) as err:
        ensure_certificate(config.replace(media_cert_file=str(cert)))
    assert err.value.key == "media_cert_file"
    assert ensure_certificate(config.replace(media_cert_file=str(cert), media_key_file=str(key))) == (
        cert,
        key,
    )


async def test_shutdown_closes_media_connections(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, shutdown_grace_s=3.0)
    async with httpx.AsyncClient(base_url=d.rest, timeout=10) as http:
        users, _guild, channel = await voice_room(Api(http), 2)
    async with gateway(d, users[0].token, "a") as ga, gateway(d, users[1].token, "b") as gb:
        sessions = [await ga.join_quic(channel["id"]), await gb.join_quic(channel["id"])]
        async with (
            open_media_client(sessions[0]["media_url"]) as ca,
            open_media_client(sessions[1]["media_url"]) as cb,
        ):
            with trio.fail_after(10):
                await ca.authenticate(sessions[0]["media_token"])
                await cb.authenticate(sessions[1]["media_token"])
            started = trio.current_time()
            d.stop.set()
            with trio.fail_after(d.config.shutdown_grace_s):
                await d.done.wait()
                await ca.closed.wait()
            assert ca.close_code == CloseCode.SERVER_SHUTDOWN
            assert trio.current_time() - started < d.config.shutdown_grace_s


async def test_one_transport_per_room_and_one_channel_per_user(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, voice_host_addresses="127.0.0.1")
    try:
        async with httpx.AsyncClient(base_url=d.rest, timeout=10) as http, trio_asyncio.open_loop():
            users, guild, channel = await voice_room(Api(http), 2)
            other = await Api(http).channel(users[0], guild["id"], "Other", "voice")
            async with (
                voice_client(d, users[0].token, "a", 440.0) as a,
                gateway(d, users[1].token, "b") as gb,
            ):
                await a.send("voice_join", {"channel_id": channel["id"]})
                await a.wait_event("voice_room_state", lambda e: e["channel_id"] == channel["id"])
                # A QUIC join of a room in use over WebRTC is refused, with the transport to use.
                await gb.send("voice_join", {"channel_id": channel["id"], "transport": "quic"})
                err = await gb.wait_event("voice_error", lambda e: e["request"] == "voice_join")
                assert (err["code"], err["transport"]) == ("transport_mismatch", "webrtc")
                # A's QUIC join of another channel leaves the WebRTC room first.
                await a.send("voice_join", {"channel_id": other["id"], "transport": "quic"})
                await a.wait_event("voice_user_left", lambda e: e["channel_id"] == channel["id"])
                session = await a.wait_event("voice_media_session")
                assert session["channel_id"] == other["id"]
                assert metric_value(await metrics_text(http), "vox_voice_peers") == 0
                # Now the first channel is free for QUIC; and A's WebRTC join ends its media session.
                await gb.join_quic(channel["id"])
                await a.send("voice_join", {"channel_id": other["id"]})
                await a.wait_event("voice_user_left", lambda e: e["channel_id"] == other["id"])
                await a.wait_event("voice_offer", lambda e: e["channel_id"] == other["id"])
                text = await metrics_text(http)
                assert metric_value(text, "vox_voice_peers") == 1
                assert metric_value(text, "vox_media_participants") == 1
    finally:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


async def test_rights_that_change_during_a_call_apply(md: Daemon, api: Api) -> None:
    users, guild, channel = await voice_room(api, 2)
    async with gateway(md, users[0].token, "a") as ga, gateway(md, users[1].token, "b") as gb:
        sa = await ga.join_quic(channel["id"])
        sb = await gb.join_quic(channel["id"])
        inbox_a = Inbox()
        async with open_media_client(sa["media_url"]) as ca, open_media_client(sb["media_url"]) as cb:
            ca.on_datagram = inbox_a
            with trio.fail_after(10):
                await ca.authenticate(sa["media_token"])
                await cb.authenticate(sb["media_token"])
            cb.send(datagram(sb, 0))
            await cb.flush()
            await inbox_a.wait_count(1)
            # B (not the owner) loses VOICE_SPEAK: its audio stops, its screen still goes.
            await api.everyone(users[0], guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_SPEAK)
            await trio.sleep(0.5)
            cb.send(datagram(sb, 1))
            cb.send(datagram(sb, 2, type_=MediaType.SCREEN, codec=3))
            await cb.flush()
            await inbox_a.wait_count(2)
            await trio.sleep(0.2)
            assert [decode_header(x).sequence for x in inbox_a.datagrams] == [0, 2]
            # Without VOICE_CONNECT B is removed: told why, its connection closed, A sees it go.
            await api.everyone(users[0], guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_CONNECT)
            removed = await gb.wait_event("voice_error", lambda d: d.get("removed") is True)
            assert removed["code"] == "missing_permission"
            await ga.wait_event("voice_user_left", lambda d: d["user_id"] == users[1].id)
            with trio.fail_after(10):
                await cb.closed.wait()


async def test_a_silent_connection_times_out_and_leaves(nursery: trio.Nursery, tmp_path: Path) -> None:
    d = await start_daemon(nursery, tmp_path, media_idle_timeout_s=1.0)
    try:
        async with httpx.AsyncClient(base_url=d.rest, timeout=10) as http:
            users, _guild, channel = await voice_room(Api(http), 2)
            async with gateway(d, users[0].token, "a") as ga, gateway(d, users[1].token, "b") as gb:
                await ga.join_quic(channel["id"])
                sb = await gb.join_quic(channel["id"])
                host, port = sb["media_url"].removeprefix("quic://").rsplit(":", 1)
                vanishing = MediaClient(host, int(port))
                async with trio.open_nursery() as client_tasks:
                    await client_tasks.start(vanishing._run)
                    with trio.fail_after(10):
                        await vanishing.authenticate(sb["media_token"])
                    client_tasks.cancel_scope.cancel()  # gone without a CONNECTION_CLOSE
                vanishing.sock.close()
                started = trio.current_time()
                await ga.wait_event("voice_user_left", lambda e: e["user_id"] == users[1].id, timeout=10)
                assert trio.current_time() - started < 5
                assert metric_value(await metrics_text(http), "vox_media_connections") == 0
    finally:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


async def test_a_handshake_without_the_media_alpn_fails(md: Daemon, api: Api) -> None:
    assert md.addresses.media_url is not None
    host, port = md.addresses.media_url.removeprefix("quic://").rsplit(":", 1)
    client = MediaClient(host, int(port))
    client.quic.configuration.alpn_protocols = ["h3"]
    async with trio.open_nursery() as tasks:
        await tasks.start(client._run)
        with pytest.raises(MediaClientError), trio.fail_after(10):
            await client.authenticate("v1.whatever")
        tasks.cancel_scope.cancel()
    client.sock.close()
    assert client.closed.is_set()
    # The listener is unaffected.
    users, _guild, channel = await voice_room(api, 1)
    async with gateway(md, users[0].token, "a") as ga:
        session = await ga.join_quic(channel["id"])
        async with open_media_client(session["media_url"]) as good:
            with trio.fail_after(10):
                await good.authenticate(session["media_token"])
