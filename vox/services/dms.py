"""Direct messages: opening 1:1 and group DMs, and listing the caller's DMs.

Who may open a DM with whom: every other recipient must share a guild with the caller or be
their friend (an accepted friendship); otherwise 403. Strangers therefore cannot spam users they
merely know the id of, while people who meet in a community can talk privately without a friend
request first. The rule applies whenever a DM is opened (created or reused); messages in an
existing DM go through the message routes, where being a recipient is what counts.

Messages, reactions and uploads in a DM use the ordinary message routes with the DM's channel id:
``PermissionService.channel_context`` gives recipients DM_PERMISSIONS and makes the channel not
exist (404) for everyone else.

A new DM is announced to each recipient's connections through the internal event ``DM_CREATED``
on ``user:{id}``; the gateway subscribes them to ``channel:{dm_id}`` and forwards it to the client
as ``dm_create`` (d: the DM object).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from vox.errors import Forbidden, ValidationError
from vox.pubsub import Broker
from vox.services.guild_events import user_topic
from vox.services.ids import is_uuid
from vox.services.publish import publish_event
from vox.services.users import public_user
from vox.storage.dms import DmChannel, Dms

__all__ = ["DM_CREATED", "MAX_OTHER_RECIPIENTS", "DmService", "dm_object"]

# Internal (leading "_"): the gateway acts on it, then forwards d to the client as dm_create.
DM_CREATED = "_dm_created"

# Up to 10 people in a DM: the caller and at most 9 others.
MAX_OTHER_RECIPIENTS = 9


def _now_ms() -> int:
    return int(time.time() * 1000)


def dm_object(dm: DmChannel) -> dict[str, Any]:
    """The channel object of a DM: no guild, name, category; every participant in ``recipients``
    (the caller included, so one encoding serves every recipient)."""
    ch = dm.channel
    return {
        "id": ch["id"],
        "guild_id": None,
        "name": None,
        "channel_type": "dm",
        "category_id": None,
        "position": 0,
        "recipients": [public_user(u) for u in dm.recipients],
        "last_message_id": ch["last_message_id"],
    }


def _others(user_id: str, recipients: list[str]) -> list[str]:
    """The distinct recipient ids, in the order given, or ValidationError."""
    bad = next((r for r in recipients if not is_uuid(r)), None)
    if bad is not None:
        raise ValidationError("recipients must be user ids", {"recipients": f"not a user id: {bad[:64]!r}"})
    others = list(dict.fromkeys(recipients))
    if user_id in others:
        raise ValidationError("you cannot be one of the recipients", {"recipients": "includes yourself"})
    if not 1 <= len(others) <= MAX_OTHER_RECIPIENTS:
        raise ValidationError(
            f"a DM has 1-{MAX_OTHER_RECIPIENTS} other recipients",
            {"recipients": f"1-{MAX_OTHER_RECIPIENTS} distinct user ids"},
        )
    return others


class RemoteRecipients(Protocol):
    """Turns ``name@domain`` recipients into local ids (vox.services.federated_dms)."""

    async def resolve(self, caller_id: str, recipients: list[str]) -> tuple[list[str], set[str]]:
        """(recipient ids, the ids among them that are users of other servers)."""
        ...


class DmService:
    def __init__(self, dms: Dms, broker: Broker, *, clock: Callable[[], int] = _now_ms) -> None:
        self.dms = dms
        self.broker = broker
        self.clock = clock
        # Set when federation is on: recipients may then be written name@domain.
        self.remote: RemoteRecipients | None = None

    async def open(
        self, user_id: str, recipients: list[str], *, no_contact_needed: Collection[str] = ()
    ) -> tuple[dict[str, Any], bool]:
        """The 1:1 DM with one recipient (reused if it exists), or a new group DM; (dm, created).

        Everything is checked before anything is written: ids (400), existence (400), then the
        contact rule (403). The rule cannot be checked for users of other servers (no guild or
        friendship is shared across servers), so it is waived for them (``no_contact_needed``);
        which peers may reach this server at all is the federation policy's to decide."""
        exempt = set(no_contact_needed)
        if self.remote is not None and any("@" in r for r in recipients):
            recipients, remote = await self.remote.resolve(user_id, recipients)
            exempt |= remote
        others = _others(user_id, recipients)
        existing = await self.dms.existing_users(others)
        unknown = [o for o in others if o not in existing]
        if unknown:
            raise ValidationError("unknown user", {"recipients": f"no such user: {unknown[0]}"})
        contacts = await self.dms.contacts(user_id, others)
        strangers = [o for o in others if o not in contacts and o not in exempt]
        if strangers:
            raise Forbidden(
                "you can only message people who share a guild with you or are your friends",
                user_ids=strangers,
            )
        dm, created = await self.dms.open(user_id, others, self.clock())
        obj = dm_object(dm)
        if created:
            await publish_event(self.broker, [user_topic(u["id"]) for u in dm.recipients], DM_CREATED, obj)
        return obj, created

    async def mine(self, user_id: str) -> list[dict[str, Any]]:
        return [dm_object(dm) for dm in await self.dms.of(user_id)]
