"""/api/v1/friends: the caller's friends and friend requests (protocol.md section 4)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint, Response

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import identity
from vox.api.spec import documented

bp = Blueprint("friends", __name__, url_prefix="/api/v1/friends")


class FriendRequest(msgspec.Struct):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


@bp.get("")
@documented("My friends and pending friend requests")
async def overview() -> dict[str, Any]:
    who = await identity()
    return await ctx().friends.overview(who.user_id)


@bp.post("/requests")
@documented("Send a friend request", body=FriendRequest, ok=(200, 201))
async def send_request() -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(FriendRequest)
    result, created = await ctx().friends.request(who.user_id, body.username)
    return result, 201 if created else 200


@bp.post("/requests/<request_id>/accept")
@documented("Accept a friend request")
async def accept_request(request_id: str) -> dict[str, Any]:
    who = await identity()
    return await ctx().friends.accept(who.user_id, request_id)


@bp.delete("/requests/<request_id>")
@documented("Decline or cancel a friend request", ok=204, returns="none")
async def delete_request(request_id: str) -> Response:
    who = await identity()
    await ctx().friends.delete_request(who.user_id, request_id)
    return Response(b"", status=204)


@bp.delete("/<user_id>")
@documented("Remove a friend", ok=204, returns="none")
async def unfriend(user_id: str) -> Response:
    who = await identity()
    await ctx().friends.remove(who.user_id, user_id)
    return Response(b"", status=204)
