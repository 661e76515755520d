"""Friends: requests, accepting, declining or cancelling, unfriending, and the caller's lists.

A request names its addressee by username (case-insensitively, as usernames are unique). Asking
someone who already asked you accepts their request instead of making a second one. Only the
addressee accepts; either side may delete a pending request (decline or cancel).

Events, each to the ``user:{id}`` topic of the user it is for (so every device of theirs):

    friend_request_received   {request}        to the addressee of a new request
    friend_request_accepted   {user, since}    to both users; ``user`` is the other one

Declining, cancelling and unfriending send nothing: the contract has no event for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vox.errors import Conflict, Forbidden, NotFound, ValidationError
from vox.pubsub import Broker
from vox.services.guild_events import user_topic
from vox.services.ids import is_uuid
from vox.services.publish import publish_event
from vox.services.timefmt import iso
from vox.services.users import public_user
from vox.storage.accounts import Accounts
from vox.storage.base import Row
from vox.storage.dms import by_username
from vox.storage.friends import Friends, Friendship, RequestOutcome

__all__ = ["FRIEND_REQUEST_ACCEPTED", "FRIEND_REQUEST_RECEIVED", "FriendService"]

FRIEND_REQUEST_RECEIVED = "friend_request_received"
FRIEND_REQUEST_ACCEPTED = "friend_request_accepted"

# Longer than any username can be (2-32): such a name is simply unknown.
_MAX_USERNAME = 64


def _now_ms() -> int:
    return int(time.time() * 1000)


def request_object(friendship_id: str, other: Row, created_at: int) -> dict[str, Any]:
    """A pending request as one side sees it: ``user`` is the other side."""
    return {"id": friendship_id, "user": public_user(other), "created_at": iso(created_at)}


def accepted_object(friendship: Friendship, viewer_id: str) -> dict[str, Any]:
    return {"user": public_user(friendship.other(viewer_id)), "since": iso(friendship.row["accepted_at"])}


class FriendService:
    def __init__(
        self, friends: Friends, accounts: Accounts, broker: Broker, *, clock: Callable[[], int] = _now_ms
    ) -> None:
        self.friends = friends
        self.accounts = accounts
        self.broker = broker
        self.clock = clock

    async def overview(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """Friends by username; requests newest first."""
        friends: list[dict[str, Any]] = []
        incoming: list[dict[str, Any]] = []
        outgoing: list[dict[str, Any]] = []
        for row in await self.friends.of(user_id):
            if row["f_status"] == "accepted":
                friends.append({**public_user(row), "since": iso(row["f_accepted_at"])})
            else:
                mine = row["f_requester_id"] == user_id
                (outgoing if mine else incoming).append(request_object(row["f_id"], row, row["f_created_at"]))
        friends.sort(key=by_username)
        for requests in (incoming, outgoing):
            requests.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return {"friends": friends, "incoming": incoming, "outgoing": outgoing}

    async def request(self, user_id: str, username: str) -> tuple[dict[str, Any], bool]:
        """Send a request (returns it, True) or accept the addressee's pending one (returns the
        friendship ``{user, since}``, False)."""
        target = await self.accounts.user_by_username(username) if len(username) <= _MAX_USERNAME else None
        if target is None:
            raise NotFound("no user has that username")
        if target["id"] == user_id:
            raise ValidationError("you cannot befriend yourself", {"username": "that is you"})
        outcome, friendship = await self.friends.request(user_id, target["id"], self.clock())
        if outcome is RequestOutcome.ALREADY_FRIENDS:
            raise Conflict("you are already friends")
        if outcome is RequestOutcome.ALREADY_REQUESTED:
            raise Conflict("you already sent this user a friend request")
        assert friendship is not None
        if outcome is RequestOutcome.ACCEPTED:
            await self._announce_accepted(friendship)
            return accepted_object(friendship, user_id), False
        row = friendship.row
        await publish_event(
            self.broker,
            [user_topic(friendship.addressee["id"])],
            FRIEND_REQUEST_RECEIVED,
            {"request": request_object(row["id"], friendship.requester, row["created_at"])},
        )
        return request_object(row["id"], friendship.addressee, row["created_at"]), True

    async def accept(self, user_id: str, request_id: str) -> dict[str, Any]:
        row = await self.friends.get(request_id) if is_uuid(request_id) else None
        if (
            row is None
            or row["status"] != "pending"
            or user_id not in (row["requester_id"], row["addressee_id"])
        ):
            raise NotFound("friend request not found")
        if row["requester_id"] == user_id:
            raise Forbidden("only the user a friend request was sent to can accept it")
        friendship = await self.friends.accept(request_id, user_id, self.clock())
        if friendship is None:  # cancelled or accepted meanwhile
            raise NotFound("friend request not found")
        await self._announce_accepted(friendship)
        return accepted_object(friendship, user_id)

    async def delete_request(self, user_id: str, request_id: str) -> None:
        """Decline (the addressee) or cancel (the requester) a pending request."""
        if not (is_uuid(request_id) and await self.friends.delete_request(request_id, user_id)):
            raise NotFound("friend request not found")

    async def remove(self, user_id: str, other_id: str) -> None:
        if not (is_uuid(other_id) and await self.friends.unfriend(user_id, other_id)):
            raise NotFound("you are not friends with that user")

    async def _announce_accepted(self, friendship: Friendship) -> None:
        # Each side is told about the other: two payloads, each encoded once.
        for side in (friendship.requester, friendship.addressee):
            await publish_event(
                self.broker,
                [user_topic(side["id"])],
                FRIEND_REQUEST_ACCEPTED,
                accepted_object(friendship, side["id"]),
            )
