"""Roles, overrides and the permission checks of every guild route over HTTP, on SQLite and
PostgreSQL: each route is tried without its permission (403 missing_permission naming it) and
with it; the role hierarchy holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.e2e.conftest import Daemon
from tests.e2e.guild_helpers import Api, User, assert_missing, assert_status, gd
from vox.protocol.permissions import ALL_PERMISSIONS, DEFAULT_EVERYONE, Permission

__all__ = ["gd"]

P = Permission


@dataclass
class World:
    api: Api
    owner: User
    member: User
    victims: list[User]
    gid: str
    general: str
    low: dict[str, Any]

    def victim(self) -> User:
        return self.victims.pop()


Attempt = Callable[[World], Awaitable[Any]]


@dataclass
class Case:
    bit: Permission
    route: str
    attempt: Callable[[World], Attempt]
    status: int


def soon() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()


def _cases() -> list[Case]:
    """Each ``attempt`` builder prepares its target (as the owner) and returns the member's try."""

    def simple(method: str, path: str, body: Any = None) -> Callable[[World], Attempt]:
        def build(w: World) -> Attempt:
            return lambda w2: w2.api.call(
                w2.member, method, path.format(g=w.gid, c=w.general, low=w.low["id"]), body
            )

        return build

    def channel_to_delete(w: World) -> Attempt:
        async def go(w2: World) -> Any:
            channel = await w2.api.channel(w2.owner, w2.gid, "doomed")
            return await w2.api.call(w2.member, "DELETE", f"/channels/{channel['id']}")

        return go

    def role_to_delete(w: World) -> Attempt:
        async def go(w2: World) -> Any:
            role = await w2.api.role(w2.owner, w2.gid, "doomed", 0, 1)
            return await w2.api.call(w2.member, "DELETE", f"/guilds/{w2.gid}/roles/{role['id']}")

        return go

    def on_victim(method: str, path: str, body: Any = None) -> Callable[[World], Attempt]:
        def build(w: World) -> Attempt:
            victim = w.victim()

            async def go(w2: World) -> Any:
                return await w2.api.call(
                    w2.member, method, path.format(g=w2.gid, u=victim.id, low=w2.low["id"]), body
                )

            return go

        return build

    def unassign(w: World) -> Attempt:
        victim = w.victim()

        async def go(w2: World) -> Any:
            await w2.api.assign(w2.owner, w2.gid, victim, w2.low["id"])
            return await w2.api.call(
                w2.member, "DELETE", f"/guilds/{w2.gid}/members/{victim.id}/roles/{w2.low['id']}"
            )

        return go

    def remove_override(w: World) -> Attempt:
        async def go(w2: World) -> Any:
            await w2.api.ok(
                w2.owner, "PUT", f"/channels/{w2.general}/overrides/{w2.low['id']}", {"allow": 0, "deny": 0}
            )
            return await w2.api.call(w2.member, "DELETE", f"/channels/{w2.general}/overrides/{w2.low['id']}")

        return go

    def unban(w: World) -> Attempt:
        victim = w.victim()

        async def go(w2: World) -> Any:
            await w2.api.ok(w2.owner, "PUT", f"/guilds/{w2.gid}/bans/{victim.id}", status=204)
            return await w2.api.call(w2.member, "DELETE", f"/guilds/{w2.gid}/bans/{victim.id}")

        return go

    return [
        Case(P.MANAGE_GUILD, "PATCH guild", simple("PATCH", "/guilds/{g}", {"name": "renamed"}), 200),
        Case(P.MANAGE_GUILD, "GET invites", simple("GET", "/guilds/{g}/invites"), 200),
        Case(P.CREATE_INVITE, "POST invite", simple("POST", "/guilds/{g}/invites", {"max_uses": 1}), 201),
        Case(
            P.MANAGE_CHANNELS,
            "POST channel",
            simple("POST", "/guilds/{g}/channels", {"name": "new", "channel_type": "voice"}),
            201,
        ),
        Case(P.MANAGE_CHANNELS, "PATCH channel", simple("PATCH", "/channels/{c}", {"name": "lobby"}), 200),
        Case(P.MANAGE_CHANNELS, "DELETE channel", channel_to_delete, 204),
        Case(
            P.MANAGE_CHANNELS, "POST category", simple("POST", "/guilds/{g}/categories", {"name": "cat"}), 201
        ),
        Case(
            P.MANAGE_ROLES,
            "POST role",
            simple("POST", "/guilds/{g}/roles", {"name": "new", "permissions": 0, "position": 1}),
            201,
        ),
        Case(
            P.MANAGE_ROLES, "PATCH role", simple("PATCH", "/guilds/{g}/roles/{low}", {"name": "lower"}), 200
        ),
        Case(P.MANAGE_ROLES, "DELETE role", role_to_delete, 204),
        Case(P.MANAGE_ROLES, "PUT member role", on_victim("PUT", "/guilds/{g}/members/{u}/roles/{low}"), 204),
        Case(P.MANAGE_ROLES, "DELETE member role", unassign, 204),
        Case(
            P.MANAGE_ROLES,
            "PUT override",
            simple("PUT", "/channels/{c}/overrides/{low}", {"allow": 0, "deny": int(P.VIEW_CHANNEL)}),
            200,
        ),
        Case(P.MANAGE_ROLES, "DELETE override", remove_override, 204),
        Case(
            P.TIMEOUT_MEMBERS,
            "POST timeout",
            on_victim("POST", "/guilds/{g}/members/{u}/timeout", {"until": soon()}),
            200,
        ),
        Case(P.KICK_MEMBERS, "DELETE member", on_victim("DELETE", "/guilds/{g}/members/{u}"), 204),
        Case(P.BAN_MEMBERS, "PUT ban", on_victim("PUT", "/guilds/{g}/bans/{u}", {"reason": "spam"}), 204),
        Case(P.BAN_MEMBERS, "GET bans", simple("GET", "/guilds/{g}/bans"), 200),
        Case(P.BAN_MEMBERS, "DELETE ban", unban, 204),
        Case(P.VIEW_AUDIT_LOG, "GET audit-log", simple("GET", "/guilds/{g}/audit-log"), 200),
    ]


async def test_every_route_needs_its_permission(gd: Daemon) -> None:
    cases = _cases()
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        view = await api.guild(owner)
        gid = view["id"]
        victims = [await api.user(f"victim{i}") for i in range(6)]
        for user in (member, *victims):
            await api.join(owner, user, gid)
        # @everyone may only look: every other bit has to come from a role
        await api.everyone(owner, gid, int(P.VIEW_CHANNEL))
        low = await api.role(owner, gid, "low", 0, 1)
        world = World(api, owner, member, victims, gid, view["channels"][0]["id"], low)
        for case in cases:
            attempt = case.attempt(world)
            denied = await attempt(world)
            assert denied.status_code == 403, (case.route, denied.text)
            assert_missing(denied, case.bit)
            grant = await api.role(owner, gid, f"grant {case.route}", int(case.bit), 10)
            await api.assign(owner, gid, member, grant["id"])
            allowed = await attempt(world)
            assert allowed.status_code == case.status, (case.route, allowed.status_code, allowed.text)
            await api.ok(owner, "DELETE", f"/guilds/{gid}/roles/{grant['id']}", status=204)
        # read-only routes need membership only
        for path in (
            f"/guilds/{gid}",
            f"/guilds/{gid}/members",
            f"/guilds/{gid}/roles",
            f"/guilds/{gid}/channels",
        ):
            await api.ok(member, "GET", path)


async def test_role_crud_and_member_roles(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        gid = (await api.guild(owner))["id"]
        await api.join(owner, member, gid)
        role = await api.role(owner, gid, "  Mods  ", int(P.KICK_MEMBERS | P.BAN_MEMBERS))
        assert role == {
            "id": role["id"],
            "guild_id": gid,
            "name": "Mods",
            "permissions": int(P.KICK_MEMBERS | P.BAN_MEMBERS),
            "position": 1,  # directly above @everyone by default
            "is_default": False,
        }
        updated = await api.ok(
            owner, "PATCH", f"/guilds/{gid}/roles/{role['id']}", {"position": 4, "name": "Moderators"}
        )
        assert updated["position"] == 4 and updated["name"] == "Moderators"
        assert updated["permissions"] == role["permissions"]
        await api.assign(owner, gid, member, role["id"])
        await api.assign(owner, gid, member, role["id"])  # idempotent
        got = await api.ok(owner, "GET", f"/guilds/{gid}/members/{member.id}")
        assert got["roles"] == [role["id"]]
        assert_status(
            await api.call(owner, "PUT", f"/guilds/{gid}/members/{member.id}/roles/nope"), 404, "not_found"
        )
        stranger = await api.user("stranger")
        assert_status(
            await api.call(owner, "PUT", f"/guilds/{gid}/members/{stranger.id}/roles/{role['id']}"),
            404,
            "not_found",
        )
        everyone = next(r for r in await api.ok(owner, "GET", f"/guilds/{gid}/roles") if r["is_default"])
        assert_status(
            await api.call(owner, "PUT", f"/guilds/{gid}/members/{member.id}/roles/{everyone['id']}"),
            400,
            "validation_error",
        )
        await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{member.id}/roles/{role['id']}", status=204)
        assert (await api.ok(owner, "GET", f"/guilds/{gid}/members/{member.id}"))["roles"] == []
        await api.assign(owner, gid, member, role["id"])
        # deleting a role takes it away from its members
        await api.ok(owner, "DELETE", f"/guilds/{gid}/roles/{role['id']}", status=204)
        assert (await api.ok(owner, "GET", f"/guilds/{gid}/members/{member.id}"))["roles"] == []
        assert [r["id"] for r in await api.ok(owner, "GET", f"/guilds/{gid}/roles")] == [everyone["id"]]
        assert_status(await api.call(owner, "DELETE", f"/guilds/{gid}/roles/{role['id']}"), 404, "not_found")
        # roles are listed by position
        for name, pos in (("c", 3), ("a", 9), ("b", 5)):
            await api.role(owner, gid, name, 0, pos)
        assert [r["name"] for r in await api.ok(owner, "GET", f"/guilds/{gid}/roles")] == [
            "@everyone",
            "c",
            "b",
            "a",
        ]


async def test_role_hierarchy(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, mod, peer, plain = [await api.user(n) for n in ("owner", "mod", "peer", "plain")]
        view = await api.guild(owner)
        gid = view["id"]
        general = view["channels"][0]["id"]
        for user in (mod, peer, plain):
            await api.join(owner, user, gid)
        mod_bits = P.MANAGE_ROLES | P.KICK_MEMBERS | P.TIMEOUT_MEMBERS | P.BAN_MEMBERS | P.VIEW_CHANNEL
        mod_role = await api.role(owner, gid, "mod", int(mod_bits), 5)
        peer_role = await api.role(owner, gid, "peer", 0, 5)
        high = await api.role(owner, gid, "high", 0, 7)
        low = await api.role(owner, gid, "low", 0, 2)
        rich_low = await api.role(owner, gid, "rich low", int(P.MANAGE_GUILD), 2)
        await api.assign(owner, gid, mod, mod_role["id"])
        await api.assign(owner, gid, peer, peer_role["id"])

        def forbidden(response: Any) -> None:
            error = assert_status(response, 403, "forbidden")
            assert "hierarch" in error["message"]

        # roles at or above one's own highest role cannot be touched
        for role in (high, peer_role, mod_role):
            forbidden(await api.call(mod, "PATCH", f"/guilds/{gid}/roles/{role['id']}", {"name": "mine"}))
            forbidden(await api.call(mod, "DELETE", f"/guilds/{gid}/roles/{role['id']}"))
            forbidden(await api.call(mod, "PUT", f"/guilds/{gid}/members/{plain.id}/roles/{role['id']}"))
            forbidden(
                await api.call(
                    mod, "PUT", f"/channels/{general}/overrides/{role['id']}", {"allow": 0, "deny": 0}
                )
            )
        # nor created or moved there
        for position in (5, 6, 100):
            forbidden(
                await api.call(
                    mod, "POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 0, "position": position}
                )
            )
            forbidden(
                await api.call(mod, "PATCH", f"/guilds/{gid}/roles/{low['id']}", {"position": position})
            )
        # below it, they can
        made = await api.ok(
            mod, "POST", f"/guilds/{gid}/roles", {"name": "made", "permissions": 0, "position": 4}, 201
        )
        assert made["position"] == 4
        assert (await api.ok(mod, "PATCH", f"/guilds/{gid}/roles/{low['id']}", {"position": 3}))[
            "position"
        ] == 3
        await api.ok(mod, "PUT", f"/guilds/{gid}/members/{plain.id}/roles/{low['id']}", status=204)
        # bits they lack cannot be granted, whichever way
        assert_missing(
            await api.call(
                mod, "POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": int(P.MANAGE_GUILD)}
            ),
            P.MANAGE_GUILD,
        )
        assert_missing(
            await api.call(
                mod, "PATCH", f"/guilds/{gid}/roles/{low['id']}", {"permissions": int(P.MANAGE_CHANNELS)}
            ),
            P.MANAGE_CHANNELS,
        )
        assert_missing(
            await api.call(mod, "PUT", f"/guilds/{gid}/members/{plain.id}/roles/{rich_low['id']}"),
            P.MANAGE_GUILD,
        )
        assert_missing(
            await api.call(
                mod,
                "PUT",
                f"/channels/{general}/overrides/{low['id']}",
                {"allow": int(P.MANAGE_MESSAGES), "deny": 0},
            ),
            P.MANAGE_MESSAGES,
        )
        # ... but bits they hold can, and a lacked bit already there may stay or be removed
        granted = await api.ok(
            mod, "PATCH", f"/guilds/{gid}/roles/{low['id']}", {"permissions": int(P.KICK_MEMBERS)}
        )
        assert granted["permissions"] == P.KICK_MEMBERS
        renamed = await api.ok(mod, "PATCH", f"/guilds/{gid}/roles/{rich_low['id']}", {"name": "still rich"})
        assert renamed["permissions"] == P.MANAGE_GUILD
        stripped = await api.ok(mod, "PATCH", f"/guilds/{gid}/roles/{rich_low['id']}", {"permissions": 0})
        assert stripped["permissions"] == 0
        # @everyone sits at 0: below everyone with a role, never renamed, moved or deleted
        everyone = view["roles"][0]
        patched = await api.ok(
            mod, "PATCH", f"/guilds/{gid}/roles/{everyone['id']}", {"permissions": int(P.VIEW_CHANNEL)}
        )
        assert patched["permissions"] == P.VIEW_CHANNEL
        # with MANAGE_ROLES from @everyone alone, one's rank is 0: not even @everyone is below it
        both = int(P.VIEW_CHANNEL | P.MANAGE_ROLES)
        await api.ok(owner, "PATCH", f"/guilds/{gid}/roles/{everyone['id']}", {"permissions": both})
        nobody = await api.user("nobody")
        await api.join(owner, nobody, gid)
        forbidden(
            await api.call(nobody, "PATCH", f"/guilds/{gid}/roles/{everyone['id']}", {"permissions": 0})
        )
        forbidden(await api.call(nobody, "POST", f"/guilds/{gid}/roles", {"name": "x", "permissions": 0}))
        await api.ok(
            owner, "PATCH", f"/guilds/{gid}/roles/{everyone['id']}", {"permissions": int(P.VIEW_CHANNEL)}
        )
        # members: the mod moderates those strictly below, never peers or the owner
        for target in (peer, owner):
            forbidden(await api.call(mod, "DELETE", f"/guilds/{gid}/members/{target.id}"))
            forbidden(await api.call(mod, "PUT", f"/guilds/{gid}/bans/{target.id}"))
            forbidden(
                await api.call(mod, "POST", f"/guilds/{gid}/members/{target.id}/timeout", {"until": soon()})
            )
        assert_status(await api.call(mod, "PUT", f"/guilds/{gid}/bans/{mod.id}"), 400, "validation_error")
        await api.ok(mod, "POST", f"/guilds/{gid}/members/{plain.id}/timeout", {"until": soon()})
        await api.ok(mod, "DELETE", f"/guilds/{gid}/members/{plain.id}", status=204)
        # the owner is above all of it
        await api.ok(
            owner,
            "PATCH",
            f"/guilds/{gid}/roles/{high['id']}",
            {"permissions": ALL_PERMISSIONS, "position": 50},
        )
        await api.ok(owner, "DELETE", f"/guilds/{gid}/members/{peer.id}", status=204)


async def test_overrides_resolve_per_channel(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member = await api.user("owner"), await api.user("member")
        view = await api.guild(owner)
        gid, general = view["id"], view["channels"][0]["id"]
        everyone = view["roles"][0]["id"]
        await api.join(owner, member, gid)
        helper = await api.role(owner, gid, "helper", 0, 2)
        await api.assign(owner, gid, member, helper["id"])

        async def mine() -> int:
            perms: int = (await api.ok(member, "GET", f"/channels/{general}/permissions/@me"))["permissions"]
            return perms

        assert await mine() == DEFAULT_EVERYONE
        # allow adds a bit in this channel only
        body = {"allow": int(P.MANAGE_MESSAGES), "deny": int(P.EMBED_LINKS)}
        put = await api.ok(owner, "PUT", f"/channels/{general}/overrides/{helper['id']}", body)
        assert put == {"channel_id": general, "role_id": helper["id"], **body}
        assert await mine() == (DEFAULT_EVERYONE | P.MANAGE_MESSAGES) & ~P.EMBED_LINKS
        voice = view["channels"][1]["id"]
        assert (await api.ok(member, "GET", f"/channels/{voice}/permissions/@me"))[
            "permissions"
        ] == DEFAULT_EVERYONE
        # deny on @everyone beats allow on helper
        await api.ok(
            owner,
            "PUT",
            f"/channels/{general}/overrides/{everyone}",
            {"allow": 0, "deny": int(P.MANAGE_MESSAGES)},
        )
        assert not await mine() & P.MANAGE_MESSAGES
        overrides = await api.ok(member, "GET", f"/channels/{general}/overrides")
        assert {o["role_id"] for o in overrides} == {everyone, helper["id"]}
        # replacing an override replaces both halves
        await api.ok(owner, "PUT", f"/channels/{general}/overrides/{everyone}", {"allow": 0, "deny": 0})
        await api.ok(owner, "DELETE", f"/channels/{general}/overrides/{helper['id']}", status=204)
        assert await mine() == DEFAULT_EVERYONE
        assert_status(
            await api.call(owner, "DELETE", f"/channels/{general}/overrides/{helper['id']}"), 404, "not_found"
        )
        assert_status(
            await api.call(owner, "PUT", f"/channels/{general}/overrides/nope", {"allow": 0, "deny": 0}),
            404,
            "not_found",
        )
