"""Friends over real sockets (protocol.md section 4): requests, accepting, declining, cancelling,
unfriending, the opposite-request case, and which gateway connections hear of it, on SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

import trio

from tests.e2e.conftest import Daemon
from tests.e2e.guild_helpers import Api, User, assert_status, gd
from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event, frames

__all__ = ["gd"]


def _who(obj: dict[str, Any]) -> str:
    return str(obj["user"]["id"])


async def test_request_accept_remove_with_events(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        ann, bob, cat = [await api.user(n) for n in ("ann", "bob", "cat")]
        async with (
            gateway(gd, ann.token) as (ann_ws, _),
            gateway(gd, bob.token) as (bob_ws, _),
            gateway(gd, bob.token) as (bob_ws2, _),
            gateway(gd, cat.token) as (cat_ws, _),
        ):
            # Usernames match case-insensitively.
            request = await api.ok(ann, "POST", "/friends/requests", {"username": "BOB"}, 201)
            assert set(request) == {"id", "user", "created_at"} and _who(request) == bob.id
            assert request["user"]["username"] == "bob" and request["created_at"].endswith("Z")
            # Every device of the addressee hears of it; nobody else does.
            for ws in (bob_ws, bob_ws2):
                received = await event(ws, "friend_request_received")
                assert received == {"request": {**request, "user": received["request"]["user"]}}
                assert _who(received["request"]) == ann.id
            assert await frames(ann_ws, 0.3) == [] and await frames(cat_ws, 0.05) == []

            assert await api.ok(ann, "GET", "/friends") == {
                "friends": [],
                "incoming": [],
                "outgoing": [request],
            }
            bob_view = await api.ok(bob, "GET", "/friends")
            assert bob_view["friends"] == [] and bob_view["outgoing"] == []
            assert [(r["id"], _who(r)) for r in bob_view["incoming"]] == [(request["id"], ann.id)]
            assert await api.ok(cat, "GET", "/friends") == {"friends": [], "incoming": [], "outgoing": []}

            # A second request either way is not a new one.
            assert_status(
                await api.call(ann, "POST", "/friends/requests", {"username": "bob"}), 409, "conflict"
            )
            # Only the addressee accepts.
            assert_status(
                await api.call(ann, "POST", f"/friends/requests/{request['id']}/accept"), 403, "forbidden"
            )
            assert_status(
                await api.call(cat, "POST", f"/friends/requests/{request['id']}/accept"), 404, "not_found"
            )
            assert_status(
                await api.call(cat, "DELETE", f"/friends/requests/{request['id']}"), 404, "not_found"
            )

            accepted = await api.ok(bob, "POST", f"/friends/requests/{request['id']}/accept")
            assert set(accepted) == {"user", "since"} and _who(accepted) == ann.id
            to_ann = await event(ann_ws, "friend_request_accepted")
            assert _who(to_ann) == bob.id and to_ann["since"] == accepted["since"]
            for ws in (bob_ws, bob_ws2):
                assert await event(ws, "friend_request_accepted") == accepted
            assert await frames(cat_ws, 0.3) == []

            ann_view = await api.ok(ann, "GET", "/friends")
            assert ann_view["incoming"] == [] and ann_view["outgoing"] == []
            assert [(f["id"], f["username"], f["since"]) for f in ann_view["friends"]] == [
                (bob.id, "bob", accepted["since"])
            ]
            assert set(ann_view["friends"][0]) == {
                *("id", "username", "display_name", "avatar", "is_admin", "created_at"),
                "since",
            }
            assert [f["id"] for f in (await api.ok(bob, "GET", "/friends"))["friends"]] == [ann.id]

            # Friends already: both directions conflict; the request id names no request any more.
            for me, them in ((ann, "bob"), (bob, "ann")):
                assert_status(
                    await api.call(me, "POST", "/friends/requests", {"username": them}), 409, "conflict"
                )
            assert_status(
                await api.call(bob, "POST", f"/friends/requests/{request['id']}/accept"), 404, "not_found"
            )
            assert_status(
                await api.call(bob, "DELETE", f"/friends/requests/{request['id']}"), 404, "not_found"
            )
            assert len((await api.ok(bob, "GET", "/friends"))["friends"]) == 1

            # Unfriending works from either side, once, and sends nothing.
            assert_status(await api.call(cat, "DELETE", f"/friends/{ann.id}"), 404, "not_found")
            await api.ok(bob, "DELETE", f"/friends/{ann.id}", status=204)
            assert_status(await api.call(ann, "DELETE", f"/friends/{bob.id}"), 404, "not_found")
            for user in (ann, bob):
                assert await api.ok(user, "GET", "/friends") == {
                    "friends": [],
                    "incoming": [],
                    "outgoing": [],
                }
            assert await frames(ann_ws, 0.3) == [] and await frames(bob_ws, 0.05) == []
            # And they can start over.
            await api.ok(bob, "POST", "/friends/requests", {"username": "ann"}, 201)
            assert _who((await event(ann_ws, "friend_request_received"))["request"]) == bob.id


async def test_opposite_request_accepts(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        ann, bob, cat = [await api.user(n) for n in ("ann", "bob", "cat")]
        request = await api.ok(ann, "POST", "/friends/requests", {"username": "bob"}, 201)
        async with gateway(gd, ann.token) as (ann_ws, _), gateway(gd, cat.token) as (cat_ws, _):
            # bob asking ann back accepts ann's request instead of making a second one.
            accepted = await api.ok(bob, "POST", "/friends/requests", {"username": "Ann"})
            assert _who(accepted) == ann.id and accepted["since"] is not None
            assert _who(await event(ann_ws, "friend_request_accepted")) == bob.id
            assert await frames(cat_ws, 0.3) == []
        for me, other in ((ann, bob), (bob, ann)):
            view = await api.ok(me, "GET", "/friends")
            assert [f["id"] for f in view["friends"]] == [other.id]
            assert view["incoming"] == [] and view["outgoing"] == []
        assert_status(
            await api.call(bob, "POST", f"/friends/requests/{request['id']}/accept"), 404, "not_found"
        )


async def test_decline_and_cancel(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        ann, bob = await api.user("ann"), await api.user("bob")
        # Declined by the addressee...
        first = await api.ok(ann, "POST", "/friends/requests", {"username": "bob"}, 201)
        await api.ok(bob, "DELETE", f"/friends/requests/{first['id']}", status=204)
        assert_status(await api.call(bob, "DELETE", f"/friends/requests/{first['id']}"), 404, "not_found")
        assert_status(
            await api.call(bob, "POST", f"/friends/requests/{first['id']}/accept"), 404, "not_found"
        )
        for user in (ann, bob):
            assert await api.ok(user, "GET", "/friends") == {"friends": [], "incoming": [], "outgoing": []}
        # ...or cancelled by the requester; a new request is possible each time.
        second = await api.ok(ann, "POST", "/friends/requests", {"username": "bob"}, 201)
        assert second["id"] != first["id"]
        await api.ok(ann, "DELETE", f"/friends/requests/{second['id']}", status=204)
        assert_status(
            await api.call(bob, "POST", f"/friends/requests/{second['id']}/accept"), 404, "not_found"
        )
        assert (await api.ok(bob, "GET", "/friends"))["incoming"] == []
        # Deleting a request never touches a friendship.
        third = await api.ok(bob, "POST", "/friends/requests", {"username": "ann"}, 201)
        await api.ok(ann, "POST", f"/friends/requests/{third['id']}/accept")
        assert_status(await api.call(ann, "DELETE", f"/friends/requests/{third['id']}"), 404, "not_found")
        assert [f["id"] for f in (await api.ok(ann, "GET", "/friends"))["friends"]] == [bob.id]


async def test_lists_order(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        me = await api.user("me")
        others = {n: await api.user(n) for n in ("Zed", "amy", "a.z", "bo", "cy")}
        for name in ("Zed", "amy", "a.z"):
            request = await api.ok(others[name], "POST", "/friends/requests", {"username": "me"}, 201)
            await api.ok(me, "POST", f"/friends/requests/{request['id']}/accept")
        await api.ok(others["bo"], "POST", "/friends/requests", {"username": "me"}, 201)
        await trio.sleep(0.01)  # times have millisecond resolution
        await api.ok(others["cy"], "POST", "/friends/requests", {"username": "me"}, 201)
        view = await api.ok(me, "GET", "/friends")
        # By name, case-insensitively, in code point order on every backend ("." before letters).
        assert [f["username"] for f in view["friends"]] == ["a.z", "amy", "Zed"]
        assert [r["user"]["username"] for r in view["incoming"]] == ["cy", "bo"]  # newest first


async def test_concurrent_opposite_requests_make_friends(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        statuses: list[int] = []

        async def ask(me: User, other: User) -> None:
            response = await api.call(me, "POST", "/friends/requests", {"username": other.name})
            statuses.append(response.status_code)

        for round_ in range(4):
            ann, bob = await api.user(f"ann{round_}"), await api.user(f"bob{round_}")
            statuses.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, ann, bob)
                nursery.start_soon(ask, bob, ann)
            # One request was made and the other accepted it: friends, with no request left over.
            assert sorted(statuses) == [200, 201]
            view = await api.ok(ann, "GET", "/friends")
            assert [f["id"] for f in view["friends"]] == [bob.id]
            assert view["incoming"] == [] and view["outgoing"] == []


async def test_bad_friend_requests(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        ann = await api.user("ann")
        for name in ("ann", "ANN"):
            error = assert_status(
                await api.call(ann, "POST", "/friends/requests", {"username": name}), 400, "validation_error"
            )
            assert "username" in error["fields"]
        for body in ({}, {"username": 5}, {"username": ""}, {"username": "x" * 65}, {"user": "bob"}):
            error = assert_status(
                await api.call(ann, "POST", "/friends/requests", body), 400, "validation_error"
            )
            assert "username" in error["fields"], body
        for name in ("nobody", "x" * 64, "b%ob"):
            assert_status(
                await api.call(ann, "POST", "/friends/requests", {"username": name}), 404, "not_found"
            )
        for bad in ("nope", "00000000-0000-4000-8000-000000000000", "x" * 100):
            assert_status(await api.call(ann, "POST", f"/friends/requests/{bad}/accept"), 404, "not_found")
            assert_status(await api.call(ann, "DELETE", f"/friends/requests/{bad}"), 404, "not_found")
            assert_status(await api.call(ann, "DELETE", f"/friends/{bad}"), 404, "not_found")
        assert await api.ok(ann, "GET", "/friends") == {"friends": [], "incoming": [], "outgoing": []}


async def test_friend_routes_need_auth(gd: Daemon) -> None:
    async with gd.http() as client:
        for method, path in [
            ("GET", "/api/v1/friends"),
            ("POST", "/api/v1/friends/requests"),
            ("POST", "/api/v1/friends/requests/x/accept"),
            ("DELETE", "/api/v1/friends/requests/x"),
            ("DELETE", "/api/v1/friends/x"),
        ]:
            assert_status(await client.request(method, path), 401, "unauthorized")
