"""DM calls over real sockets (protocol.md section 8, docs/protocol.md "DM calls"): REST routes and
the call events on the gateway, on SQLite + the in-process stores and on PostgreSQL + Redis, and
two daemons sharing PostgreSQL + Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from tests import backends
from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User, gd
from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event, frames

__all__ = ["gd"]


async def _dm(api: Api, *names: str) -> tuple[list[User], str]:
    """Users who share a guild, and a DM of them all opened by the first."""
    users = [await api.user(n) for n in names]
    guild = await api.guild(users[0])
    for user in users[1:]:
        await api.join(users[0], user, guild["id"])
    dm = await api.ok(users[0], "POST", "/dms", {"recipients": [u.id for u in users[1:]]}, 201)
    return users, str(dm["id"])


async def _sockets(stack: AsyncExitStack, daemon: Daemon, *users: User) -> list[WebSocketConnection]:
    sockets = []
    for user in users:
        ws, _ = await stack.enter_async_context(gateway(daemon, user.token))
        sockets.append(ws)
    for ws in sockets:
        await frames(ws, 0.2)  # whatever connecting brought
    return sockets


def _call(api: Api, who: User, dm: str, action: str = "", status: int = 200) -> Any:
    method = "GET" if action == "get" else "POST"
    path = f"/dms/{dm}/call" + ("" if action in ("", "get") else f"/{action}")
    return api.ok(who, method, path, status=status)


async def _error(api: Api, who: User, method: str, path: str, status: int) -> dict[str, Any]:
    response = await api.call(who, method, path)
    assert response.status_code == status, (method, path, response.text)
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_ringing_to_active_then_the_last_participant_leaving_ends_it(gd: Daemon) -> None:
    async with gd.http() as client, AsyncExitStack() as stack:
        api = Api(client)
        (ann, bob), dm = await _dm(api, "ann", "bob")
        ann_ws, bob_ws = await _sockets(stack, gd, ann, bob)

        call = await _call(api, ann, dm, status=201)
        assert {k: call[k] for k in ("channel_id", "state", "started_by", "participants", "targets")} == {
            "channel_id": dm,
            "state": "ringing",
            "started_by": ann.id,
            "participants": [ann.id],
            "targets": [bob.id],
        }
        ringing = await event(bob_ws, "call_ringing")
        assert ringing == {
            "channel_id": dm,
            "started_by": ann.id,
            "targets": [bob.id],
            "ring_until": call["ring_until"],
        }
        assert await frames(ann_ws, 0.2) == []  # the caller is not rung
        assert (await _error(api, bob, "POST", f"/dms/{dm}/call", 409))["code"] == "conflict"

        joined = await _call(api, bob, dm, "join")
        assert (joined["state"], joined["participants"]) == ("active", [ann.id, bob.id])
        for ws in (ann_ws, bob_ws):
            assert await event(ws, "call_started") == {
                "channel_id": dm,
                "started_by": ann.id,
                "participants": [ann.id, bob.id],
            }
            assert await event(ws, "call_user_joined") == {
                "channel_id": dm,
                "user_id": bob.id,
                "participants": [ann.id, bob.id],
            }
        # Joining twice is a no-op: the same state, no event.
        assert await _call(api, bob, dm, "join") == joined
        assert await _call(api, ann, dm, "get") == joined
        # Declining once in the call is a contradiction.
        assert (await _error(api, bob, "POST", f"/dms/{dm}/call/decline", 409))["code"] == "conflict"

        left = await _call(api, ann, dm, "leave")
        assert (left["state"], left["participants"]) == ("active", [bob.id])
        for ws in (ann_ws, bob_ws):
            assert await event(ws, "call_user_left") == {
                "channel_id": dm,
                "user_id": ann.id,
                "participants": [bob.id],
            }
        assert await _call(api, ann, dm, "leave") == left  # not in it any more: a no-op

        ended = await _call(api, bob, dm, "leave")
        assert (ended["state"], ended["participants"], ended["ended_reason"]) == (
            "ended",
            [],
            "last_participant_left",
        )
        for ws in (ann_ws, bob_ws):
            await event(ws, "call_user_left")
            assert await event(ws, "call_ended") == {"channel_id": dm, "reason": "last_participant_left"}
        assert (await _call(api, ann, dm, "get"))["state"] == "ended"
        assert (await _error(api, bob, "POST", f"/dms/{dm}/call/join", 409))["code"] == "conflict"
        for ws in (ann_ws, bob_ws):
            assert await frames(ws, 0.2) == []

        # A new call after the end starts afresh.
        again = await _call(api, bob, dm, status=201)
        assert (again["state"], again["started_by"], again["participants"]) == ("ringing", bob.id, [bob.id])
        assert (await event(ann_ws, "call_ringing"))["started_by"] == bob.id


async def test_partial_decline_in_a_group_dm_keeps_it_ringing(gd: Daemon) -> None:
    async with gd.http() as client, AsyncExitStack() as stack:
        api = Api(client)
        (ann, bob, cat), dm = await _dm(api, "ann", "bob", "cat")
        ann_ws, bob_ws, cat_ws = await _sockets(stack, gd, ann, bob, cat)

        await _call(api, ann, dm, status=201)
        for ws in (bob_ws, cat_ws):
            assert (await event(ws, "call_ringing"))["targets"] == sorted([bob.id, cat.id])

        declined = await _call(api, bob, dm, "decline")
        assert (declined["state"], declined["declined"]) == ("ringing", [bob.id])
        for ws in (ann_ws, bob_ws, cat_ws):
            assert await event(ws, "call_declined") == {"channel_id": dm, "user_id": bob.id}
        assert await _call(api, bob, dm, "decline") == declined  # declining twice: a no-op
        assert (await _call(api, cat, dm, "get"))["state"] == "ringing"

        joined = await _call(api, cat, dm, "join")
        assert (joined["state"], joined["participants"]) == ("active", [ann.id, cat.id])
        for ws in (ann_ws, bob_ws, cat_ws):
            await event(ws, "call_started")
            assert (await event(ws, "call_user_joined"))["user_id"] == cat.id
        # Bob declined, but may still come in.
        late = await _call(api, bob, dm, "join")
        assert (late["participants"], late["declined"]) == ([ann.id, cat.id, bob.id], [])
        for ws in (ann_ws, bob_ws, cat_ws):
            assert (await event(ws, "call_user_joined"))["user_id"] == bob.id


async def test_everyone_declining_ends_the_call(gd: Daemon) -> None:
    async with gd.http() as client, AsyncExitStack() as stack:
        api = Api(client)
        (ann, bob, cat), dm = await _dm(api, "ann", "bob", "cat")
        (ann_ws,) = await _sockets(stack, gd, ann)
        await _call(api, ann, dm, status=201)
        await _call(api, cat, dm, "decline")
        assert (await event(ann_ws, "call_declined"))["user_id"] == cat.id
        ended = await _call(api, bob, dm, "decline")
        assert (ended["state"], ended["ended_reason"]) == ("ended", "declined")
        assert (await event(ann_ws, "call_declined"))["user_id"] == bob.id
        assert await event(ann_ws, "call_ended") == {"channel_id": dm, "reason": "declined"}


async def test_the_caller_leaving_while_it_rings_ends_it(gd: Daemon) -> None:
    async with gd.http() as client, AsyncExitStack() as stack:
        api = Api(client)
        (ann, bob), dm = await _dm(api, "ann", "bob")
        (bob_ws,) = await _sockets(stack, gd, bob)
        await _call(api, ann, dm, status=201)
        await event(bob_ws, "call_ringing")
        ended = await _call(api, ann, dm, "leave")
        assert (ended["state"], ended["ended_reason"]) == ("ended", "caller_left")
        assert (await event(bob_ws, "call_user_left"))["user_id"] == ann.id
        assert await event(bob_ws, "call_ended") == {"channel_id": dm, "reason": "caller_left"}
        assert (await _error(api, bob, "POST", f"/dms/{dm}/call/decline", 409))["code"] == "conflict"


@pytest.fixture
async def short_ring(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> AsyncIterator[Daemon]:
    """The ``gd`` daemon with a one-second ring timeout."""
    extra: dict[str, Any] = {"call_ring_timeout_s": 1.0}
    if database_url.startswith("postgresql") and backends.redis_skip_reason() is None:
        extra |= {"redis_url": backends.REDIS_URL, "redis_prefix": f"vox:test:{uuid.uuid4().hex}:"}
    d = await start_daemon(nursery, tmp_path, database_url=database_url, **extra)
    yield d
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()


async def test_an_unanswered_call_times_out_by_itself(short_ring: Daemon) -> None:
    async with short_ring.http() as client, AsyncExitStack() as stack:
        api = Api(client)
        (ann, bob), dm = await _dm(api, "ann", "bob")
        ann_ws, bob_ws = await _sockets(stack, short_ring, ann, bob)
        started = trio.current_time()
        await _call(api, ann, dm, status=201)
        await event(bob_ws, "call_ringing")
        # No request after the start: the daemon's timer ends it and tells everyone.
        for ws in (ann_ws, bob_ws):
            assert await event(ws, "call_ended", timeout=5) == {"channel_id": dm, "reason": "timeout"}
        assert 0.9 <= trio.current_time() - started < 4
        state = await _call(api, bob, dm, "get")
        assert (state["state"], state["ended_reason"]) == ("ended", "timeout")
        assert (await _error(api, bob, "POST", f"/dms/{dm}/call/join", 409))["code"] == "conflict"


async def test_only_recipients_see_a_call_and_bad_ids_are_404(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        (ann, bob, cat), dm = await _dm(api, "ann", "bob", "cat")
        one_to_one = (await api.ok(ann, "POST", "/dms", {"recipients": [bob.id]}, 201))["id"]
        guild = await api.guild(ann, "Other")
        text = (await api.ok(ann, "GET", f"/guilds/{guild['id']}/channels"))[0]["id"]
        paths = [("GET", ""), ("POST", ""), ("POST", "/join"), ("POST", "/decline"), ("POST", "/leave")]

        # No call was ever started: 404 for everything but starting one.
        for method, suffix in paths[:1] + paths[2:]:
            error = await _error(api, ann, method, f"/dms/{one_to_one}/call{suffix}", 404)
            assert error["code"] == "not_found"
        await _call(api, ann, one_to_one, status=201)

        # Cat is not a recipient of the 1:1 DM; nobody can call in a guild channel or an unknown id.
        for who, channel in ((cat, one_to_one), (ann, text), (ann, str(uuid.uuid4())), (ann, "x" * 100)):
            for method, suffix in paths:
                error = await _error(api, who, method, f"/dms/{channel}/call{suffix}", 404)
                assert error == {"code": "not_found", "message": error["message"]}
        # The group DM is untouched by the 1:1 DM's call.
        assert (await _error(api, cat, "GET", f"/dms/{dm}/call", 404))["code"] == "not_found"

        # Every route needs authentication.
        for method, suffix in paths:
            response = await client.request(method, f"/api/v1/dms/{one_to_one}/call{suffix}")
            assert response.status_code == 401, (method, suffix)
            assert response.json()["error"]["code"] == "unauthorized"


async def test_a_call_started_on_one_daemon_is_joined_on_another(
    nursery: trio.Nursery, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    shared = {
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": f"vox:test:{uuid.uuid4().hex}:",
        "data_dir": tmp_path / "shared-keys",
    }
    one = await start_daemon(nursery, tmp_path / "one", **shared)
    two = await start_daemon(nursery, tmp_path / "two", **shared)
    async with one.http() as c1, two.http() as c2, AsyncExitStack() as stack:
        api1, api2 = Api(c1), Api(c2)
        (ann, bob), dm = await _dm(api1, "ann", "bob")
        (ann_ws,) = await _sockets(stack, one, ann)
        (bob_ws,) = await _sockets(stack, two, bob)

        # Both start at once, one on each daemon: exactly one call.
        statuses: list[int] = []

        async def start(api: Api, who: User) -> None:
            statuses.append((await api.call(who, "POST", f"/dms/{dm}/call")).status_code)

        async with trio.open_nursery() as starters:
            starters.start_soon(start, api1, ann)
            starters.start_soon(start, api2, bob)
        assert sorted(statuses) == [201, 409]
        call = await _call(api2, bob, dm, "get")
        caller, callee = (ann, bob) if call["started_by"] == ann.id else (bob, ann)
        callee_ws = bob_ws if callee is bob else ann_ws
        assert (await event(callee_ws, "call_ringing"))["started_by"] == caller.id

        # The callee answers on the other daemon.
        joined = await _call(api2 if callee is bob else api1, callee, dm, "join")
        assert joined["state"] == "active"
        for ws in (ann_ws, bob_ws):
            await event(ws, "call_started")
            assert (await event(ws, "call_user_joined"))["user_id"] == callee.id
        assert (await _call(api1, ann, dm, "get")) == (await _call(api2, bob, dm, "get")) == joined

        await _call(api1, ann, dm, "leave")
        await _call(api2, bob, dm, "leave")
        for ws in (ann_ws, bob_ws):
            await event(ws, "call_user_left")
            await event(ws, "call_user_left")
            assert (await event(ws, "call_ended"))["reason"] == "last_participant_left"
    one.stop.set()
    two.stop.set()
