"""The WebRTC SFU end to end: real aiortc clients join voice channels through the gateway.

SQLite + the in-process broker (the media path does not touch storage). Every client sends its
own tone; receivers find the senders by the dominant frequency of what they receive.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_asyncio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User, voice_room
from tests.e2e.voice_helpers import VoiceClient, metric, voice_client, wait_until
from vox.protocol.permissions import DEFAULT_EVERYONE, Permission

TONES = (440.0, 660.0, 880.0)
TOLERANCE = 30.0


@pytest.fixture
async def vd(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, tmp_path, voice_host_addresses="127.0.0.1", voice_room_limit=3)
    yield d
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


@pytest.fixture
async def loop() -> AsyncIterator[None]:
    """The test's own asyncio loop for the aiortc clients (the daemon has its own)."""
    async with trio_asyncio.open_loop():
        yield


async def metrics(api: Api) -> str:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    return response.text


@pytest.fixture
async def api(vd: Daemon) -> AsyncIterator[Api]:
    """Closed before the daemon stops (an idle keep-alive connection would hold the REST drain)."""
    async with httpx.AsyncClient(base_url=vd.rest, timeout=10) as client:
        yield Api(client)


@asynccontextmanager
async def in_room(daemon: Daemon, users: list[User], channel_id: str) -> AsyncIterator[list[VoiceClient]]:
    """One voice client per user ("a", "b", ... sending TONES[0], TONES[1], ...), each having
    sent voice_join for ``channel_id``."""
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(voice_client(daemon, u.token, chr(97 + i), TONES[i]))
            for i, u in enumerate(users)
        ]
        for client in clients:
            await client.send("voice_join", {"channel_id": channel_id})
        yield clients


def near(freq: float, target: float) -> bool:
    return abs(freq - target) <= TOLERANCE


async def hearing(client: VoiceClient, tones: set[float], timeout: float = 20) -> None:
    """Until the client's received audio carries exactly ``tones``, each on its own track."""

    def ok() -> bool:
        fresh = [r for r in client.audio_tracks() if len(r.samples) >= 25 and _recent(r)]
        found = sorted(r.dominant() for r in fresh)
        return len(found) == len(tones) and all(near(f, t) for f, t in zip(found, sorted(tones), strict=True))

    await wait_until(ok, timeout, f"{client.name} hearing {tones}")


def _recent(record: Any, within: float = 0.5) -> bool:
    """Frames arrived on this track within the last ``within`` seconds."""
    return bool(time.monotonic() - record.last < within)


def track_of(client: VoiceClient, tone: float) -> Any:
    for record in client.audio_tracks():
        if near(record.dominant(), tone):
            return record
    raise AssertionError(f"{client.name} has no track carrying {tone} Hz")


async def silenced(client: VoiceClient, tone: float, others: set[float]) -> None:
    """The track carrying ``tone`` stops receiving frames while the ``others`` keep arriving."""
    record = track_of(client, tone)
    # 0.8 s: a receiver stalled by a busy machine must not pass for silence.
    await wait_until(lambda: not _recent(record, 0.8), 10, f"{tone} silenced at {client.name}")
    before = record.frames
    await trio.sleep(1.0)
    assert record.frames == before, f"{tone} still arriving at {client.name}"
    for other in others:
        assert _recent(track_of(client, other)), f"{other} stopped at {client.name}"


async def test_three_clients_hear_each_other_mute_and_leave(vd: Daemon, api: Api, loop: None) -> None:
    users, _guild, channel = await voice_room(api, 3)
    baseline = metric(await metrics(api), "vox_voice_asyncio_tasks")
    async with (
        voice_client(vd, users[0].token, "a", TONES[0]) as a,
        voice_client(vd, users[1].token, "b", TONES[1]) as b,
        voice_client(vd, users[2].token, "c", TONES[2]) as c,
    ):
        clients = [a, b, c]
        for client in clients:
            await client.send("voice_join", {"channel_id": channel["id"]})
            state = await client.wait_event(
                "voice_room_state", lambda d: any(p["user_id"] for p in d["participants"])
            )
            assert state["channel_id"] == channel["id"]
        for i, client in enumerate(clients):
            await hearing(client, {t for j, t in enumerate(TONES) if j != i})
            assert not any(near(r.dominant(), TONES[i]) for r in client.audio_tracks()), "hears itself"

        # Self-mute stops B's audio at A and C; unmute brings it back.
        await b.send("voice_mute")
        await a.wait_event("voice_user_muted", lambda d: d["user_id"] == users[1].id and d["self_muted"])
        await silenced(a, TONES[1], {TONES[2]})
        await silenced(c, TONES[1], {TONES[0]})
        await b.send("voice_unmute")
        await a.wait_event("voice_user_unmuted", lambda d: d["user_id"] == users[1].id)
        await hearing(a, {TONES[1], TONES[2]})

        # Server mute by the owner stops C's audio; the body undoes it.
        path = f"/channels/{channel['id']}/voice/{users[2].id}/mute"
        denied = await api.call(users[1], "POST", path)
        assert (
            denied.status_code == 403 and denied.json()["error"]["missing_permission"] == "VOICE_MUTE_OTHERS"
        )
        state = await api.ok(users[0], "POST", path)
        assert state["server_muted"] is True and state["muted"] is True
        await silenced(a, TONES[2], {TONES[1]})
        await silenced(b, TONES[2], {TONES[0]})
        await api.ok(users[0], "POST", path, {"muted": False})
        await hearing(b, {TONES[0], TONES[2]})

        # Deafen stops delivery to B only.
        deafen = f"/channels/{channel['id']}/voice/{users[1].id}/deafen"
        await api.ok(users[0], "POST", deafen)
        for tone in (TONES[0], TONES[2]):
            record = track_of(b, tone)
            await wait_until(lambda r=record: not _recent(r, 0.3), 5, "deafened")
        await hearing(a, {TONES[1], TONES[2]})
        await api.ok(users[0], "POST", deafen, {"deafened": False})
        await hearing(b, {TONES[0], TONES[2]})

        # Stats are relayed to the others.
        await a.send("voice_stats", {"latency_ms": 12, "packet_loss": 0.5, "jitter_ms": 3})
        got = await b.wait_event("voice_user_stats", lambda d: d["user_id"] == users[0].id)
        assert got["latency_ms"] == 12

        # Leave, then a disconnect: the others see both go, and the peers are gone.
        await b.send("voice_leave")
        await a.wait_event("voice_user_left", lambda d: d["user_id"] == users[1].id)
        await c.ws.aclose()
        await a.wait_event("voice_user_left", lambda d: d["user_id"] == users[2].id)
        assert metric(await metrics(api), "vox_voice_peers") == 1
        await a.send("voice_leave")
        await a.wait_event("voice_user_left", lambda d: d["user_id"] == users[0].id)

        async def tasks() -> float:
            return metric(await metrics(api), "vox_voice_asyncio_tasks")

        with trio.fail_after(10):
            while await tasks() > baseline:
                await trio.sleep(0.1)
        text = await metrics(api)
        assert metric(text, "vox_voice_peers") == 0
        assert metric(text, "vox_voice_abandoned_peers_total") == 0
        assert metric(text, "vox_voice_forwarded_frames") > 0


async def test_without_voice_speak_nothing_is_forwarded(vd: Daemon, api: Api, loop: None) -> None:
    users, guild, channel = await voice_room(api, 2)
    await api.everyone(users[0], guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_SPEAK)
    async with in_room(vd, users[:2], channel["id"]) as (a, b):
        # B (no VOICE_SPEAK) hears the owner; the owner gets B's track but no audio on it.
        await hearing(b, {TONES[0]})
        await wait_until(lambda: a.answered >= 1 and any(r.kind == "audio" for r in a.received), 10)
        await trio.sleep(1.5)
        assert not a.audio_tracks(), "audio of a member without VOICE_SPEAK was forwarded"


async def test_screen_share_reaches_the_others(vd: Daemon, api: Api, loop: None) -> None:
    from aiortc.mediastreams import VideoStreamTrack

    users, _guild, channel = await voice_room(api, 2)
    async with in_room(vd, users[:2], channel["id"]) as (a, b):
        await hearing(b, {TONES[0]})
        a.screen = VideoStreamTrack()
        offers = b.offers
        await a.send("voice_screen_share_start", {"quality": "720p"})
        started = await b.wait_event("screen_share_started")
        assert started == {"channel_id": channel["id"], "user_id": users[0].id, "quality": "720p"}
        await wait_until(lambda: b.offers > offers, 10, "renegotiation offer")
        await wait_until(
            lambda: any(r.kind == "video" and r.frames > 0 for r in b.received), 20, "video frames"
        )
        await a.send("voice_screen_share_stop")
        await b.wait_event("screen_share_stopped")
        video = next(r for r in b.received if r.kind == "video")
        await wait_until(lambda: not _recent(video, 0.3), 5, "video stopped")
        before = video.frames
        await trio.sleep(0.5)
        assert video.frames == before
        await hearing(b, {TONES[0]})


async def test_voice_errors(vd: Daemon, api: Api, loop: None) -> None:
    users, guild, channel = await voice_room(api, 2)
    text = await api.channel(users[0], guild["id"], "general-2", "text")
    stranger = await api.user("stranger")
    async with voice_client(vd, users[1].token, "b", TONES[1]) as b:

        async def error_for(type_: str, d: Any = None) -> dict[str, Any]:
            await b.send(type_, d)
            return await b.wait_event("voice_error", lambda e: e["request"] == type_)

        assert (await error_for("voice_join", {"channel_id": text["id"]}))["code"] == "not_voice_channel"
        assert (await error_for("voice_answer", {"sdp": "v=0"}))["code"] == "not_in_voice"
        assert (await error_for("voice_leave"))["code"] == "not_in_voice"
        # A DM channel: only DM call participants may join its media.
        dm = await api.ok(users[1], "POST", "/dms", {"recipients": [users[0].id]}, 201)
        assert (await error_for("voice_join", {"channel_id": dm["id"]}))["code"] == "not_in_call"
        # Once in the DM's call (the caller is in it while it rings), its media goes through the SFU.
        await api.ok(users[1], "POST", f"/dms/{dm['id']}/call", status=201)
        await b.send("voice_join", {"channel_id": dm["id"]})
        state = await b.wait_event("voice_room_state", lambda e: e["channel_id"] == dm["id"])
        assert [p["user_id"] for p in state["participants"]] == [users[1].id]
        await wait_until(lambda: b.answered >= 1, 10, "DM call offer answered")
        await b.send("voice_leave")
        await b.wait_event("voice_user_left", lambda e: e["user_id"] == users[1].id)
        await api.everyone(users[0], guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_CONNECT)
        err = await error_for("voice_join", {"channel_id": channel["id"]})
        assert err["code"] == "missing_permission" and err["missing_permission"] == "VOICE_CONNECT"
        # The connection stays open after every refusal.
        await b.send("heartbeat")
        await b.wait_event("heartbeat_ack")
    async with voice_client(vd, stranger.token, "s", TONES[2]) as s:
        await s.send("voice_join", {"channel_id": channel["id"]})
        assert (await s.wait_event("voice_error"))["code"] == "not_found"


async def test_room_limit_and_one_channel_at_a_time(vd: Daemon, api: Api, loop: None) -> None:
    users, guild, channel = await voice_room(api, 4)
    other = await api.channel(users[0], guild["id"], "Other", "voice")
    async with (
        voice_client(vd, users[0].token, "a", TONES[0]) as a,
        voice_client(vd, users[1].token, "b", TONES[1]) as b,
        voice_client(vd, users[2].token, "c", TONES[2]) as c,
        voice_client(vd, users[3].token, "d", 1000.0) as d,
    ):
        for client in (a, b, c):
            await client.send("voice_join", {"channel_id": channel["id"]})
            await client.wait_event("voice_room_state")
        await d.send("voice_join", {"channel_id": channel["id"]})
        assert (await d.wait_event("voice_error"))["code"] == "room_full"
        # Joining another channel leaves the first.
        await c.send("voice_join", {"channel_id": other["id"]})
        await a.wait_event("voice_user_left", lambda e: e["user_id"] == users[2].id)
        await c.wait_event("voice_room_state", lambda e: e["channel_id"] == other["id"])
        # Move B to the other channel (owner has VOICE_MOVE_MEMBERS).
        moved = await api.ok(
            users[0],
            "POST",
            f"/channels/{channel['id']}/voice/{users[1].id}/move",
            {"target_channel_id": other["id"]},
        )
        assert moved == {"user_id": users[1].id, "channel_id": other["id"]}
        await c.wait_event("voice_user_joined", lambda e: e["user_id"] == users[1].id)
        await hearing(c, {TONES[1]})
        # A server mute follows the member to the channel they are moved to.
        await api.ok(users[0], "POST", f"/channels/{other['id']}/voice/{users[1].id}/mute")
        await silenced(c, TONES[1], set())
        a.events.clear()  # earlier room states listed B before the first move
        back = await api.ok(
            users[0],
            "POST",
            f"/channels/{other['id']}/voice/{users[1].id}/move",
            {"target_channel_id": channel["id"]},
        )
        assert back["channel_id"] == channel["id"]
        state = await a.wait_event(
            "voice_room_state", lambda e: any(p["user_id"] == users[1].id for p in e["participants"])
        )
        moved_b = next(p for p in state["participants"] if p["user_id"] == users[1].id)
        assert moved_b["server_muted"] is True
        await trio.sleep(1.5)
        assert not any(_recent(r) for r in a.audio_tracks()), "a moved server-muted member was heard"
        unmute = f"/channels/{channel['id']}/voice/{users[1].id}/mute"
        await api.ok(users[0], "POST", unmute, {"muted": False})
        await hearing(a, {TONES[1]})
        await api.ok(
            users[0],
            "POST",
            f"/channels/{channel['id']}/voice/{users[1].id}/move",
            {"target_channel_id": other["id"]},
        )
        await c.wait_event("voice_user_joined", lambda e: e["user_id"] == users[1].id)
        await hearing(c, {TONES[1]})
        await hearing(b, {TONES[2]})
        missing = await api.call(users[0], "POST", f"/channels/{channel['id']}/voice/{users[3].id}/mute")
        assert missing.status_code == 404


async def test_rights_that_change_during_a_call_apply_at_once(vd: Daemon, api: Api, loop: None) -> None:
    users, guild, channel = await voice_room(api, 3)
    owner, b_user, c_user = users
    async with in_room(vd, [owner, b_user, c_user], channel["id"]) as (a, b, c):
        await hearing(a, {TONES[1], TONES[2]})

        # @everyone loses VOICE_SPEAK: B and C fall silent at the owner (who keeps every right).
        await api.everyone(owner, guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_SPEAK)
        await wait_until(lambda: not any(_recent(r, 0.3) for r in a.audio_tracks()), 10, "B and C silenced")
        await hearing(b, {TONES[0]})
        await api.everyone(owner, guild["id"], DEFAULT_EVERYONE)
        await hearing(a, {TONES[1], TONES[2]})

        # A kick (announced on the member's own topic) takes C out of the room.
        await api.ok(owner, "DELETE", f"/guilds/{guild['id']}/members/{c_user.id}", status=204)
        removed = await c.wait_event("voice_error", lambda e: e.get("removed"))
        assert removed["code"] == "not_found" and removed["request"] is None
        await a.wait_event("voice_user_left", lambda e: e["user_id"] == c_user.id)

        # @everyone loses VOICE_CONNECT (announced on the guild topic): B is taken out too.
        await api.everyone(owner, guild["id"], DEFAULT_EVERYONE & ~Permission.VOICE_CONNECT)
        removed = await b.wait_event("voice_error", lambda e: e.get("removed"))
        assert removed["code"] == "missing_permission" and removed["missing_permission"] == "VOICE_CONNECT"
        await a.wait_event("voice_user_left", lambda e: e["user_id"] == b_user.id)
        assert metric(await metrics(api), "vox_voice_peers") == 1


async def test_dm_call_and_its_media_end_together(vd: Daemon, api: Api, loop: None) -> None:
    x = await api.user("xena")
    y = await api.user("yuri")
    guild = await api.guild(x)
    await api.join(x, y, guild["id"])
    dm = await api.ok(x, "POST", "/dms", {"recipients": [y.id]}, 201)
    call = f"/dms/{dm['id']}/call"
    async with (
        voice_client(vd, x.token, "x", TONES[0]) as xc,
        voice_client(vd, y.token, "y", TONES[1]) as yc,
    ):
        await api.ok(x, "POST", call, status=201)
        await xc.send("voice_join", {"channel_id": dm["id"]})
        await yc.wait_event("call_ringing")
        await api.ok(y, "POST", f"{call}/join")
        await yc.send("voice_join", {"channel_id": dm["id"]})
        await hearing(xc, {TONES[1]})
        await hearing(yc, {TONES[0]})

        # Leaving the call over REST (from any device) takes that user's media out of the room.
        await api.ok(y, "POST", f"{call}/leave")
        removed = await yc.wait_event("voice_error", lambda e: e.get("removed"))
        assert removed["code"] == "not_in_call"
        await xc.wait_event("voice_user_left", lambda e: e["user_id"] == y.id)
        assert (await api.ok(x, "GET", call))["participants"] == [x.id]

        # The last participant's media going away (here: their connection drops) ends the call.
        await xc.ws.aclose()
        ended = await yc.wait_event("call_ended", lambda e: e["channel_id"] == dm["id"])
        assert ended["reason"] == "last_participant_left"
    state = await api.ok(y, "GET", call)
    assert state["state"] == "ended" and state["participants"] == []
    assert metric(await metrics(api), "vox_voice_peers") == 0


async def test_media_ports_stay_in_the_configured_range(
    nursery: trio.Nursery, tmp_path: Path, loop: None
) -> None:
    daemon = await start_daemon(
        nursery, tmp_path, voice_host_addresses="127.0.0.1", voice_udp_ports="41000-41003"
    )
    async with httpx.AsyncClient(base_url=daemon.rest, timeout=10) as http:
        users, _guild, channel = await voice_room(Api(http), 2)
        async with in_room(daemon, users[:2], channel["id"]) as (a, b):
            await hearing(b, {TONES[0]})
            await hearing(a, {TONES[1]})
            ports = set()
            for client in (a, b):
                sdp = next(f["d"]["sdp"] for f in client.events if f["type"] == "voice_offer")
                lines = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
                ports |= {int(line.split()[5]) for line in lines}
            assert len(ports) == 2 and ports <= set(range(41000, 41004)), ports
    daemon.stop.set()
    with trio.fail_after(15):
        await daemon.done.wait()


async def test_shutdown_with_three_active_peers(nursery: trio.Nursery, tmp_path: Path, loop: None) -> None:
    daemon = await start_daemon(nursery, tmp_path, voice_host_addresses="127.0.0.1", shutdown_grace_s=3.0)
    http = httpx.AsyncClient(base_url=daemon.rest, timeout=10)
    users, _guild, channel = await voice_room(Api(http), 3)
    async with in_room(daemon, users[:3], channel["id"]) as (a, b, c):
        for i, client in enumerate((a, b, c)):
            await hearing(client, {t for j, t in enumerate(TONES) if j != i})
        await http.aclose()  # an idle keep-alive connection would hold the REST drain
        started = trio.current_time()
        daemon.stop.set()
        with trio.fail_after(daemon.config.shutdown_grace_s):
            await daemon.done.wait()
        assert trio.current_time() - started < daemon.config.shutdown_grace_s
