"""Guilds, channels, categories over HTTP (protocol.md section 3), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import Api, User, assert_missing, assert_status, gd
from vox.protocol.permissions import ALL_PERMISSIONS, DEFAULT_EVERYONE, Permission

__all__ = ["gd"]


async def test_create_guild_has_defaults(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        view = await api.guild(owner, "  My Guild  ")
        assert view["name"] == "My Guild"  # trimmed
        assert view["owner_id"] == owner.id
        assert view["icon"] is None
        assert view["created_at"].endswith("Z")
        assert [(c["name"], c["channel_type"], c["position"]) for c in view["channels"]] == [
            ("general", "text", 0),
            ("General", "voice", 1),
        ]
        assert all(c["guild_id"] == view["id"] and c["category_id"] is None for c in view["channels"])
        assert len(view["roles"]) == 1
        everyone = view["roles"][0]
        assert everyone == {
            "id": everyone["id"],
            "guild_id": view["id"],
            "name": "@everyone",
            "permissions": DEFAULT_EVERYONE,
            "position": 0,
            "is_default": True,
        }
        assert view["categories"] == []

        guild = {k: view[k] for k in ("id", "name", "owner_id", "icon", "security_settings", "created_at")}
        assert await api.ok(owner, "GET", "/guilds") == [guild]
        assert await api.ok(owner, "GET", f"/guilds/{view['id']}") == view
        members = await api.ok(owner, "GET", f"/guilds/{view['id']}/members")
        assert len(members) == 1
        assert members[0]["user"]["id"] == owner.id
        assert members[0]["roles"] == []
        assert members[0]["timeout_until"] is None
        assert await api.ok(owner, "GET", f"/guilds/{view['id']}/channels") == view["channels"]
        assert await api.ok(owner, "GET", f"/guilds/{view['id']}/roles") == view["roles"]
        general = view["channels"][0]["id"]
        perms = await api.ok(owner, "GET", f"/channels/{general}/permissions/@me")
        assert perms == {"permissions": ALL_PERMISSIONS}


async def test_member_defaults_and_guild_list(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        first = await api.guild(owner, "First")
        await api.guild(owner, "Second")
        joined = await api.join(owner, member, first["id"])
        assert joined["user"]["id"] == member.id
        assert joined["user"]["username"] == "member"
        assert joined["roles"] == []
        assert joined["guild_id"] == first["id"]
        assert [g["name"] for g in await api.ok(member, "GET", "/guilds")] == ["First"]
        assert [g["name"] for g in await api.ok(owner, "GET", "/guilds")] == ["First", "Second"]
        general = first["channels"][0]["id"]
        perms = await api.ok(member, "GET", f"/channels/{general}/permissions/@me")
        assert perms == {"permissions": DEFAULT_EVERYONE}
        members = await api.ok(member, "GET", f"/guilds/{first['id']}/members")
        assert [m["user"]["id"] for m in members] == [owner.id, member.id]
        one = await api.ok(member, "GET", f"/guilds/{first['id']}/members/{owner.id}")
        assert one["user"]["id"] == owner.id


async def test_guild_does_not_exist_for_outsiders(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, outsider = await api.user("owner"), await api.user("outsider")
        view = await api.guild(owner)
        gid = view["id"]
        general = view["channels"][0]["id"]
        everyone = view["roles"][0]["id"]
        attempts = [
            ("GET", f"/guilds/{gid}", None),
            ("PATCH", f"/guilds/{gid}", {"name": "mine now"}),
            ("DELETE", f"/guilds/{gid}", None),
            ("GET", f"/guilds/{gid}/members", None),
            ("GET", f"/guilds/{gid}/members/{owner.id}", None),
            ("DELETE", f"/guilds/{gid}/members/{owner.id}", None),
            ("PUT", f"/guilds/{gid}/bans/{owner.id}", None),
            ("DELETE", f"/guilds/{gid}/bans/{owner.id}", None),
            ("GET", f"/guilds/{gid}/bans", None),
            ("POST", f"/guilds/{gid}/members/{owner.id}/timeout", {"until": None}),
            ("PUT", f"/guilds/{gid}/members/{owner.id}/roles/{everyone}", None),
            ("POST", f"/guilds/{gid}/invites", {}),
            ("GET", f"/guilds/{gid}/invites", None),
            ("GET", f"/guilds/{gid}/channels", None),
            ("POST", f"/guilds/{gid}/channels", {"name": "x", "channel_type": "text"}),
            ("GET", f"/guilds/{gid}/categories", None),
            ("POST", f"/guilds/{gid}/categories", {"name": "x"}),
            ("GET", f"/guilds/{gid}/roles", None),
            ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 0}),
            ("PATCH", f"/guilds/{gid}/roles/{everyone}", {"name": "x"}),
            ("DELETE", f"/guilds/{gid}/roles/{everyone}", None),
            ("GET", f"/guilds/{gid}/audit-log", None),
            ("PATCH", f"/channels/{general}", {"name": "x"}),
            ("DELETE", f"/channels/{general}", None),
            ("GET", f"/channels/{general}/overrides", None),
            ("PUT", f"/channels/{general}/overrides/{everyone}", {"allow": 0, "deny": 0}),
            ("DELETE", f"/channels/{general}/overrides/{everyone}", None),
            ("GET", f"/channels/{general}/permissions/@me", None),
        ]
        for method, path, body in attempts:
            response = await api.call(outsider, method, path, body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "not_found", (method, path)
        # and unknown ids look the same as guilds one is not in
        for path in ("/guilds/nope", "/guilds/" + "x" * 300, "/channels/nope/permissions/@me"):
            assert_status(await api.call(owner, "GET", path), 404, "not_found")
        # nothing changed
        assert await api.ok(owner, "GET", f"/guilds/{gid}") == view
        # every route needs authentication first
        response = await client.get(f"/api/v1/guilds/{gid}")
        assert_status(response, 401, "unauthorized")


async def test_update_and_delete_guild(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        view = await api.guild(owner)
        gid = view["id"]
        await api.join(owner, member, gid)
        assert_missing(
            await api.call(member, "PATCH", f"/guilds/{gid}", {"name": "x"}), Permission.MANAGE_GUILD
        )
        updated = await api.ok(owner, "PATCH", f"/guilds/{gid}", {"name": " Renamed ", "icon": "icons/1.png"})
        assert updated["name"] == "Renamed"
        assert updated["icon"] == "icons/1.png"
        cleared = await api.ok(owner, "PATCH", f"/guilds/{gid}", {"icon": None})
        assert cleared["icon"] is None and cleared["name"] == "Renamed"
        # MANAGE_GUILD is not enough to delete: only the owner can
        admin = await api.role(owner, gid, "admin", ALL_PERMISSIONS, 5)
        await api.assign(owner, gid, member, admin["id"])
        assert (await api.ok(member, "PATCH", f"/guilds/{gid}", {"name": "By admin"}))["name"] == "By admin"
        assert_status(await api.call(member, "DELETE", f"/guilds/{gid}"), 403, "forbidden")
        await api.ok(owner, "DELETE", f"/guilds/{gid}", status=204)
        # cascaded: guild, channels, roles and memberships are gone
        for who in (owner, member):
            assert_status(await api.call(who, "GET", f"/guilds/{gid}"), 404, "not_found")
            assert await api.ok(who, "GET", "/guilds") == []
        general = view["channels"][0]["id"]
        assert_status(await api.call(owner, "GET", f"/channels/{general}/permissions/@me"), 404, "not_found")


@pytest.mark.parametrize("limit", [1, 2])
async def test_max_guilds(nursery: trio.Nursery, tmp_path: Path, database_url: str, limit: int) -> None:
    d = await start_daemon(nursery, tmp_path, database_url=database_url, max_guilds=limit)
    try:
        async with d.http() as client:
            api = Api(client)
            users = [await api.user(f"founder{i}") for i in range(5)]
            statuses: list[int] = []

            async def found(user: User) -> None:
                response = await api.call(user, "POST", "/guilds", {"name": user.name})
                statuses.append(response.status_code)
                if response.status_code != 201:
                    assert_status(response, 403, "forbidden")

            # concurrent creations cannot slip past the limit
            async with trio.open_nursery() as racers:
                for user in users:
                    racers.start_soon(found, user)
            assert sorted(statuses) == [201] * limit + [403] * (5 - limit)
            assert sum([len(await api.ok(u, "GET", "/guilds")) for u in users]) == limit
            assert_status(await api.call(users[0], "POST", "/guilds", {"name": "more"}), 403, "forbidden")
    finally:
        d.stop.set()
        with trio.fail_after(15):
            await d.done.wait()


async def test_channels_and_categories(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        view = await api.guild(owner)
        gid = view["id"]
        category = await api.ok(owner, "POST", f"/guilds/{gid}/categories", {"name": " Games "}, 201)
        assert category == {"id": category["id"], "guild_id": gid, "name": "Games", "position": 0}
        second = await api.ok(
            owner, "POST", f"/guilds/{gid}/categories", {"name": "Misc", "position": 7}, 201
        )
        assert second["position"] == 7
        # without a position a channel goes after the last one
        text = await api.ok(
            owner,
            "POST",
            f"/guilds/{gid}/channels",
            {"name": "strategy", "channel_type": "text", "category_id": category["id"]},
            201,
        )
        assert text["position"] == 2 and text["category_id"] == category["id"]
        voice = await api.ok(
            owner,
            "POST",
            f"/guilds/{gid}/channels",
            {"name": "Raid", "channel_type": "voice", "position": 0},
            201,
        )
        assert voice["channel_type"] == "voice" and voice["position"] == 0
        listed = await api.ok(owner, "GET", f"/guilds/{gid}/channels")
        # ordered by position, then creation
        assert [c["name"] for c in listed] == ["general", "Raid", "General", "strategy"]
        moved = await api.ok(owner, "PATCH", f"/channels/{text['id']}", {"position": 9, "name": " plans "})
        assert moved["position"] == 9 and moved["name"] == "plans" and moved["category_id"] == category["id"]
        uncategorised = await api.ok(owner, "PATCH", f"/channels/{text['id']}", {"category_id": None})
        assert uncategorised["category_id"] is None
        recategorised = await api.ok(owner, "PATCH", f"/channels/{text['id']}", {"category_id": second["id"]})
        assert recategorised["category_id"] == second["id"]
        patched = await api.ok(
            owner, "PATCH", f"/guilds/{gid}/categories/{second['id']}", {"name": "Other", "position": 1}
        )
        assert patched["name"] == "Other" and patched["position"] == 1
        assert [k["name"] for k in await api.ok(owner, "GET", f"/guilds/{gid}/categories")] == [
            "Games",
            "Other",
        ]
        # deleting a category leaves its channels uncategorised
        await api.ok(owner, "DELETE", f"/guilds/{gid}/categories/{second['id']}", status=204)
        after = {c["id"]: c for c in await api.ok(owner, "GET", f"/guilds/{gid}/channels")}
        assert after[text["id"]]["category_id"] is None
        assert_status(
            await api.call(owner, "DELETE", f"/guilds/{gid}/categories/{second['id']}"), 404, "not_found"
        )
        await api.ok(owner, "DELETE", f"/channels/{voice['id']}", status=204)
        assert voice["id"] not in {c["id"] for c in await api.ok(owner, "GET", f"/guilds/{gid}/channels")}
        assert_status(await api.call(owner, "DELETE", f"/channels/{voice['id']}"), 404, "not_found")
        # a category of another guild is not a category of this one
        other = await api.guild(owner, "Other guild")
        foreign = await api.ok(owner, "POST", f"/guilds/{other['id']}/categories", {"name": "X"}, 201)
        bad = await api.call(
            owner,
            "POST",
            f"/guilds/{gid}/channels",
            {"name": "x", "channel_type": "text", "category_id": foreign["id"]},
        )
        assert assert_status(bad, 400, "validation_error")["fields"] == {"category_id": "unknown category"}


async def test_hidden_channel_does_not_exist(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        view = await api.guild(owner)
        gid = view["id"]
        everyone = view["roles"][0]["id"]
        await api.join(owner, member, gid)
        secret = await api.channel(owner, gid, "secret")
        # members get every management bit, but the channel denies them the view
        boss = await api.role(owner, gid, "boss", ALL_PERMISSIONS, 5)
        await api.assign(owner, gid, member, boss["id"])
        await api.ok(
            owner,
            "PUT",
            f"/channels/{secret['id']}/overrides/{everyone}",
            {"allow": 0, "deny": int(Permission.VIEW_CHANNEL)},
        )
        seen = {c["id"] for c in await api.ok(member, "GET", f"/guilds/{gid}/channels")}
        assert secret["id"] not in seen and view["channels"][0]["id"] in seen
        assert secret["id"] not in {
            c["id"] for c in (await api.ok(member, "GET", f"/guilds/{gid}"))["channels"]
        }
        for method, path, body in [
            ("GET", f"/channels/{secret['id']}/permissions/@me", None),
            ("GET", f"/channels/{secret['id']}/overrides", None),
            ("PATCH", f"/channels/{secret['id']}", {"name": "found you"}),
            ("DELETE", f"/channels/{secret['id']}", None),
            ("PUT", f"/channels/{secret['id']}/overrides/{everyone}", {"allow": 0, "deny": 0}),
            ("DELETE", f"/channels/{secret['id']}/overrides/{everyone}", None),
        ]:
            response = await api.call(member, method, path, body)
            assert_status(response, 404, "not_found")
        # the owner still sees it, unchanged
        assert (await api.ok(owner, "GET", f"/channels/{secret['id']}/permissions/@me"))["permissions"] == (
            ALL_PERMISSIONS
        )
        owner_view = {c["id"]: c for c in await api.ok(owner, "GET", f"/guilds/{gid}/channels")}
        assert owner_view[secret["id"]]["name"] == "secret"
        # an allow from another role the member holds does not beat @everyone's deny: deny wins
        await api.ok(
            owner,
            "PUT",
            f"/channels/{secret['id']}/overrides/{boss['id']}",
            {"allow": int(Permission.VIEW_CHANNEL), "deny": 0},
        )
        assert_status(
            await api.call(member, "GET", f"/channels/{secret['id']}/permissions/@me"), 404, "not_found"
        )
        # without the deny, the channel exists for them again
        await api.ok(owner, "DELETE", f"/channels/{secret['id']}/overrides/{everyone}", status=204)
        perms = await api.ok(member, "GET", f"/channels/{secret['id']}/permissions/@me")
        assert perms["permissions"] & Permission.VIEW_CHANNEL


def _bad_bodies(gid: str) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, field named in the 400)."""
    long = "x" * 101
    return [
        ("POST", "/guilds", {}, "name"),
        ("POST", "/guilds", {"name": ""}, "name"),
        ("POST", "/guilds", {"name": "    "}, "name"),
        ("POST", "/guilds", {"name": long}, "name"),
        ("POST", "/guilds", {"name": 5}, "name"),
        ("POST", "/guilds", ["name"], "body"),
        ("PATCH", f"/guilds/{gid}", {"name": None}, "name"),
        ("PATCH", f"/guilds/{gid}", {"name": long}, "name"),
        ("PATCH", f"/guilds/{gid}", {"icon": 3}, "icon"),
        ("POST", f"/guilds/{gid}/channels", {"name": "x"}, "channel_type"),
        ("POST", f"/guilds/{gid}/channels", {"channel_type": "text"}, "name"),
        ("POST", f"/guilds/{gid}/channels", {"name": "x", "channel_type": "stage"}, "channel_type"),
        ("POST", f"/guilds/{gid}/channels", {"name": "x", "channel_type": "dm"}, "channel_type"),
        (
            "POST",
            f"/guilds/{gid}/channels",
            {"name": "x", "channel_type": "text", "position": -1},
            "position",
        ),
        (
            "POST",
            f"/guilds/{gid}/channels",
            {"name": "x", "channel_type": "text", "position": "1"},
            "position",
        ),
        ("POST", f"/guilds/{gid}/channels", {"name": long, "channel_type": "text"}, "name"),
        ("POST", f"/guilds/{gid}/channels", {"name": " ", "channel_type": "voice"}, "name"),
        ("POST", f"/guilds/{gid}/categories", {"name": "x", "position": -3}, "position"),
        ("POST", f"/guilds/{gid}/categories", {}, "name"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x"}, "permissions"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 1 << 25}, "permissions"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 1 << 63}, "permissions"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": -1}, "permissions"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": True}, "permissions"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 1.5}, "permissions"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 0, "position": -1}, "position"),
        ("POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 0, "position": 0}, "position"),
        ("POST", f"/guilds/{gid}/roles", {"name": long, "permissions": 0}, "name"),
        ("POST", f"/guilds/{gid}/invites", {"max_uses": -1}, "max_uses"),
        ("POST", f"/guilds/{gid}/invites", {"expires_in": 31 * 86_400}, "expires_in"),
        ("POST", f"/guilds/{gid}/invites", {"expires_in": "soon"}, "expires_in"),
    ]


async def test_bad_input_is_400_and_writes_nothing(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        view = await api.guild(owner)
        gid = view["id"]
        general = view["channels"][0]["id"]
        everyone = view["roles"][0]["id"]
        cases = [
            *_bad_bodies(gid),
            ("PATCH", f"/channels/{general}", {"name": ""}, "name"),
            ("PATCH", f"/channels/{general}", {"position": -1}, "position"),
            ("PATCH", f"/channels/{general}", {"category_id": "no-such-category"}, "category_id"),
            ("PATCH", f"/guilds/{gid}/roles/{everyone}", {"permissions": 1 << 40}, "permissions"),
            ("PATCH", f"/guilds/{gid}/roles/{everyone}", {"name": "everybody"}, "name"),
            ("PATCH", f"/guilds/{gid}/roles/{everyone}", {"position": 3}, "position"),
            ("DELETE", f"/guilds/{gid}/roles/{everyone}", None, "role_id"),
            ("PUT", f"/channels/{general}/overrides/{everyone}", {"allow": 0}, "deny"),
            ("PUT", f"/channels/{general}/overrides/{everyone}", {"allow": 1 << 30, "deny": 0}, "allow"),
            ("PUT", f"/channels/{general}/overrides/{everyone}", {"allow": 0, "deny": -4}, "deny"),
        ]
        for method, path, body, field in cases:
            response = await api.call(owner, method, path, body)
            error = assert_status(response, 400, "validation_error")
            assert field in error["fields"], (method, path, body, error)
        # malformed JSON and the wrong content type
        raw = await client.post(
            "/api/v1/guilds", content=b"{nope", headers={**owner.h, "content-type": "application/json"}
        )
        assert_status(raw, 400, "validation_error")
        text = await client.post(
            "/api/v1/guilds", content=b"name=x", headers={**owner.h, "content-type": "text/plain"}
        )
        assert_status(text, 415, "unsupported_media_type")
        # nothing was written
        assert await api.ok(owner, "GET", "/guilds") == [
            {k: view[k] for k in ("id", "name", "owner_id", "icon", "security_settings", "created_at")}
        ]
        assert await api.ok(owner, "GET", f"/guilds/{gid}") == view
        assert await api.ok(owner, "GET", f"/guilds/{gid}/invites") == []
        assert await api.ok(owner, "GET", f"/channels/{general}/overrides") == []


async def test_member_list_pages(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        guild = await api.guild(owner)
        gid = guild["id"]
        others = [await api.user(f"member{i}") for i in range(4)]
        for user in others:
            await api.join(owner, user, gid)
        role = await api.ok(owner, "POST", f"/guilds/{gid}/roles", {"name": "crew", "permissions": 0}, 201)
        await api.ok(owner, "PUT", f"/guilds/{gid}/members/{others[2].id}/roles/{role['id']}", status=204)

        everyone = await api.ok(owner, "GET", f"/guilds/{gid}/members")
        assert [m["user"]["id"] for m in everyone] == [owner.id, *(u.id for u in others)]  # join order
        pages: list[dict[str, Any]] = []
        after = None
        while True:
            query = f"?limit=2&after={after}" if after else "?limit=2"
            page = await api.ok(owner, "GET", f"/guilds/{gid}/members{query}")
            assert len(page) <= 2
            if not page:
                break
            pages += page
            after = page[-1]["user"]["id"]
        assert pages == everyone  # same rows, roles included, nothing repeated or skipped
        assert next(m for m in pages if m["user"]["id"] == others[2].id)["roles"] == [role["id"]]

        for query, field in (("?limit=0", "limit"), ("?limit=1001", "limit"), ("?limit=x", "limit")):
            error = assert_status(
                await api.call(owner, "GET", f"/guilds/{gid}/members{query}"), 400, "validation_error"
            )
            assert field in error["fields"]
        stranger = await api.user("stranger")
        for after in ("not-an-id", stranger.id):
            error = assert_status(
                await api.call(owner, "GET", f"/guilds/{gid}/members?after={after}"), 400, "validation_error"
            )
            assert "after" in error["fields"]
        # Paging never lets a non-member read the list.
        assert_status(await api.call(stranger, "GET", f"/guilds/{gid}/members?limit=1"), 404, "not_found")
