"""Guild events on the gateway (protocol.md sections 3 and 6), on SQLite and PostgreSQL.

A member's connection receives the event of every mutation; a non-member's receives nothing;
hidden channels deliver nothing; permission changes look like channels appearing or vanishing;
removed members stop receiving anything at once. "Receives nothing" is checked with a barrier:
after the mutations, an event that connection is sure to receive is produced, and it must be the
very next frame (events from one publisher reach a connection in publish order).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.guild_helpers import PRESENCE_EVENTS, Api, User, assert_status, expect, gd
from tests.e2e.helpers import gateway
from vox.protocol.permissions import DEFAULT_EVERYONE, Permission

__all__ = ["gd"]

P = Permission


class Seq:
    """Checks that a connection's seq numbers go up by one per event."""

    def __init__(self) -> None:
        self.last = 0

    async def expect(
        self, ws: WebSocketConnection, type_: str, where: Any = None, timeout: float = 5
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                got = json.loads(await ws.get_message())
                assert got["seq"] == self.last + 1, got
                if got["type"] not in PRESENCE_EVENTS:
                    break
                self.last = got["seq"]  # presence interleaves; it has its own tests
        assert got["type"] == type_, got
        self.last = got["seq"]
        if where is not None:
            assert where(got["d"]), got
        d: dict[str, Any] = got["d"]
        return d


async def barrier(api: Api, ws: WebSocketConnection, who: User, guild_id: str) -> None:
    """``who`` renames a guild whose events ``ws`` receives; that must be its next frame."""
    marker = f"barrier {uuid.uuid4().hex[:8]}"
    await api.ok(who, "PATCH", f"/guilds/{guild_id}", {"name": marker})
    await expect(ws, "guild_update", lambda d: d["name"] == marker)


async def test_member_receives_every_mutation_outsider_nothing(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, outsider, j1, j2 = [
            await api.user(n) for n in ("owner", "member", "outsider", "j1", "j2")
        ]
        view = await api.guild(owner)
        gid, general = view["id"], view["channels"][0]["id"]
        await api.join(owner, member, gid)
        elsewhere = (await api.guild(outsider, "Elsewhere"))["id"]
        async with gateway(gd, member.token) as (ws, ready), gateway(gd, outsider.token) as (wx, ready_x):
            assert ready is not None and [g["id"] for g in ready["d"]["guilds"]] == [gid]
            assert ready_x is not None and [g["id"] for g in ready_x["d"]["guilds"]] == [elsewhere]
            s = Seq()

            await api.ok(owner, "PATCH", f"/guilds/{gid}", {"name": "Renamed"})
            d = await s.expect(ws, "guild_update", lambda d: d["name"] == "Renamed")
            assert d["id"] == gid
            assert set(d) == {"id", "name", "owner_id", "icon", "security_settings", "created_at"}

            channel = await api.channel(owner, gid, "news")
            assert await s.expect(ws, "channel_create") == channel
            await api.ok(owner, "PATCH", f"/channels/{channel['id']}", {"name": "updates", "position": 5})
            d = await s.expect(ws, "channel_update")
            assert d == {**channel, "name": "updates", "position": 5}
            await api.ok(owner, "DELETE", f"/channels/{channel['id']}", status=204)
            assert (await s.expect(ws, "channel_delete"))["id"] == channel["id"]

            category = await api.ok(owner, "POST", f"/guilds/{gid}/categories", {"name": "Zone"}, 201)
            d = await s.expect(ws, "guild_update")
            assert d["id"] == gid and d["categories"] == [category]

            role = await api.role(owner, gid, "crew", 0, 2)
            assert await s.expect(ws, "role_create") == role
            await api.ok(owner, "PATCH", f"/guilds/{gid}/roles/{role['id']}", {"name": "Crew"})
            assert (await s.expect(ws, "role_update"))["name"] == "Crew"
            # a permission change that hides nothing from this member announces only the role
            await api.ok(
                owner, "PATCH", f"/guilds/{gid}/roles/{role['id']}", {"permissions": int(P.KICK_MEMBERS)}
            )
            assert (await s.expect(ws, "role_update"))["permissions"] == P.KICK_MEMBERS

            await api.assign(owner, gid, member, role["id"])
            d = await s.expect(ws, "member_update")
            assert d["guild_id"] == gid and d["user"]["id"] == member.id and d["roles"] == [role["id"]]
            await api.ok(owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {"until": None})
            d = await s.expect(ws, "member_update")
            assert d["timeout_until"] is None and d["user"]["id"] == member.id

            await api.join(owner, j1, gid)
            d = await s.expect(ws, "member_join")
            assert d["user"]["id"] == j1.id and d["guild_id"] == gid and "guild" not in d
            await api.ok(j1, "DELETE", f"/guilds/{gid}/members/@me", status=204)
            d = await s.expect(ws, "member_leave")
            assert d["user"]["id"] == j1.id and d["guild_id"] == gid and "reason" not in d
            await api.join(owner, j2, gid)
            await s.expect(ws, "member_join", lambda d: d["user"]["id"] == j2.id)
            await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{j2.id}", status=204)
            await s.expect(ws, "member_leave", lambda d: d["user"]["id"] == j2.id)
            await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{j2.id}", status=204)  # not a member: no event

            await api.ok(owner, "DELETE", f"/guilds/{gid}/roles/{role['id']}", status=204)
            assert (await s.expect(ws, "role_delete"))["id"] == role["id"]
            everyone = view["roles"][0]["id"]
            await api.ok(
                owner,
                "PUT",
                f"/channels/{general}/overrides/{everyone}",
                {"allow": 0, "deny": int(P.EMBED_LINKS)},
            )
            # an override that hides nothing announces nothing: the next event is the barrier
            await barrier(api, ws, owner, gid)

            # the outsider saw none of it: its next frame is its own guild's event
            await barrier(api, wx, outsider, elsewhere)


async def test_visibility_follows_permissions(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        view = await api.guild(owner)
        gid = view["id"]
        general, voice = (c["id"] for c in view["channels"])
        everyone = view["roles"][0]["id"]
        await api.join(owner, member, gid)
        async with gateway(gd, member.token) as (ws, _), gateway(gd, owner.token) as (wo, _):
            secret = await api.channel(owner, gid, "secret")
            assert (await expect(ws, "channel_create"))["id"] == secret["id"]
            assert (await expect(wo, "channel_create"))["id"] == secret["id"]

            # an override hiding it looks like a deletion to the member, and like nothing to the owner
            deny_view = {"allow": 0, "deny": int(P.VIEW_CHANNEL)}
            await api.ok(owner, "PUT", f"/channels/{secret['id']}/overrides/{everyone}", deny_view)
            assert await expect(ws, "channel_delete") == secret
            # changes to a hidden channel deliver nothing to the member; the owner sees them
            await api.ok(owner, "PATCH", f"/channels/{secret['id']}", {"name": "still secret"})
            assert (await expect(wo, "channel_update"))["name"] == "still secret"
            await api.ok(owner, "PATCH", f"/channels/{general}", {"name": "lobby"})
            assert (await expect(wo, "channel_update"))["name"] == "lobby"
            # the member's next frame is the visible channel's update, nothing about the secret one
            assert (await expect(ws, "channel_update"))["id"] == general

            # lifting the override looks like a creation, with the channel as it is now
            await api.ok(owner, "DELETE", f"/channels/{secret['id']}/overrides/{everyone}", status=204)
            assert await expect(ws, "channel_create") == {**secret, "name": "still secret"}

            # @everyone losing VIEW_CHANNEL hides every channel (the owner keeps them all) ...
            await api.ok(
                owner,
                "PATCH",
                f"/guilds/{gid}/roles/{everyone}",
                {"permissions": DEFAULT_EVERYONE & ~P.VIEW_CHANNEL},
            )
            assert (await expect(ws, "role_update"))["id"] == everyone
            gone = {(await expect(ws, "channel_delete"))["id"] for _ in range(3)}
            assert gone == {general, voice, secret["id"]}
            # ... a channel created meanwhile is not announced to them ...
            hidden = await api.channel(owner, gid, "hidden")
            assert (await expect(wo, "role_update"))["id"] == everyone
            assert (await expect(wo, "channel_create"))["id"] == hidden["id"]
            # ... and a role granting the view brings them all back
            viewer = await api.role(owner, gid, "viewer", int(P.VIEW_CHANNEL), 1)
            assert (await expect(ws, "role_create"))["id"] == viewer["id"]
            await api.assign(owner, gid, member, viewer["id"])
            assert (await expect(ws, "member_update"))["roles"] == [viewer["id"]]
            back = [await expect(ws, "channel_create") for _ in range(4)]
            assert {c["id"] for c in back} == {general, voice, secret["id"], hidden["id"]}
            # now a hidden-by-override channel again, with the member's own role allowed: visible
            await api.ok(owner, "PUT", f"/channels/{hidden['id']}/overrides/{viewer['id']}", deny_view)
            assert (await expect(ws, "channel_delete"))["id"] == hidden["id"]
            await api.ok(
                owner, "DELETE", f"/guilds/{gid}/members/{member.id}/roles/{viewer['id']}", status=204
            )
            await expect(ws, "member_update", lambda d: d["roles"] == [])
            assert {(await expect(ws, "channel_delete"))["id"] for _ in range(3)} == {
                general,
                voice,
                secret["id"],
            }
            await barrier(api, ws, owner, gid)


async def test_join_and_removal_change_subscriptions(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, joiner = [await api.user(n) for n in ("owner", "member", "joiner")]
        view = await api.guild(owner)
        gid = view["id"]
        await api.join(owner, member, gid)
        own = (await api.guild(member, "Member's own"))["id"]
        async with gateway(gd, joiner.token) as (wj, ready_j), gateway(gd, member.token) as (wm, _):
            assert ready_j is not None and ready_j["d"]["guilds"] == []
            # joining: the joiner's connections learn the guild, with what they can see of it
            await api.join(owner, joiner, gid)
            d = await expect(wj, "member_join")
            assert d["user"]["id"] == joiner.id and d["guild_id"] == gid
            assert d["guild"]["id"] == gid and d["guild"]["name"] == view["name"]
            assert [c["id"] for c in d["guild"]["channels"]] == [c["id"] for c in view["channels"]]
            assert [r["id"] for r in d["guild"]["roles"]] == [view["roles"][0]["id"]]
            assert (await expect(wm, "member_join"))["user"]["id"] == joiner.id
            # ... and from then on receive the guild's events
            fresh = await api.channel(owner, gid, "fresh")
            assert (await expect(wj, "channel_create"))["id"] == fresh["id"]
            assert (await expect(wm, "channel_create"))["id"] == fresh["id"]

            # a ban cuts the banned member's connection off the guild at once
            await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{member.id}", {"reason": "bye"}, 204)
            d = await expect(wm, "member_leave")
            assert d["user"]["id"] == member.id and d["guild_id"] == gid and d["reason"] == "ban"
            d = await expect(wj, "member_leave")
            assert d["user"]["id"] == member.id and "reason" not in d
            await api.ok(owner, "PATCH", f"/guilds/{gid}", {"name": "After the ban"})
            await api.channel(owner, gid, "unseen")
            await api.ok(owner, "PATCH", f"/channels/{fresh['id']}", {"name": "unseen too"})
            invite = await api.ok(owner, "POST", f"/guilds/{gid}/invites", {}, 201)
            assert_status(await api.call(member, "POST", f"/invites/{invite['code']}"), 403, "forbidden")
            await barrier(api, wm, member, own)
            await expect(wj, "guild_update", lambda d: d["name"] == "After the ban")
            await expect(wj, "channel_create", lambda d: d["name"] == "unseen")
            await expect(wj, "channel_update", lambda d: d["name"] == "unseen too")

            # a kick tells the kicked user why
            await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{joiner.id}", status=204)
            assert (await expect(wj, "member_leave"))["reason"] == "kick"
            await api.ok(owner, "PATCH", f"/guilds/{gid}", {"name": "After the kick"})
            await api.join(owner, joiner, gid)
            # rejoining subscribes again; the rename before it was not delivered
            d = await expect(wj, "member_join")
            assert d["guild"]["name"] == "After the kick"


async def test_creator_and_guild_deletion(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        other = (await api.guild(member, "Other"))["id"]
        async with gateway(gd, owner.token) as (wo, ready), gateway(gd, member.token) as (wm, _):
            assert ready is not None and ready["d"]["guilds"] == []
            view = await api.guild(owner, "Fresh")
            d = await expect(wo, "member_join")
            assert d["user"]["id"] == owner.id and d["guild"] == view
            await api.join(owner, member, view["id"])
            d = await expect(wm, "member_join")
            assert d["guild"]["id"] == view["id"]
            assert (await expect(wo, "member_join"))["user"]["id"] == member.id
            await api.channel(owner, view["id"], "more")
            await expect(wo, "channel_create")
            await expect(wm, "channel_create")
            # deletion: one final guild_update with deleted: true, then nothing
            await api.ok(owner, "DELETE", f"/guilds/{view['id']}", status=204)
            for ws in (wo, wm):
                d = await expect(ws, "guild_update")
                assert d["id"] == view["id"] and d["deleted"] is True and d["name"] == "Fresh"
            await barrier(api, wm, member, other)


async def test_events_cross_daemons(
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
    try:
        async with one.http() as c1:
            api = Api(c1)
            owner, member, joiner = [await api.user(n) for n in ("owner", "member", "joiner")]
            view = await api.guild(owner)
            gid = view["id"]
            await api.join(owner, member, gid)
            async with gateway(two, member.token) as (wm, _), gateway(two, joiner.token) as (wj, _):
                # mutations on daemon one reach connections on daemon two
                channel = await api.channel(owner, gid, "across")
                assert await expect(wm, "channel_create") == channel
                await api.ok(
                    owner,
                    "PUT",
                    f"/channels/{channel['id']}/overrides/{view['roles'][0]['id']}",
                    {"allow": 0, "deny": int(P.VIEW_CHANNEL)},
                )
                assert (await expect(wm, "channel_delete"))["id"] == channel["id"]
                await api.join(owner, joiner, gid)
                assert (await expect(wj, "member_join"))["guild"]["id"] == gid
                assert (await expect(wm, "member_join"))["user"]["id"] == joiner.id
                await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{member.id}", status=204)
                assert (await expect(wm, "member_leave"))["reason"] == "ban"
                assert (await expect(wj, "member_leave"))["user"]["id"] == member.id
                await api.ok(owner, "PATCH", f"/guilds/{gid}", {"name": "later"})
                await expect(wj, "guild_update", lambda d: d["name"] == "later")
                own = (await api.guild(member, "Own"))["id"]
                await expect(wm, "member_join", lambda d: d["guild_id"] == own)
    finally:
        one.stop.set()
        two.stop.set()
        with trio.fail_after(15):
            await one.done.wait()
            await two.done.wait()


async def test_registration_with_invite_announces_member_join(nursery: trio.Nursery, tmp_path: Path) -> None:
    from tests.e2e.helpers import PASSWORD

    d = await start_daemon(nursery, tmp_path, registration_policy="invite_only")
    async with d.http() as client:
        api = Api(client)
        owner = await api.user("owner")  # the first account may register without an invite
        guild = await api.guild(owner)
        invite = await api.ok(owner, "POST", f"/guilds/{guild['id']}/invites", {}, 201)
        async with gateway(d, owner.token) as (ws, _):
            response = await client.post(
                "/api/v1/auth/register",
                json={"username": "newcomer", "password": PASSWORD, "invite_code": invite["code"]},
            )
            assert response.status_code == 201
            joined = await expect(ws, "member_join")
            assert joined["user"]["id"] == response.json()["user_id"]
    d.stop.set()
