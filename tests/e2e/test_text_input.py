"""U+0000 in any text a client sends is a 400 validation_error on both storage engines (it was a 500
on PostgreSQL, found by the API fuzz run), and nothing of the request is written."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.e2e.conftest import start_daemon
from tests.e2e.helpers import bearer, user_with_token

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


def assert_refused(response: object, field: str) -> None:
    assert response.status_code == 400, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "validation_error"
    assert error["fields"] == {field: "must not contain U+0000"}, error


async def test_nul_is_refused_everywhere(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> None:
    d = await start_daemon(nursery, tmp_path, database_url=database_url)
    try:
        async with d.http() as client:
            _, token = await user_with_token(client, "nul")
            auth = bearer(token)
            guild = await client.post("/api/v1/guilds", json={"name": "real"}, headers=auth)
            assert guild.status_code == 201
            guild_id = guild.json()["id"]
            channel_id = guild.json()["channels"][0]["id"]

            # JSON body
            body = b'{"name": "a\\u0000b"}'
            refused = await client.post(
                "/api/v1/guilds", content=body, headers={**auth, "Content-Type": "application/json"}
            )
            assert_refused(refused, "body")
            # The escaped text "\u0000" (a backslash, then u0000) is ordinary text.
            literal = await client.post(
                "/api/v1/guilds",
                content=b'{"name": "a\\\\u0000b"}',
                headers={**auth, "Content-Type": "application/json"},
            )
            assert literal.status_code == 201, literal.text
            assert literal.json()["name"] == "a\\u0000b"
            mine = await client.get("/api/v1/guilds", headers=auth)
            assert sorted(g["name"] for g in mine.json()) == ["a\\u0000b", "real"]

            # path parameters and query parameters
            assert_refused(await client.get("/api/v1/users/a%00b", headers=auth), "path")
            assert_refused(await client.get("/api/v1/guilds/a%00b", headers=auth), "path")
            assert_refused(await client.get("/api/v1/invites/a%00b", headers=auth), "path")
            search = await client.get(
                f"/api/v1/guilds/{guild_id}/search", params={"q": "hi", "author_id": "a\x00b"}, headers=auth
            )
            assert_refused(search, "author_id")
            history = await client.get(
                f"/api/v1/channels/{channel_id}/messages", params={"before": "\x00"}, headers=auth
            )
            assert_refused(history, "before")

            # multipart text field
            upload = await client.post(
                f"/api/v1/channels/{channel_id}/messages/upload",
                headers=auth,
                data={"content": "hi\x00there"},
                files=[("file", ("a.png", PNG, "image/png"))],
            )
            assert_refused(upload, "content")
        # A new connection: refused before its body was read, the upload's connection is closed.
        async with d.http() as client:
            messages = await client.get(f"/api/v1/channels/{channel_id}/messages", headers=auth)
            assert messages.status_code == 200
            assert messages.json() == []
    finally:
        d.stop.set()
        with trio.fail_after(30):
            await d.done.wait()
