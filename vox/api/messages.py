"""/api/v1/channels/{id}/messages, /api/v1/messages/{id}, reactions and guild search (section 4)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Annotated, Any

import msgspec
from quart import Blueprint, Response, request

from vox.api import ctx
from vox.api.bodies import json_body, query_limit
from vox.api.files import blob_response
from vox.api.guard import identity
from vox.api.spec import AFTER, BEFORE, Query, Upload, documented, limit
from vox.errors import ValidationError
from vox.services.ids import uuid7
from vox.services.uploads import UploadPlan
from vox.storage.messages import NewAttachment

bp = Blueprint("messages", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_QUERY = 256


class SendBody(msgspec.Struct):
    # Length rules (1-4000 after trimming; 16 KiB of ciphertext) are checked by the service,
    # which knows whether the content is encrypted; this bound only stops absurd bodies early.
    content: Annotated[str, msgspec.Meta(max_length=32 * 1024)]
    reply_to: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    encrypted: bool = False
    nonce: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class EditBody(msgspec.Struct):
    content: Annotated[str, msgspec.Meta(max_length=32 * 1024)]


@bp.get("/channels/<channel_id>/messages")
@documented("Messages of a channel", query=(limit(DEFAULT_LIMIT, MAX_LIMIT), BEFORE, AFTER), returns="array")
async def list_messages(channel_id: str) -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().messages.history(
        who.user_id,
        channel_id,
        before=request.args.get("before"),
        after=request.args.get("after"),
        limit=query_limit(DEFAULT_LIMIT, MAX_LIMIT),
    )


@bp.post("/channels/<channel_id>/messages")
@documented("Send a message", body=SendBody, ok=201)
async def send_message(channel_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(SendBody)
    message = await ctx().messages.send(
        who.user_id,
        channel_id,
        body.content,
        reply_to=body.reply_to,
        encrypted=body.encrypted,
        nonce=body.nonce,
    )
    return message, 201


@bp.post("/channels/<channel_id>/messages/upload")
@documented(
    "Send a message with files",
    upload=Upload(files=("file",), fields=("content",), required=("file",), many_files=True),
    ok=201,
)
async def upload_message(channel_id: str) -> tuple[dict[str, Any], int]:
    who = await identity()
    c = ctx()
    # Permissions before a single byte of the body is read or stored.
    await c.messages.check_can_upload(who.user_id, channel_id)
    message_id = uuid7()
    async with UploadPlan(
        c.blobs, channel_id=channel_id, message_id=message_id, max_file_bytes=c.config.max_upload_bytes
    ) as plan:
        received = await plan.receive(request.body, request.headers.get("Content-Type", ""))
        message = await c.messages.send(
            who.user_id,
            channel_id,
            received.content,
            attachments=[NewAttachment(**dataclasses.asdict(a)) for a in received.attachments],
            message_id=message_id,
        )
    return message, 201


# Served inline only where a browser cannot be made to run it; everything else downloads.
_INLINE_PREFIXES = ("image/", "audio/", "video/")


@bp.get("/attachments/<attachment_id>")
@documented("Download an attachment", returns="binary")
async def download_attachment(attachment_id: str) -> Response:
    who = await identity()
    row = await ctx().messages.attachment(who.user_id, attachment_id)
    mime = row["mime_type"]
    disposition = "inline" if mime.startswith(_INLINE_PREFIXES) else "attachment"
    quoted = urllib.parse.quote(row["filename"], safe="")
    return await blob_response(
        row["storage_key"],
        content_type=mime + ("; charset=utf-8" if mime.startswith("text/") else ""),
        disposition=f"{disposition}; filename*=UTF-8''{quoted}",
        cache_seconds=3600,
    )


@bp.patch("/messages/<message_id>")
@documented("Edit a message", body=EditBody)
async def edit_message(message_id: str) -> dict[str, Any]:
    who = await identity()
    body = await json_body(EditBody)
    return await ctx().messages.edit(who.user_id, message_id, body.content)


@bp.delete("/messages/<message_id>")
@documented("Delete a message", ok=204, returns="none")
async def delete_message(message_id: str) -> Response:
    who = await identity()
    keys = await ctx().messages.delete(who.user_id, message_id)
    for key in keys:
        await ctx().blobs.delete(key)
    return Response(b"", status=204)


@bp.put("/messages/<message_id>/reactions/<path:emoji>")
@documented("React to a message", ok=204, returns="none")
async def add_reaction(message_id: str, emoji: str) -> Response:
    who = await identity()
    await ctx().messages.react(who.user_id, message_id, emoji, add=True)
    return Response(b"", status=204)


@bp.delete("/messages/<message_id>/reactions/<path:emoji>")
@documented("Remove my reaction", ok=204, returns="none")
async def remove_reaction(message_id: str, emoji: str) -> Response:
    who = await identity()
    await ctx().messages.react(who.user_id, message_id, emoji, add=False)
    return Response(b"", status=204)


@bp.get("/guilds/<guild_id>/search")
@documented(
    "Search the messages of a guild",
    query=(
        Query("q", "Search text, 1-256 characters.", required=True),
        Query("channel_id", "Only this channel."),
        Query("author_id", "Only this author."),
        limit(DEFAULT_LIMIT, MAX_LIMIT),
    ),
)
async def search(guild_id: str) -> dict[str, Any]:
    who = await identity()
    query = request.args.get("q", "")
    if not query.strip() or len(query) > MAX_QUERY:
        raise ValidationError("q must be 1-256 characters", {"q": "1-256 characters"})
    results = await ctx().messages.search(
        who.user_id,
        guild_id,
        query,
        channel_id=request.args.get("channel_id"),
        author_id=request.args.get("author_id"),
        limit=query_limit(DEFAULT_LIMIT, MAX_LIMIT),
    )
    return {"results": results}
