"""/api/v1/guilds/{guild_id}/emoji: a guild's custom emoji and their images (protocol.md section 4)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable
from typing import Any

from quart import Blueprint, Response, request

from vox.api import ctx
from vox.api.files import blob_response
from vox.api.guard import identity
from vox.api.spec import Upload, documented
from vox.errors import APIError
from vox.services.emoji import read_emoji_form

bp = Blueprint("emoji", __name__, url_prefix="/api/v1/guilds/<guild_id>/emoji")

# Past this a refused upload is not worth reading to the end: the connection is dropped instead.
_MAX_DRAIN_BYTES = 16 * 1024 * 1024


@bp.get("")
@documented("Custom emoji of a guild", returns="array")
async def list_emoji(guild_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().emoji.of_guild(who.user_id, guild_id)


@bp.post("")
@documented(
    "Upload a custom emoji",
    upload=Upload(files=("image",), fields=("name",), required=("image", "name")),
    ok=201,
)
async def upload_emoji(guild_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    service = ctx().emoji
    try:
        # Membership and MANAGE_EMOJI before a single byte of the body is read.
        await service.check_can_manage(who.user_id, guild_id)
        form = await read_emoji_form(request.body, request.headers.get("Content-Type", ""))
    except APIError:
        await _drain(request.body)
        raise
    return await service.create(who.user_id, guild_id, form), 201


async def _drain(body: AsyncIterable[bytes]) -> None:
    """Read and drop what is left of a refused body (up to a bound), so that clients which send it
    all before reading the answer (most HTTP libraries) get the error instead of a reset."""
    dropped = 0
    with contextlib.suppress(Exception):
        async for chunk in body:
            dropped += len(chunk)
            if dropped > _MAX_DRAIN_BYTES:
                break


@bp.delete("/<emoji_id>")
@documented("Delete a custom emoji", ok=204, returns="none")
async def delete_emoji(guild_id: str, emoji_id: str) -> Response:
    who = await identity()
    await ctx().emoji.delete(who.user_id, guild_id, emoji_id)
    return Response(b"", status=204)


@bp.get("/<emoji_id>/image")
@documented("The image of a custom emoji", returns="binary")
async def emoji_image(guild_id: str, emoji_id: str) -> Response:
    who = await identity()
    row = await ctx().emoji.image(who.user_id, guild_id, emoji_id)
    extension = row["storage_key"].rsplit(".", 1)[-1]
    return await blob_response(
        row["storage_key"],
        content_type=row["mime_type"],
        disposition=f'inline; filename="{row["name"]}.{extension}"',
        # An emoji's image never changes (a new upload is a new id), but membership can end.
        cache_seconds=86400,
    )
