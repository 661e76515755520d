"""Direct messages over real sockets (protocol.md section 4): opening, reusing and listing DMs,
bad input, who may open a DM with whom, messages in DMs and their gateway events, on SQLite and
PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import trio

from tests.e2e.conftest import Daemon
from tests.e2e.guild_helpers import Api, User, assert_missing, assert_status, gd
from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event, frames
from vox.protocol.permissions import DM_PERMISSIONS, Permission

__all__ = ["gd"]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


async def _community(api: Api, *names: str) -> tuple[list[User], dict[str, Any]]:
    """Users who all share one guild (the first owns it)."""
    users = [await api.user(n) for n in names]
    guild = await api.guild(users[0])
    for user in users[1:]:
        await api.join(users[0], user, guild["id"])
    return users, guild


def _public(user: User) -> tuple[str, str]:
    return user.id, user.name


async def test_open_reuse_and_list(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        (ann, bob, cat), _ = await _community(api, "ann", "bob", "cat")

        dm = await api.ok(ann, "POST", "/dms", {"recipients": [bob.id]}, 201)
        assert {k: v for k, v in dm.items() if k != "recipients"} == {
            "id": dm["id"],
            "guild_id": None,
            "name": None,
            "channel_type": "dm",
            "category_id": None,
            "position": 0,
            "last_message_id": None,
        }
        # Every participant, the caller included, by username; public user objects only.
        assert [(u["id"], u["username"]) for u in dm["recipients"]] == [_public(ann), _public(bob)]
        assert set(dm["recipients"][0]) == {
            "id",
            "username",
            "display_name",
            "avatar",
            "is_admin",
            "created_at",
        }

        # The 1:1 DM is reused from either side, and a repeated id counts once.
        assert await api.ok(ann, "POST", "/dms", {"recipients": [bob.id]}) == dm
        assert await api.ok(bob, "POST", "/dms", {"recipients": [ann.id, ann.id]}) == dm

        # Group DMs are never reused. (The sleeps order creation times, which count milliseconds.)
        await trio.sleep(0.01)
        group = await api.ok(ann, "POST", "/dms", {"recipients": [bob.id, cat.id]}, 201)
        await trio.sleep(0.01)
        other_group = await api.ok(ann, "POST", "/dms", {"recipients": [cat.id, bob.id]}, 201)
        assert group["id"] != other_group["id"]
        assert [u["username"] for u in group["recipients"]] == ["ann", "bob", "cat"]
        assert group["channel_type"] == "dm" and group["guild_id"] is None

        # Latest activity first: creation, or the newest message.
        listed = await api.ok(ann, "GET", "/dms")
        assert [d["id"] for d in listed] == [other_group["id"], group["id"], dm["id"]]
        await trio.sleep(0.01)
        message = await api.ok(bob, "POST", f"/channels/{dm['id']}/messages", {"content": "hi"}, 201)
        listed = await api.ok(ann, "GET", "/dms")
        assert [d["id"] for d in listed] == [dm["id"], other_group["id"], group["id"]]
        assert listed[0]["last_message_id"] == message["id"]
        assert {d["id"] for d in await api.ok(cat, "GET", "/dms")} == {group["id"], other_group["id"]}

        # A 1:1 DM with a third person is another channel.
        cat_dm = await api.ok(cat, "POST", "/dms", {"recipients": [ann.id]}, 201)
        assert cat_dm["id"] not in {dm["id"], group["id"], other_group["id"]}


async def test_concurrent_opens_make_one_dm(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        (ann, bob), _ = await _community(api, "ann", "bob")
        statuses: list[int] = []
        ids: set[str] = set()

        async def open_dm(me: User, other: User) -> None:
            response = await api.call(me, "POST", "/dms", {"recipients": [other.id]})
            statuses.append(response.status_code)
            ids.add(response.json()["id"])

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(open_dm, *((ann, bob) if i % 2 else (bob, ann)))
        assert len(ids) == 1
        assert sorted(statuses) == [200] * 7 + [201]
        assert len(await api.ok(ann, "GET", "/dms")) == 1


async def test_group_limits_and_bad_input_write_nothing(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        users, _ = await _community(api, "ann", *(f"u{i}" for i in range(10)))
        ann, others = users[0], users[1:]
        stranger = str(uuid.uuid4())
        cases: list[Any] = [
            {},
            {"recipients": None},
            {"recipients": others[0].id},  # not a list
            {"recipients": {"id": others[0].id}},
            {"recipients": [1]},
            {"recipients": []},
            {"recipients": [u.id for u in others]},  # 10 others: 11 people
            {"recipients": [str(uuid.uuid4()) for _ in range(101)]},
            {"recipients": [ann.id]},  # yourself
            {"recipients": [others[0].id, ann.id]},
            {"recipients": [stranger]},  # no such user
            {"recipients": [others[0].id, stranger]},
            {"recipients": ["not-a-uuid"]},
            {"recipients": [others[0].id.upper()]},
            {"recipients": [others[0].id, "x" * 65]},
        ]
        for body in cases:
            error = assert_status(await api.call(ann, "POST", "/dms", body), 400, "validation_error")
            assert "recipients" in error["fields"], (body, error)
        bad_json = await client.post(
            "/api/v1/dms", headers={**ann.h, "content-type": "application/json"}, content=b"{nope"
        )
        assert_status(bad_json, 400, "validation_error")
        for user in users:
            assert await api.ok(user, "GET", "/dms") == []

        # Ten people in all is the most a group DM holds.
        full = await api.ok(ann, "POST", "/dms", {"recipients": [u.id for u in others[:9]]}, 201)
        assert len(full["recipients"]) == 10


async def test_dm_policy_shared_guild_or_friends(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        (ann, bob), guild = await _community(api, "ann", "bob")
        eve = await api.user("eve")  # shares nothing with anyone

        refused = assert_status(
            await api.call(ann, "POST", "/dms", {"recipients": [eve.id]}), 403, "forbidden"
        )
        assert refused["user_ids"] == [eve.id]
        refused = assert_status(
            await api.call(ann, "POST", "/dms", {"recipients": [bob.id, eve.id]}), 403, "forbidden"
        )
        assert refused["user_ids"] == [eve.id]
        assert_status(await api.call(eve, "POST", "/dms", {"recipients": [ann.id]}), 403, "forbidden")
        assert await api.ok(ann, "GET", "/dms") == [] and await api.ok(eve, "GET", "/dms") == []

        # Friends may open DMs without sharing a guild...
        request = await api.ok(ann, "POST", "/friends/requests", {"username": "eve"}, 201)
        assert_status(await api.call(ann, "POST", "/dms", {"recipients": [eve.id]}), 403, "forbidden")
        await api.ok(eve, "POST", f"/friends/requests/{request['id']}/accept")
        dm = await api.ok(eve, "POST", "/dms", {"recipients": [ann.id]}, 201)
        group = await api.ok(ann, "POST", "/dms", {"recipients": [bob.id, eve.id]}, 201)
        # ...but a group DM needs every member to be the creator's contact, not each other's.
        assert_status(await api.call(bob, "POST", "/dms", {"recipients": [ann.id, eve.id]}), 403, "forbidden")

        # Unfriending, or leaving the shared guild, stops new DMs being opened...
        await api.ok(ann, "DELETE", f"/friends/{eve.id}", status=204)
        assert_status(await api.call(ann, "POST", "/dms", {"recipients": [eve.id]}), 403, "forbidden")
        await api.ok(bob, "DELETE", f"/guilds/{guild['id']}/members/{bob.id}", status=204)
        assert_status(await api.call(bob, "POST", "/dms", {"recipients": [ann.id]}), 403, "forbidden")
        # ...while DMs already open stay usable by their recipients.
        await api.ok(eve, "POST", f"/channels/{dm['id']}/messages", {"content": "still here"}, 201)
        await api.ok(bob, "POST", f"/channels/{group['id']}/messages", {"content": "me too"}, 201)


async def test_messages_in_dms_are_for_recipients_only(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        (ann, bob, cat), guild = await _community(api, "ann", "bob", "cat")
        dm = await api.ok(ann, "POST", "/dms", {"recipients": [bob.id]}, 201)
        path = f"/channels/{dm['id']}/messages"

        sent = await api.ok(ann, "POST", path, {"content": f"hi <@{bob.id}>"}, 201)
        assert sent["channel_id"] == dm["id"] and sent["guild_id"] is None
        assert sent["mentions"] == [bob.id]
        assert [m["id"] for m in await api.ok(bob, "GET", path)] == [sent["id"]]
        await api.ok(bob, "PUT", f"/messages/{sent['id']}/reactions/👍", status=204)
        assert (await api.ok(ann, "GET", path))[0]["reactions"] == [{"emoji": "👍", "count": 1, "me": False}]
        # Custom emoji belong to guilds: none can be used in a DM.
        assert_status(
            await api.call(bob, "PUT", f"/messages/{sent['id']}/reactions/:party:"), 400, "validation_error"
        )
        assert (await api.ok(bob, "GET", f"/channels/{dm['id']}/permissions/@me"))["permissions"] == int(
            DM_PERMISSIONS
        )
        upload = await client.post(
            f"/api/v1{path}/upload", headers=bob.h, files=[("file", ("cat.png", PNG, "image/png"))]
        )
        assert upload.status_code == 201, upload.text
        attachment = upload.json()["attachments"][0]["url"]
        assert (await client.get(attachment, headers=ann.h)).content == PNG
        edited = await api.ok(ann, "PATCH", f"/messages/{sent['id']}", {"content": "hello"})
        assert edited["content"] == "hello"

        # Everyone else, a co-member of the guild included, finds nothing there.
        for outsider in (cat, await api.user("eve")):
            assert_status(await api.call(outsider, "GET", path), 404, "not_found")
            assert_status(await api.call(outsider, "POST", path, {"content": "let me in"}), 404, "not_found")
            assert_status(
                await api.call(outsider, "PUT", f"/messages/{sent['id']}/reactions/👍"), 404, "not_found"
            )
            assert_status(
                await api.call(outsider, "PATCH", f"/messages/{sent['id']}", {"content": "x"}),
                404,
                "not_found",
            )
            assert_status(await api.call(outsider, "DELETE", f"/messages/{sent['id']}"), 404, "not_found")
            assert (await client.get(attachment, headers=outsider.h)).status_code == 404
            assert_status(
                await api.call(outsider, "GET", f"/channels/{dm['id']}/permissions/@me"), 404, "not_found"
            )
        # DMs are no guild's: guild search never finds their messages.
        found = await api.ok(ann, "GET", f"/guilds/{guild['id']}/search?q=hello")
        assert found["results"] == []
        # Nobody moderates a DM: each recipient deletes only their own messages.
        assert_missing(await api.call(bob, "DELETE", f"/messages/{sent['id']}"), Permission.MANAGE_MESSAGES)
        await api.ok(ann, "DELETE", f"/messages/{sent['id']}", status=204)
        assert [m["id"] for m in await api.ok(ann, "GET", path)] == [upload.json()["id"]]


async def test_dm_create_and_dm_events_reach_recipients_only(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        (ann, bob, cat), _ = await _community(api, "ann", "bob", "cat")
        async with (
            gateway(gd, ann.token) as (ann_ws, _),
            gateway(gd, bob.token) as (bob_ws, _),
            gateway(gd, cat.token) as (cat_ws, _),
        ):
            for ws in (ann_ws, bob_ws, cat_ws):
                await frames(ws, 0.2)  # whatever connecting brought (member_join, ...)
            dm = await api.ok(ann, "POST", "/dms", {"recipients": [bob.id]}, 201)
            # Both recipients' connections, the creator's included, learn of it.
            assert await event(ann_ws, "dm_create") == dm
            assert await event(bob_ws, "dm_create") == dm
            await api.ok(bob, "POST", "/dms", {"recipients": [ann.id]})
            message = await api.ok(ann, "POST", f"/channels/{dm['id']}/messages", {"content": "psst"}, 201)
            assert await event(bob_ws, "message_new") == message
            assert await event(ann_ws, "message_new") == message
            await api.ok(bob, "PUT", f"/messages/{message['id']}/reactions/👍", status=204)
            assert (await event(ann_ws, "reaction_add"))["emoji"] == "👍"
            assert await frames(cat_ws, 0.3) == []

            group = await api.ok(cat, "POST", "/dms", {"recipients": [ann.id, bob.id]}, 201)
            for ws in (ann_ws, bob_ws, cat_ws):
                assert await event(ws, "dm_create", skip={"reaction_add"}) == group
        # A connection opened later is subscribed to the user's DMs from the start.
        async with gateway(gd, bob.token) as (late_ws, _):
            await frames(late_ws, 0.2)
            later = await api.ok(ann, "POST", f"/channels/{dm['id']}/messages", {"content": "again"}, 201)
            assert await event(late_ws, "message_new") == later


async def test_dm_routes_need_auth(gd: Daemon) -> None:
    async with gd.http() as client:
        for method in ("GET", "POST"):
            response = await client.request(method, "/api/v1/dms")
            assert_status(response, 401, "unauthorized")
