"""Messages over real sockets (protocol.md section 4): send, list, edit, delete, mentions,
reactions, search and their gateway events, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import json
from typing import Any

import httpx
import trio

from tests.e2e.conftest import Daemon
from tests.e2e.guild_helpers import PRESENCE_EVENTS, Api, User, assert_missing, assert_status, expect, gd
from tests.e2e.helpers import gateway
from vox.protocol.permissions import DEFAULT_EVERYONE, Permission

__all__ = ["gd"]


async def _hide_from_everyone(api: Api, owner: User, guild_id: str, channel_id: str) -> None:
    """Deny VIEW_CHANNEL to @everyone in one channel."""
    roles = await api.ok(owner, "GET", f"/guilds/{guild_id}/roles")
    everyone = next(r for r in roles if r["is_default"])
    await api.ok(
        owner,
        "PUT",
        f"/channels/{channel_id}/overrides/{everyone['id']}",
        {"allow": 0, "deny": int(Permission.VIEW_CHANNEL)},
    )


async def _allow_encrypted(api: Api, owner: User, guild_id: str) -> None:
    """Guilds refuse encrypted messages until their security settings allow them."""
    body = {"security_settings": {"allow_encrypted_messages": True}}
    await api.ok(owner, "PATCH", f"/guilds/{guild_id}", body)


async def _setup(api: Api) -> tuple[User, User, dict[str, Any], str]:
    owner = await api.user("owner")
    member = await api.user("member")
    guild = await api.guild(owner)
    await api.join(owner, member, guild["id"])
    channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
    return owner, member, guild, channel


async def test_send_list_edit_delete(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        sent = [
            await api.ok(member, "POST", f"/channels/{channel}/messages", {"content": f"  m{i}  "}, 201)
            for i in range(5)
        ]
        first = sent[0]
        assert first["content"] == "m0"  # trimmed
        assert first["author"] == {"id": member.id, "username": "member", "display_name": None}
        assert first["guild_id"] == guild["id"] and first["channel_id"] == channel
        assert first["encrypted"] is False and first["edited_at"] is None
        assert first["attachments"] == [] and first["reactions"] == []
        assert first["created_at"].endswith("Z")
        assert [m["id"] for m in sent] == sorted(m["id"] for m in sent)  # UUIDv7: time ordered

        page = await api.ok(owner, "GET", f"/channels/{channel}/messages?limit=2")
        assert [m["content"] for m in page] == ["m4", "m3"]
        older = await api.ok(owner, "GET", f"/channels/{channel}/messages?before={page[-1]['id']}&limit=2")
        assert [m["content"] for m in older] == ["m2", "m1"]
        newer = await api.ok(owner, "GET", f"/channels/{channel}/messages?after={sent[1]['id']}")
        assert [m["content"] for m in newer] == ["m2", "m3", "m4"]

        reply = await api.ok(
            owner, "POST", f"/channels/{channel}/messages", {"content": "re", "reply_to": first["id"]}, 201
        )
        assert reply["reply_to"] == first["id"]

        # only the author edits
        assert_status(
            await api.call(owner, "PATCH", f"/messages/{first['id']}", {"content": "x"}), 403, "forbidden"
        )
        edited = await api.ok(member, "PATCH", f"/messages/{first['id']}", {"content": "edited"})
        assert edited["content"] == "edited" and edited["edited_at"] is not None

        # delete: author, or MANAGE_MESSAGES (the owner has every bit); others are refused
        third = await api.user("third")
        await api.join(owner, third, guild["id"])
        assert_missing(
            await api.call(third, "DELETE", f"/messages/{sent[1]['id']}"), Permission.MANAGE_MESSAGES
        )
        await api.ok(member, "DELETE", f"/messages/{sent[1]['id']}", status=204)
        await api.ok(owner, "DELETE", f"/messages/{sent[2]['id']}", status=204)
        assert_status(await api.call(owner, "DELETE", f"/messages/{sent[2]['id']}"), 404, "not_found")
        assert_status(
            await api.call(member, "PATCH", f"/messages/{sent[1]['id']}", {"content": "zombie"}),
            404,
            "not_found",
        )
        remaining = await api.ok(owner, "GET", f"/channels/{channel}/messages")
        assert [m["content"] for m in remaining] == ["re", "m4", "m3", "edited"]


async def test_bad_message_input(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, _, guild, channel = await _setup(api)
        path = f"/channels/{channel}/messages"
        cases: list[tuple[Any, str]] = [
            ({}, "content"),
            ({"content": 5}, "content"),
            ({"content": "   "}, "content"),
            ({"content": "x" * 4001}, "content"),
            ({"content": "x" * 40_000}, "content"),
            ({"content": "hi", "reply_to": "nope"}, "reply_to"),
            ({"content": "hi", "reply_to": "00000000-0000-7000-8000-000000000000"}, "reply_to"),
            ({"content": "hi", "encrypted": "yes"}, "encrypted"),
            ({"content": "c" * (16 * 1024 + 1), "encrypted": True}, "content"),
        ]
        for body, field in cases:
            error = assert_status(await api.call(owner, "POST", path, body), 400, "validation_error")
            assert field in error["fields"], (body, error)
        for query in ("limit=0", "limit=101", "limit=x", "before=zzz", "after=1"):
            assert_status(
                await client.get(f"/api/v1{path}?{query}", headers=owner.h), 400, "validation_error"
            )
        voice = next(c for c in guild["channels"] if c["channel_type"] == "voice")["id"]
        assert_status(
            await api.call(owner, "POST", f"/channels/{voice}/messages", {"content": "hi"}),
            400,
            "validation_error",
        )
        assert await api.ok(owner, "GET", path) == []
        outsider = await api.user("outsider")
        assert_status(await api.call(outsider, "POST", path, {"content": "hi"}), 404, "not_found")
        assert_status(await api.call(outsider, "GET", path), 404, "not_found")


async def test_permissions_hidden_channel_and_timeouts(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        await api.everyone(owner, guild["id"], int(DEFAULT_EVERYONE) & ~int(Permission.SEND_MESSAGES))
        assert_missing(
            await api.call(member, "POST", f"/channels/{channel}/messages", {"content": "hi"}),
            Permission.SEND_MESSAGES,
        )
        secret = await api.channel(owner, guild["id"], "secret")
        await _hide_from_everyone(api, owner, guild["id"], secret["id"])
        hidden = await api.ok(
            owner, "POST", f"/channels/{secret['id']}/messages", {"content": "classified"}, 201
        )
        assert_status(await api.call(member, "GET", f"/channels/{secret['id']}/messages"), 404, "not_found")
        assert_status(
            await api.call(member, "PATCH", f"/messages/{hidden['id']}", {"content": "x"}), 404, "not_found"
        )
        assert_status(
            await api.call(member, "PUT", f"/messages/{hidden['id']}/reactions/👍"), 404, "not_found"
        )
        # a timed-out member keeps only VIEW_CHANNEL: can read, cannot send
        await api.everyone(owner, guild["id"], int(DEFAULT_EVERYONE))
        until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)).isoformat()
        await api.ok(owner, "POST", f"/guilds/{guild['id']}/members/{member.id}/timeout", {"until": until})
        assert_missing(
            await api.call(member, "POST", f"/channels/{channel}/messages", {"content": "hi"}),
            Permission.SEND_MESSAGES,
        )
        assert isinstance(await api.ok(member, "GET", f"/channels/{channel}/messages"), list)


async def test_mentions(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        plain = await api.ok(
            member, "POST", f"/channels/{channel}/messages", {"content": f"@everyone hey <@{owner.id}>"}, 201
        )
        assert plain["mention_type"] == "user" and plain["mentions"] == [owner.id]
        loud = await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "@everyone hey"}, 201)
        assert loud["mention_type"] == "everyone"
        here = await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "@here hey"}, 201)
        assert here["mention_type"] == "here"
        await _allow_encrypted(api, owner, guild["id"])
        secret = await api.ok(
            member,
            "POST",
            f"/channels/{channel}/messages",
            {"content": f"<@{owner.id}> opaque", "encrypted": True, "nonce": "n1"},
            201,
        )
        assert secret["mention_type"] is None and secret["mentions"] == [] and secret["encrypted"] is True
        assert secret["content"] == f"<@{owner.id}> opaque" and secret["nonce"] == "n1"


async def test_reactions(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        msg = await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "react"}, 201)
        await api.ok(member, "PUT", f"/messages/{msg['id']}/reactions/👍", status=204)
        await api.ok(member, "PUT", f"/messages/{msg['id']}/reactions/👍", status=204)  # idempotent
        await api.ok(owner, "PUT", f"/messages/{msg['id']}/reactions/👍", status=204)
        await api.ok(owner, "PUT", f"/messages/{msg['id']}/reactions/🎉", status=204)
        mine = (await api.ok(member, "GET", f"/channels/{channel}/messages"))[0]["reactions"]
        assert mine == [{"emoji": "👍", "count": 2, "me": True}, {"emoji": "🎉", "count": 1, "me": False}]
        await api.ok(member, "DELETE", f"/messages/{msg['id']}/reactions/👍", status=204)
        after = (await api.ok(member, "GET", f"/channels/{channel}/messages"))[0]["reactions"]
        assert after == [{"emoji": "👍", "count": 1, "me": False}, {"emoji": "🎉", "count": 1, "me": False}]
        for bad in ("abc", ":nope:", "%3Cscript%3E"):
            assert_status(
                await api.call(member, "PUT", f"/messages/{msg['id']}/reactions/{bad}"),
                400,
                "validation_error",
            )
        await api.everyone(owner, guild["id"], int(DEFAULT_EVERYONE) & ~int(Permission.ADD_REACTIONS))
        assert_missing(
            await api.call(member, "PUT", f"/messages/{msg['id']}/reactions/🔥"), Permission.ADD_REACTIONS
        )


async def test_search_respects_permissions(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        gid = guild["id"]
        await api.ok(member, "POST", f"/channels/{channel}/messages", {"content": "the quick brown fox"}, 201)
        gone = await api.ok(
            member, "POST", f"/channels/{channel}/messages", {"content": "a fox that vanished"}, 201
        )
        await api.ok(member, "DELETE", f"/messages/{gone['id']}", status=204)
        await _allow_encrypted(api, owner, gid)
        await api.ok(
            member,
            "POST",
            f"/channels/{channel}/messages",
            {"content": "fox ciphertext", "encrypted": True, "nonce": "x"},
            201,
        )
        secret = await api.channel(owner, gid, "secret")
        await _hide_from_everyone(api, owner, gid, secret["id"])
        await api.ok(
            owner, "POST", f"/channels/{secret['id']}/messages", {"content": "hidden fox plans"}, 201
        )

        seen_by_member = (await api.ok(member, "GET", f"/guilds/{gid}/search?q=fox"))["results"]
        assert [m["content"] for m in seen_by_member] == ["the quick brown fox"]
        seen_by_owner = (await api.ok(owner, "GET", f"/guilds/{gid}/search?q=fox"))["results"]
        assert sorted(m["content"] for m in seen_by_owner) == ["hidden fox plans", "the quick brown fox"]
        by_author = (await api.ok(owner, "GET", f"/guilds/{gid}/search?q=fox&author_id={owner.id}"))[
            "results"
        ]
        assert [m["content"] for m in by_author] == ["hidden fox plans"]
        in_channel = (await api.ok(owner, "GET", f"/guilds/{gid}/search?q=fox&channel_id={channel}"))[
            "results"
        ]
        assert [m["content"] for m in in_channel] == ["the quick brown fox"]
        assert (await api.ok(owner, "GET", f'/guilds/{gid}/search?q=(fox"'))["results"] != []
        assert_status(
            await client.get(f"/api/v1/guilds/{gid}/search?q=", headers=owner.h), 400, "validation_error"
        )
        outsider = await api.user("outsider")
        assert_status(await api.call(outsider, "GET", f"/guilds/{gid}/search?q=fox"), 404, "not_found")


async def _quiet(ws: Any, seconds: float = 0.4) -> list[dict[str, Any]]:
    """Frames that arrive within ``seconds`` (there should be none)."""
    got: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            data = json.loads(await ws.get_message())
            if data["type"] not in PRESENCE_EVENTS:
                got.append(data)
    return got


async def test_message_events_reach_viewers_only(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        outsider = await api.user("outsider")
        async with gateway(gd, member.token) as (m_ws, _), gateway(gd, outsider.token) as (o_ws, _):
            msg = await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "hello"}, 201)
            got = await expect(m_ws, "message_new")
            assert got == msg
            await api.ok(owner, "PATCH", f"/messages/{msg['id']}", {"content": "hello!"})
            assert (await expect(m_ws, "message_edit"))["content"] == "hello!"
            await api.ok(owner, "PUT", f"/messages/{msg['id']}/reactions/👍", status=204)
            assert await expect(m_ws, "reaction_add") == {
                "message_id": msg["id"],
                "channel_id": channel,
                "guild_id": guild["id"],
                "user_id": owner.id,
                "emoji": "👍",
            }
            await api.ok(owner, "DELETE", f"/messages/{msg['id']}/reactions/👍", status=204)
            assert (await expect(m_ws, "reaction_remove"))["emoji"] == "👍"
            await api.ok(owner, "DELETE", f"/messages/{msg['id']}", status=204)
            assert await expect(m_ws, "message_delete") == {
                "id": msg["id"],
                "channel_id": channel,
                "guild_id": guild["id"],
            }
            # a channel the member cannot view delivers nothing to them
            secret = await api.channel(owner, guild["id"], "secret")
            await expect(m_ws, "channel_create")
            await _hide_from_everyone(api, owner, guild["id"], secret["id"])
            await expect(m_ws, "channel_delete")
            await api.ok(owner, "POST", f"/channels/{secret['id']}/messages", {"content": "psst"}, 201)
            assert await _quiet(m_ws) == []
            assert await _quiet(o_ws, 0.1) == []


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


async def test_uploads(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        path = f"/api/v1/channels/{channel}/messages/upload"
        ok = await client.post(
            path,
            headers=member.h,
            files=[
                ("file", ("../../etc/cat.png", PNG, "image/png")),
                ("file", ("notes.txt", b"hello\n", "x/y")),
            ],
            data={"content": "pics"},
        )
        assert ok.status_code == 201, ok.text
        message = ok.json()
        assert message["content"] == "pics"
        names = [a["filename"] for a in message["attachments"]]
        assert names == ["cat.png", "notes.txt"]
        assert [a["mime_type"] for a in message["attachments"]] == ["image/png", "text/plain"]
        png = message["attachments"][0]
        assert png["size_bytes"] == len(PNG) and png["url"] == f"/api/v1/attachments/{png['id']}"

        got = await client.get(png["url"], headers=owner.h)
        assert got.status_code == 200 and got.content == PNG
        assert got.headers["content-type"] == "image/png"
        assert got.headers["x-content-type-options"] == "nosniff"
        text = await client.get(message["attachments"][1]["url"], headers=owner.h)
        assert text.headers["content-disposition"].startswith("attachment")
        outsider = await api.user("outsider")
        assert (await client.get(png["url"], headers=outsider.h)).status_code == 404
        assert (await client.get(png["url"])).status_code == 401

        exe = await client.post(
            path, headers=member.h, files=[("file", ("cute.png", b"MZ\x90\x00" + b"\x00" * 200, "image/png"))]
        )
        assert exe.status_code == 415 and exe.json()["error"]["code"] == "unsupported_media_type"
        html = await client.post(
            path, headers=member.h, files=[("file", ("a.txt", b"<html><script>", "text/plain"))]
        )
        assert html.status_code == 415
        none = await client.post(path, headers=member.h, data={"content": "no files"})
        assert none.status_code == 415  # a form without multipart is not an upload
        only_text = await client.post(
            path,
            headers={**member.h, "content-type": "multipart/form-data; boundary=b"},
            content=b'--b\r\nContent-Disposition: form-data; name="content"\r\n\r\nno files\r\n--b--\r\n',
        )
        assert only_text.status_code == 400
        await api.everyone(owner, guild["id"], int(DEFAULT_EVERYONE) & ~int(Permission.ATTACH_FILES))
        refused = await client.post(path, headers=member.h, files=[("file", ("a.png", PNG, "image/png"))])
        assert_missing(refused, Permission.ATTACH_FILES)
        # deleting the message removes its file
        await api.ok(member, "DELETE", f"/messages/{message['id']}", status=204)
        assert (await client.get(png["url"], headers=owner.h)).status_code == 404
    blobs = gd.config.data_dir / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


async def test_upload_limits_leave_nothing_behind(nursery: trio.Nursery, tmp_path: Any) -> None:
    from tests.e2e.conftest import start_daemon

    d = await start_daemon(nursery, tmp_path, max_upload_bytes=4096)
    async with d.http() as client:
        api = Api(client)
        owner, _, _, channel = await _setup(api)
        path = f"/api/v1/channels/{channel}/messages/upload"
        big = await client.post(
            path,
            headers=owner.h,
            files=[
                ("file", ("small.png", PNG, "image/png")),
                ("file", ("big.png", PNG + b"\x00" * 5000, "image/png")),
            ],
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        # a body cut off mid-file
        boundary = "vox-cut"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + PNG
        cut = await client.post(
            path,
            headers={**owner.h, "content-type": f"multipart/form-data; boundary={boundary}"},
            content=body,
        )
        assert cut.status_code == 400
        assert await api.ok(owner, "GET", f"/channels/{channel}/messages") == []
    blobs = d.config.data_dir / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    d.stop.set()


async def test_message_routes_need_auth(gd: Daemon) -> None:
    async with httpx.AsyncClient(base_url=gd.rest) as client:
        for method, path in [
            ("GET", "/api/v1/channels/x/messages"),
            ("POST", "/api/v1/channels/x/messages"),
            ("PATCH", "/api/v1/messages/x"),
            ("DELETE", "/api/v1/messages/x"),
            ("GET", "/api/v1/guilds/x/search?q=a"),
            ("GET", "/api/v1/attachments/x"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 401, (method, path)


async def test_deleting_a_channel_or_guild_removes_its_files(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild, channel = await _setup(api)
        other = await api.channel(owner, guild["id"], "other")
        for target in (channel, other["id"]):
            response = await client.post(
                f"/api/v1/channels/{target}/messages/upload",
                headers=owner.h,
                files=[("file", ("a.png", PNG, "image/png"))],
            )
            assert response.status_code == 201
        blobs = gd.config.data_dir / "blobs"

        def files() -> list[Any]:
            return [p for p in blobs.rglob("*") if p.is_file()]

        assert len(files()) == 2
        # Refused deletions remove nothing.
        assert (await api.call(member, "DELETE", f"/channels/{other['id']}")).status_code == 403
        assert (await api.call(member, "DELETE", f"/guilds/{guild['id']}")).status_code == 403
        assert len(files()) == 2
        await api.ok(owner, "DELETE", f"/channels/{other['id']}", status=204)
        assert len(files()) == 1
        await api.ok(owner, "DELETE", f"/guilds/{guild['id']}", status=204)
        assert files() == []
