"""Leave, kick, ban, timeout, invites and the audit log over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re

import trio

from tests.e2e.conftest import Daemon
from tests.e2e.guild_helpers import Api, User, assert_missing, assert_status, gd
from vox.protocol.permissions import DEFAULT_EVERYONE, Permission

__all__ = ["gd"]

P = Permission


def ahead(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(**delta)).isoformat()


async def test_leave_and_kick(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, a, b = [await api.user(n) for n in ("owner", "alice", "bob")]
        gid = (await api.guild(owner))["id"]
        await api.join(owner, a, gid)
        await api.join(owner, b, gid)
        # leaving: by id or @me
        await api.ok(a, "DELETE", f"/guilds/{gid}/members/{a.id}", status=204)
        assert_status(await api.call(a, "GET", f"/guilds/{gid}"), 404, "not_found")
        await api.join(owner, a, gid)
        await api.ok(a, "DELETE", f"/guilds/{gid}/members/@me", status=204)
        assert [m["user"]["id"] for m in await api.ok(owner, "GET", f"/guilds/{gid}/members")] == [
            owner.id,
            b.id,
        ]
        # the owner cannot leave
        assert_status(await api.call(owner, "DELETE", f"/guilds/{gid}/members/{owner.id}"), 409, "conflict")
        # kick
        await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{b.id}", status=204)
        assert_status(await api.call(b, "GET", f"/guilds/{gid}/channels"), 404, "not_found")
        assert_status(await api.call(owner, "DELETE", f"/guilds/{gid}/members/{b.id}"), 404, "not_found")
        # a kick is not a ban: they may come back, without the roles they had
        await api.join(owner, b, gid)
        assert (await api.ok(owner, "GET", f"/guilds/{gid}/members/{b.id}"))["roles"] == []


async def test_bans_stick(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, bad, outsider = [await api.user(n) for n in ("owner", "bad", "outsider")]
        gid = (await api.guild(owner))["id"]
        await api.join(owner, bad, gid)
        invite = await api.ok(owner, "POST", f"/guilds/{gid}/invites", {}, 201)
        await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{bad.id}", {"reason": " spam "}, 204)
        await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{bad.id}", status=204)  # again: no change
        assert_status(await api.call(bad, "GET", f"/guilds/{gid}"), 404, "not_found")
        # neither an old invite nor a new one lets them back in
        for code in (
            invite["code"],
            (await api.ok(owner, "POST", f"/guilds/{gid}/invites", {}, 201))["code"],
        ):
            refused = await api.call(bad, "POST", f"/invites/{code}")
            assert_status(refused, 403, "forbidden")
        assert [m["user"]["id"] for m in await api.ok(owner, "GET", f"/guilds/{gid}/members")] == [owner.id]
        # a user who never joined can be banned ahead of time; unknown users cannot
        await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{outsider.id}", status=204)
        assert_status(await api.call(outsider, "POST", f"/invites/{invite['code']}"), 403, "forbidden")
        assert_status(await api.call(owner, "PUT", f"/guilds/{gid}/bans/nobody"), 404, "not_found")
        bans = await api.ok(owner, "GET", f"/guilds/{gid}/bans")
        assert [(b["user"]["id"], b["reason"], b["banned_by"]) for b in bans] == [
            (bad.id, "spam", owner.id),
            (outsider.id, None, owner.id),
        ]
        # the owner can never be banned, and nobody bans themselves
        assert_status(await api.call(owner, "PUT", f"/guilds/{gid}/bans/{owner.id}"), 400, "validation_error")
        # unban: they may join again
        await api.ok(owner, "DELETE", f"/guilds/{gid}/bans/{bad.id}", status=204)
        assert_status(await api.call(owner, "DELETE", f"/guilds/{gid}/bans/{bad.id}"), 404, "not_found")
        await api.ok(bad, "POST", f"/invites/{invite['code']}")
        # invites do not count a refused join as a use
        listed = {i["code"]: i for i in await api.ok(owner, "GET", f"/guilds/{gid}/invites")}
        assert listed[invite["code"]]["uses"] == 1


async def test_timeouts(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        view = await api.guild(owner)
        gid, general = view["id"], view["channels"][0]["id"]
        await api.join(owner, member, gid)
        until = ahead(hours=2)
        timed = await api.ok(owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {"until": until})
        assert timed["user"]["id"] == member.id
        stamp = dt.datetime.fromisoformat(timed["timeout_until"].replace("Z", "+00:00"))
        assert abs(stamp - dt.datetime.fromisoformat(until)) < dt.timedelta(seconds=1)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timed["timeout_until"])
        # only VIEW_CHANNEL is left
        perms = await api.ok(member, "GET", f"/channels/{general}/permissions/@me")
        assert perms == {"permissions": int(P.VIEW_CHANNEL)}
        assert_missing(await api.call(member, "POST", f"/guilds/{gid}/invites", {}), P.CREATE_INVITE)
        # still a member who can look around
        await api.ok(member, "GET", f"/guilds/{gid}/channels")
        # bad times
        for bad in (ahead(hours=-1), ahead(days=29), "2030-01-01T00:00:00", "tomorrow", 5):
            response = await api.call(
                owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {"until": bad}
            )
            assert assert_status(response, 400, "validation_error")["fields"].keys() == {"until"}, bad
        missing = await api.call(owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {})
        assert assert_status(missing, 400, "validation_error")["fields"] == {"until": "required"}
        assert_status(
            await api.call(
                owner, "POST", f"/guilds/{gid}/members/{owner.id}/timeout", {"until": ahead(hours=1)}
            ),
            400,
            "validation_error",
        )
        # the time did not change through the failed attempts
        assert (await api.ok(owner, "GET", f"/guilds/{gid}/members/{member.id}"))["timeout_until"] == timed[
            "timeout_until"
        ]
        cleared = await api.ok(owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {"until": None})
        assert cleared["timeout_until"] is None
        assert (await api.ok(member, "GET", f"/channels/{general}/permissions/@me"))[
            "permissions"
        ] == DEFAULT_EVERYONE
        # a timeout ends by itself
        await api.ok(owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {"until": ahead(seconds=1)})
        assert (await api.ok(member, "GET", f"/channels/{general}/permissions/@me"))[
            "permissions"
        ] == P.VIEW_CHANNEL
        await trio.sleep(1.2)
        assert (await api.ok(member, "GET", f"/channels/{general}/permissions/@me"))[
            "permissions"
        ] == DEFAULT_EVERYONE
        assert (await api.ok(owner, "GET", f"/guilds/{gid}/members/{member.id}"))["timeout_until"] is None


async def test_invites(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, c, d, e = [await api.user(n) for n in ("owner", "member", "carol", "dave", "erin")]
        view = await api.guild(owner, "Invited")
        gid = view["id"]
        await api.join(owner, member, gid)
        # single use
        once = await api.ok(member, "POST", f"/guilds/{gid}/invites", {"max_uses": 1}, 201)
        assert re.fullmatch(r"[A-Za-z0-9]{10}", once["code"])
        assert once["guild_id"] == gid and once["max_uses"] == 1 and once["uses"] == 0
        assert once["expires_at"] is None and once["inviter_id"] == member.id
        preview = await api.ok(c, "GET", f"/invites/{once['code']}")
        assert preview["guild"] == {"id": gid, "name": "Invited", "icon": None}
        joined = await api.ok(c, "POST", f"/invites/{once['code']}")
        assert joined["guild_id"] == gid and joined["user"]["id"] == c.id
        # joining again as a member uses nothing and answers the member
        again = await api.ok(c, "POST", f"/invites/{once['code']}")
        assert again["user"]["id"] == c.id
        assert_status(await api.call(d, "POST", f"/invites/{once['code']}"), 404, "not_found")
        assert_status(await api.call(d, "GET", f"/invites/{once['code']}"), 404, "not_found")
        # unlimited (0 and null mean no limit, no expiry)
        for body in ({}, {"max_uses": 0, "expires_in": 0}, {"max_uses": None, "expires_in": None}):
            unlimited = await api.ok(owner, "POST", f"/guilds/{gid}/invites", body, 201)
            assert unlimited["max_uses"] is None and unlimited["expires_at"] is None
        # expiry
        brief = await api.ok(owner, "POST", f"/guilds/{gid}/invites", {"expires_in": 1}, 201)
        expires = dt.datetime.fromisoformat(brief["expires_at"].replace("Z", "+00:00"))
        assert dt.timedelta(0) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=2)
        await api.ok(d, "GET", f"/invites/{brief['code']}")
        await trio.sleep(1.2)
        assert_status(await api.call(d, "GET", f"/invites/{brief['code']}"), 404, "not_found")
        assert_status(await api.call(d, "POST", f"/invites/{brief['code']}"), 404, "not_found")
        # revoke: the creator may, another member needs MANAGE_GUILD, outsiders see nothing
        mine = await api.ok(member, "POST", f"/guilds/{gid}/invites", {}, 201)
        theirs = await api.ok(owner, "POST", f"/guilds/{gid}/invites", {}, 201)
        assert_missing(await api.call(member, "DELETE", f"/invites/{theirs['code']}"), P.MANAGE_GUILD)
        assert_status(await api.call(e, "DELETE", f"/invites/{theirs['code']}"), 404, "not_found")
        await api.ok(member, "DELETE", f"/invites/{mine['code']}", status=204)
        await api.ok(owner, "DELETE", f"/invites/{theirs['code']}", status=204)
        for code in (mine["code"], theirs["code"]):
            assert_status(await api.call(e, "POST", f"/invites/{code}"), 404, "not_found")
            assert_status(await api.call(owner, "DELETE", f"/invites/{code}"), 404, "not_found")
        assert_status(await api.call(e, "POST", "/invites/" + "x" * 100), 404, "not_found")
        # every invite is listed with its uses
        listed = {i["code"]: i for i in await api.ok(owner, "GET", f"/guilds/{gid}/invites")}
        assert listed[once["code"]]["uses"] == 1
        assert mine["code"] not in listed and brief["code"] in listed
        # an unauthenticated preview is refused
        assert_status(await client.get(f"/api/v1/invites/{once['code']}"), 401, "unauthorized")


async def test_audit_log(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, a, b, c = [await api.user(n) for n in ("owner", "alice", "bob", "carol")]
        view = await api.guild(owner)
        gid, general = view["id"], view["channels"][0]["id"]
        for user in (a, b, c):
            await api.join(owner, user, gid)
        role = await api.role(owner, gid, "auditor", int(P.VIEW_AUDIT_LOG), 3)
        await api.ok(owner, "PATCH", f"/guilds/{gid}/roles/{role['id']}", {"name": "Auditor"})
        await api.assign(owner, gid, a, role["id"])
        await api.ok(owner, "PUT", f"/channels/{general}/overrides/{role['id']}", {"allow": 0, "deny": 1})
        await api.ok(owner, "DELETE", f"/channels/{general}/overrides/{role['id']}", status=204)
        await api.ok(owner, "POST", f"/guilds/{gid}/members/{b.id}/timeout", {"until": ahead(hours=1)})
        await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{b.id}", status=204)
        await api.ok(owner, "PUT", f"/guilds/{gid}/bans/{c.id}", {"reason": "rude"}, 204)
        await api.ok(owner, "DELETE", f"/guilds/{gid}/bans/{c.id}", status=204)
        await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{a.id}/roles/{role['id']}", status=204)
        # alice lost the auditor role: she may not read it any more
        assert_missing(await api.call(a, "GET", f"/guilds/{gid}/audit-log"), P.VIEW_AUDIT_LOG)
        entries = await api.ok(owner, "GET", f"/guilds/{gid}/audit-log?limit=100")
        actions = [(e["action"], e["target_id"]) for e in entries]
        expected = [
            ("member_role_remove", a.id),
            ("member_unban", c.id),
            ("member_ban", c.id),
            ("member_kick", b.id),
            ("member_timeout", b.id),
            ("channel_override_delete", general),
            ("channel_override_update", general),
            ("member_role_add", a.id),
            ("role_update", role["id"]),
            ("role_create", role["id"]),
        ]
        assert actions[: len(expected)] == expected
        assert all(e["actor_id"] == owner.id for e in entries)
        ban = next(e for e in entries if e["action"] == "member_ban")
        assert ban["details"] == {"reason": "rude"} and ban["target_type"] == "user"
        assert entries[-1]["action"] == "guild_create"
        # pages, newest first
        first = await api.ok(owner, "GET", f"/guilds/{gid}/audit-log?limit=3")
        assert [e["id"] for e in first] == [e["id"] for e in entries[:3]]
        rest = await api.ok(owner, "GET", f"/guilds/{gid}/audit-log?limit=3&before={first[-1]['id']}")
        assert [e["id"] for e in rest] == [e["id"] for e in entries[3:6]]
        for bad in ("0", "101", "x"):
            assert_status(
                await api.call(owner, "GET", f"/guilds/{gid}/audit-log?limit={bad}"), 400, "validation_error"
            )


async def test_concurrent_joins_never_overshoot_max_uses(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner = await api.user("owner")
        users = [await api.user(f"racer{i}") for i in range(8)]
        gid = (await api.guild(owner))["id"]
        invite = await api.ok(owner, "POST", f"/guilds/{gid}/invites", {"max_uses": 3}, 201)
        statuses: list[int] = []

        async def join(user: User) -> None:
            statuses.append((await api.call(user, "POST", f"/invites/{invite['code']}")).status_code)

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(join, user)
        assert sorted(statuses) == [200] * 3 + [404] * 5
        members = await api.ok(owner, "GET", f"/guilds/{gid}/members")
        assert len(members) == 4
        listed = await api.ok(owner, "GET", f"/guilds/{gid}/invites")
        assert listed[0]["uses"] == 3
