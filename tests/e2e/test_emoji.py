"""Guild emoji over real sockets (protocol.md section 4): upload, list, serve, delete, permission
checks, refused uploads that leave nothing behind, the per-guild limit, guild_emoji_updated, and
reactions with ``:name:``, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.e2e.conftest import Daemon
from tests.e2e.guild_helpers import Api, User, assert_missing, assert_status, gd
from tests.e2e.helpers import gateway
from tests.e2e.social_helpers import event, frames
from vox.protocol.permissions import Permission
from vox.services.emoji import MAX_EMOJI_PER_GUILD

__all__ = ["gd"]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
GIF = b"GIF89a" + b"\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
LIMIT = 256 * 1024


async def upload(
    client: httpx.AsyncClient, who: User, guild_id: str, name: str | None, image: bytes | None
) -> httpx.Response:
    data = {} if name is None else {"name": name}
    # An unrelated field keeps the body multipart when there is no image.
    files: dict[str, Any] = (
        {"other": (None, b"")} if image is None else {"image": ("emoji.bin", image, "image/png")}
    )
    return await client.post(f"/api/v1/guilds/{guild_id}/emoji", headers=who.h, data=data, files=files)


def blob_files(daemon: Daemon) -> list[Path]:
    return sorted(p for p in (daemon.config.data_dir / "blobs").rglob("*") if p.is_file())


async def _setup(api: Api) -> tuple[User, User, dict[str, Any]]:
    owner, member = await api.user("owner"), await api.user("member")
    guild = await api.guild(owner)
    await api.join(owner, member, guild["id"])
    return owner, member, guild


async def test_upload_list_serve_react_delete(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild = await _setup(api)
        gid = guild["id"]
        outsider = await api.user("outsider")
        async with gateway(gd, member.token) as (member_ws, _), gateway(gd, outsider.token) as (out_ws, _):
            response = await upload(client, owner, gid, "party_parrot", PNG)
            assert response.status_code == 201, response.text
            emoji = response.json()
            assert emoji == {
                "id": emoji["id"],
                "guild_id": gid,
                "name": "party_parrot",
                "mime_type": "image/png",
                "url": f"/api/v1/guilds/{gid}/emoji/{emoji['id']}/image",
                "uploader_id": owner.id,
                "created_at": emoji["created_at"],
            }
            # Every member hears of it, with the guild's whole list; outsiders hear nothing.
            assert await event(member_ws, "guild_emoji_updated") == {"guild_id": gid, "emoji": [emoji]}
            assert await frames(out_ws, 0.2) == []

            assert await api.ok(member, "GET", f"/guilds/{gid}/emoji") == [emoji]
            image = await client.get(emoji["url"], headers=member.h)
            assert image.status_code == 200 and image.content == PNG
            assert image.headers["content-type"] == "image/png"
            assert image.headers["x-content-type-options"] == "nosniff"
            assert image.headers["content-disposition"].startswith("inline")
            for path in (f"/guilds/{gid}/emoji", f"/guilds/{gid}/emoji/{emoji['id']}/image"):
                assert_status(await api.call(outsider, "GET", path), 404, "not_found")
            assert (await client.get(emoji["url"])).status_code == 401
            [stored] = blob_files(gd)
            assert stored.read_bytes() == PNG and stored.name == f"{emoji['id']}.png"
            assert stored.parent.name == gid and stored.parent.parent.name == "emoji"

            # Reactions name custom emoji as :name:, matched exactly.
            channel = next(c for c in guild["channels"] if c["channel_type"] == "text")["id"]
            msg = await api.ok(owner, "POST", f"/channels/{channel}/messages", {"content": "look"}, 201)
            await api.ok(member, "PUT", f"/messages/{msg['id']}/reactions/:party_parrot:", status=204)
            reactions = (await api.ok(owner, "GET", f"/channels/{channel}/messages"))[0]["reactions"]
            assert reactions == [{"emoji": ":party_parrot:", "count": 1, "me": False}]
            for unknown in (":Party_Parrot:", ":nope:"):
                assert_status(
                    await api.call(member, "PUT", f"/messages/{msg['id']}/reactions/{unknown}"),
                    400,
                    "validation_error",
                )
            # Another guild's emoji is unknown here.
            other = await api.guild(owner, "Other")
            other_channel = next(c for c in other["channels"] if c["channel_type"] == "text")["id"]
            elsewhere = await api.ok(
                owner, "POST", f"/channels/{other_channel}/messages", {"content": "x"}, 201
            )
            assert_status(
                await api.call(owner, "PUT", f"/messages/{elsewhere['id']}/reactions/:party_parrot:"),
                400,
                "validation_error",
            )

            gif = (await upload(client, owner, gid, "Dance", GIF)).json()
            assert gif["mime_type"] == "image/gif"
            webp = (await upload(client, owner, gid, "a1", WEBP)).json()
            assert webp["mime_type"] == "image/webp"
            for _ in range(2):
                await event(member_ws, "guild_emoji_updated", skip={"message_new", "reaction_add"})
            # Listed by name, byte order (upper case first).
            listed = await api.ok(member, "GET", f"/guilds/{gid}/emoji")
            assert [e["name"] for e in listed] == ["Dance", "a1", "party_parrot"]
            assert (await client.get(gif["url"], headers=owner.h)).headers["content-type"] == "image/gif"

            await api.ok(owner, "DELETE", f"/guilds/{gid}/emoji/{emoji['id']}", status=204)
            updated = await event(member_ws, "guild_emoji_updated", skip={"reaction_add"})
            assert updated == {"guild_id": gid, "emoji": [gif, webp]}
            assert_status(
                await api.call(owner, "DELETE", f"/guilds/{gid}/emoji/{emoji['id']}"), 404, "not_found"
            )
            assert_status(
                await api.call(member, "GET", f"/guilds/{gid}/emoji/{emoji['id']}/image"), 404, "not_found"
            )
            assert not stored.exists() and len(blob_files(gd)) == 2
            # A deleted emoji can no longer be used; reactions already made stay (as text) until
            # their users remove them.
            assert_status(
                await api.call(owner, "PUT", f"/messages/{msg['id']}/reactions/:party_parrot:"),
                400,
                "validation_error",
            )
            history = f"/channels/{channel}/messages"
            assert (await api.ok(owner, "GET", history))[0]["reactions"] == [
                {"emoji": ":party_parrot:", "count": 1, "me": False}
            ]
            await api.ok(member, "DELETE", f"/messages/{msg['id']}/reactions/:party_parrot:", status=204)
            assert (await api.ok(owner, "GET", history))[0]["reactions"] == []
            assert await frames(out_ws, 0.05) == []

        # Both changes are moderation actions, in the guild's audit log.
        log = await api.ok(owner, "GET", f"/guilds/{gid}/audit-log?limit=100")
        entries = [
            (e["action"], e["target_id"], e["details"]) for e in log if e["action"].startswith("emoji_")
        ]
        assert entries[0] == ("emoji_delete", emoji["id"], {"name": "party_parrot"})
        assert ("emoji_create", emoji["id"], {"name": "party_parrot"}) in entries
        assert len(entries) == 4
        assert {e["actor_id"] for e in log if e["action"].startswith("emoji_")} == {owner.id}


async def test_manage_emoji_permission(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, member, guild = await _setup(api)
        gid = guild["id"]
        emoji = (await upload(client, owner, gid, "owned", PNG)).json()

        assert_missing(await upload(client, member, gid, "mine", PNG), Permission.MANAGE_EMOJI)
        assert_missing(
            await api.call(member, "DELETE", f"/guilds/{gid}/emoji/{emoji['id']}"), Permission.MANAGE_EMOJI
        )
        # Permission comes before the emoji's existence: no probing of ids without it.
        assert_missing(
            await api.call(member, "DELETE", f"/guilds/{gid}/emoji/00000000-0000-4000-8000-000000000000"),
            Permission.MANAGE_EMOJI,
        )
        outsider = await api.user("outsider")
        assert_status(await upload(client, outsider, gid, "nope", PNG), 404, "not_found")
        assert_status(
            await api.call(outsider, "DELETE", f"/guilds/{gid}/emoji/{emoji['id']}"), 404, "not_found"
        )

        role = await api.role(owner, gid, "emoji", int(Permission.MANAGE_EMOJI))
        await api.assign(owner, gid, member, role["id"])
        mine = await upload(client, member, gid, "mine", PNG)
        assert mine.status_code == 201 and mine.json()["uploader_id"] == member.id
        await api.ok(member, "DELETE", f"/guilds/{gid}/emoji/{emoji['id']}", status=204)

        # A timed-out member keeps only VIEW_CHANNEL: they see emoji but cannot manage them.
        until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
        await api.ok(owner, "POST", f"/guilds/{gid}/members/{member.id}/timeout", {"until": until})
        assert_missing(await upload(client, member, gid, "muted", PNG), Permission.MANAGE_EMOJI)
        assert [e["name"] for e in await api.ok(member, "GET", f"/guilds/{gid}/emoji")] == ["mine"]
        assert len(blob_files(gd)) == 1


async def test_refused_uploads_leave_nothing(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, _, guild = await _setup(api)
        gid = guild["id"]
        ok = await upload(client, owner, gid, "taken", PNG)
        assert ok.status_code == 201

        for image in (JPEG, b"hello, world\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"MZ" + PNG):
            assert_status(await upload(client, owner, gid, "typed", image), 415, "unsupported_media_type")
        for image in (PNG + b"\x00" * (LIMIT - len(PNG) + 1), PNG + b"\x00" * (2 * LIMIT)):
            assert_status(await upload(client, owner, gid, "huge", image), 413, "payload_too_large")
        for name in ("a", "x" * 33, "bad-name", "sp ace", "émoji", ":colon:", "", " padded"):
            error = assert_status(await upload(client, owner, gid, name, PNG), 400, "validation_error")
            assert "name" in error["fields"], name
        for name, image, field in ((None, PNG, "name"), ("fine", None, "image"), ("fine", b"", "image")):
            error = assert_status(await upload(client, owner, gid, name, image), 400, "validation_error")
            assert field in error["fields"], (name, field)
        duplicate = assert_status(await upload(client, owner, gid, "taken", GIF), 409, "conflict")
        assert duplicate["field"] == "name"
        two_images = await client.post(
            f"/api/v1/guilds/{gid}/emoji",
            headers=owner.h,
            data={"name": "twice"},
            files=[("image", ("a.png", PNG, "image/png")), ("image", ("b.png", PNG, "image/png"))],
        )
        assert_status(two_images, 400, "validation_error")
        as_json = await api.call(owner, "POST", f"/guilds/{gid}/emoji", {"name": "json", "image": "iVBOR"})
        assert_status(as_json, 415, "unsupported_media_type")
        cut = await client.post(
            f"/api/v1/guilds/{gid}/emoji",
            headers={**owner.h, "content-type": "multipart/form-data; boundary=b"},
            content=b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\ncut\r\n--b\r\n'
            b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + PNG,
        )
        assert_status(cut, 400, "validation_error")

        assert [e["name"] for e in await api.ok(owner, "GET", f"/guilds/{gid}/emoji")] == ["taken"]
        assert [p.name for p in blob_files(gd)] == [f"{ok.json()['id']}.png"]


async def test_per_guild_limit(gd: Daemon) -> None:
    async with gd.http() as client:
        api = Api(client)
        owner, _, guild = await _setup(api)
        gid = guild["id"]
        for i in range(MAX_EMOJI_PER_GUILD - 3):
            assert (await upload(client, owner, gid, f"e{i:03d}", PNG)).status_code == 201
        # Racing for the last three places: exactly three win, and no blob is left by the others.
        statuses: list[int] = []

        async def race(i: int) -> None:
            statuses.append((await upload(client, owner, gid, f"race{i}", PNG)).status_code)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(race, i)
        assert sorted(statuses) == [201] * 3 + [403] * 3
        assert_status(await upload(client, owner, gid, "late", PNG), 403, "forbidden")
        assert len(await api.ok(owner, "GET", f"/guilds/{gid}/emoji")) == MAX_EMOJI_PER_GUILD
        assert len(blob_files(gd)) == MAX_EMOJI_PER_GUILD
        # Another guild has its own allowance.
        other = await api.guild(owner, "Other")
        assert (await upload(client, owner, other["id"], "late", PNG)).status_code == 201


async def test_emoji_routes_need_auth(gd: Daemon) -> None:
    async with gd.http() as client:
        for method, path in [
            ("GET", "/api/v1/guilds/x/emoji"),
            ("POST", "/api/v1/guilds/x/emoji"),
            ("DELETE", "/api/v1/guilds/x/emoji/y"),
            ("GET", "/api/v1/guilds/x/emoji/y/image"),
        ]:
            assert_status(await client.request(method, path), 401, "unauthorized")
