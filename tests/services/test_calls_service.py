"""CallService without HTTP: compare-and-append under concurrency, the lazy and the timed ring
timeout when two services (two daemons) share one Ephemeral store, is_participant, and the
per-call event cap. Runs on the in-process store and on Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis
import trio

from vox.ephemeral import Ephemeral, open_ephemeral
from vox.errors import Conflict, NotFound
from vox.protocol.calls import Joined, Left, encode_event
from vox.protocol.gateway import open_envelope
from vox.pubsub import Broker, Message, Subscription, open_broker
from vox.services import calls as calls_module
from vox.services.calls import CallService
from vox.storage.dms import Dms

DM = "0190f0f0-0000-7000-8000-000000000001"
ANN, BOB, CAT = "ann", "bob", "cat"


class FakeDms:
    """Only what CallService reads: a DM's recipients."""

    def __init__(self, recipients: dict[str, list[str]]) -> None:
        self.recipients = recipients

    async def recipient_ids(self, channel_id: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self.recipients.get(channel_id, []))


def service(ephemeral: Ephemeral, broker: Broker, ring_timeout_s: float = 90.0) -> CallService:
    dms = cast(Dms, FakeDms({DM: [ANN, BOB, CAT]}))
    return CallService(dms, ephemeral, broker, ring_timeout_s=ring_timeout_s)


@pytest.fixture(params=["memory", "redis"])
async def ephemeral(request: pytest.FixtureRequest) -> AsyncIterator[Ephemeral]:
    url = None if request.param == "memory" else str(request.getfixturevalue("redis_url"))
    prefix = f"vox:test:calls:{uuid.uuid4().hex}:"
    async with open_ephemeral(url, prefix=prefix) as store:
        yield store
    if url is not None:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with open_broker(None) as b:
        yield b


async def drain(sub: Subscription, wait: float = 0.2) -> list[tuple[str, str, Any]]:
    got: list[tuple[str, str, Any]] = []
    with trio.move_on_after(wait):
        async for message in sub:
            got.append(_decoded(message))
    return got


def _decoded(message: Message) -> tuple[str, str, Any]:
    event = open_envelope(message.payload)
    return message.topic, event.type, json.loads(event.d_json)


async def test_concurrent_starts_and_joins_each_have_one_winner(ephemeral: Ephemeral, broker: Broker) -> None:
    one, two = service(ephemeral, broker), service(ephemeral, broker)
    outcomes: list[str] = []

    async def start(s: CallService, who: str) -> None:
        try:
            await s.start(who, DM)
            outcomes.append("started")
        except Conflict:
            outcomes.append("conflict")

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(start, one if i % 2 else two, (ANN, BOB, CAT)[i % 3])
    assert sorted(outcomes) == ["conflict"] * 9 + ["started"]

    call = await one.get(ANN, DM)
    callee = call["targets"][0]
    async with broker.subscribe([f"user:{u}" for u in (ANN, BOB, CAT)]) as sub:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon((one if i % 2 else two).join, callee, DM)
        events = [e for _, e, _ in await drain(sub)]
    # One Joined was appended, so one call_started and one call_user_joined per recipient.
    assert sorted(events) == ["call_started"] * 3 + ["call_user_joined"] * 3
    assert (await two.get(ANN, DM))["participants"] == [call["started_by"], callee]


async def test_a_timeout_is_applied_once_by_whichever_daemon_looks_first(
    ephemeral: Ephemeral, broker: Broker
) -> None:
    one = service(ephemeral, broker, ring_timeout_s=0.3)  # started here, but it never runs its timer
    two = service(ephemeral, broker)
    await one.start(ANN, DM)
    assert await two.is_participant(DM, ANN)
    await trio.sleep(0.4)
    assert not await two.is_participant(DM, ANN)  # past the deadline: not in a call any more
    async with broker.subscribe([f"user:{u}" for u in (ANN, BOB, CAT)]) as sub:
        async with trio.open_nursery() as nursery:
            for s in (one, two, one, two):
                nursery.start_soon(s.get, BOB, DM)
        got = await drain(sub)
    assert sorted(topic for topic, _, _ in got) == [f"user:{u}" for u in (ANN, BOB, CAT)]
    assert {(e, d["reason"]) for _, e, d in got} == {("call_ended", "timeout")}
    state = await two.get(CAT, DM)
    assert (state["state"], state["ended_reason"]) == ("ended", "timeout")
    with pytest.raises(Conflict):
        await two.join(BOB, DM)
    # A new call starts afresh in the same log.
    fresh = await two.start(BOB, DM)
    assert (fresh["state"], fresh["started_by"], fresh["participants"]) == ("ringing", BOB, [BOB])


async def test_the_timer_of_the_starting_daemon_pushes_call_ended(
    ephemeral: Ephemeral, broker: Broker
) -> None:
    s = service(ephemeral, broker, ring_timeout_s=0.3)
    draining = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run_timers, draining)
        async with broker.subscribe([f"user:{BOB}"]) as sub:
            await s.start(ANN, DM)
            with trio.fail_after(2):
                assert _decoded(await sub.__anext__())[1] == "call_ringing"
                _, type_, d = _decoded(await sub.__anext__())
            assert (type_, d) == ("call_ended", {"channel_id": DM, "reason": "timeout"})
        draining.set()  # run_timers returns: the nursery closes


async def test_an_answered_call_does_not_time_out(ephemeral: Ephemeral, broker: Broker) -> None:
    s = service(ephemeral, broker, ring_timeout_s=0.2)
    draining = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run_timers, draining)
        await s.start(ANN, DM)
        await s.join(CAT, DM)
        await trio.sleep(0.4)
        state = await s.get(BOB, DM)
        assert (state["state"], state["participants"]) == ("active", [ANN, CAT])
        assert await s.is_participant(DM, CAT) and not await s.is_participant(DM, BOB)
        draining.set()


async def test_recipients_only_and_no_call_is_404(ephemeral: Ephemeral, broker: Broker) -> None:
    s = service(ephemeral, broker)
    for op in (s.get, s.join, s.decline, s.leave):
        with pytest.raises(NotFound):
            await op(ANN, DM)  # no call yet
    await s.start(ANN, DM)
    for op in (s.get, s.join, s.decline, s.leave, s.start):
        with pytest.raises(NotFound):
            await op("dan", DM)
        with pytest.raises(NotFound):
            await op(ANN, "x" * 65)
    assert not await s.is_participant("x" * 65, ANN)
    assert not await s.is_participant("another-channel", ANN)


async def test_joins_are_capped_per_call_but_leaving_always_works(
    ephemeral: Ephemeral, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calls_module, "MAX_CALL_EVENTS", 6)
    s = service(ephemeral, broker)
    await s.start(ANN, DM)
    await s.join(BOB, DM)  # 2 events
    for _ in range(2):
        await s.leave(BOB, DM)
        await s.join(BOB, DM)  # 6 events
    with pytest.raises(Conflict):
        await s.join(CAT, DM)
    await s.leave(BOB, DM)
    state = await s.get(ANN, DM)
    assert state["participants"] == [ANN]
    await s.leave(ANN, DM)
    assert (await s.get(ANN, DM))["state"] == "ended"


async def test_a_log_that_lost_its_head_reads_as_no_call(ephemeral: Ephemeral, broker: Broker) -> None:
    # Entries without a Started before them (a trimmed or foreign log) are no call at all.
    first = await ephemeral.append(f"call:{DM}", encode_event(Joined(BOB, 1)), 10, after="")
    assert first is not None
    await ephemeral.append(f"call:{DM}", encode_event(Left(BOB, 2)), 10, after=first)
    s = service(ephemeral, broker)
    with pytest.raises(NotFound):
        await s.get(ANN, DM)
    assert (await s.start(ANN, DM))["state"] == "ringing"
