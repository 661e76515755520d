"""The MLS relay: the gateway's ``mls_relay`` request (protocol.md section 6).

The server relays MLS handshake and application messages between the members of a group
without reading them. ``group_id`` is the id of the channel the MLS group protects (a guild
text or voice channel, or a DM), so who may take part follows channel permissions:

- the sender must be able to VIEW_CHANNEL that channel (NotFound otherwise, as for every
  channel a user cannot see);
- ``recipients`` (1-100 user ids; repeats count once) must each be able to view it too, else
  ValidationError on ``recipients`` and nothing is relayed to anyone; the sender may name
  themselves, to reach their other devices;
- without ``recipients`` the message goes to everyone who can view the channel except the
  sender: a DM's other recipients, a guild channel's members holding VIEW_CHANNEL there.

``kind`` is ``welcome``, ``commit``, ``proposal`` or ``application``; ``payload`` is opaque
base64 (strict, as for keys), at most ``MAX_PAYLOAD`` characters (a gateway frame is at most
64 KiB, so in practice it is a little less). Each recipient's ``user:{id}`` topic (every device
of theirs) receives ``mls_message {group_id, sender_id, kind, payload}``, encoded once.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from vox.errors import ValidationError
from vox.pubsub import Broker
from vox.services.guild_events import user_topic
from vox.services.keys import is_base64
from vox.services.permissions import PermissionService, valid_id
from vox.services.publish import publish_event

__all__ = ["MAX_PAYLOAD", "MAX_RECIPIENTS", "MLS_MESSAGE", "MlsRelay", "RelayRequest"]

MLS_MESSAGE = "mls_message"
MAX_PAYLOAD = 64 * 1024
MAX_RECIPIENTS = 100

_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]*)`")

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class RelayRequest(msgspec.Struct):
    group_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    kind: Literal["welcome", "commit", "proposal", "application"]
    payload: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PAYLOAD)]
    recipients: Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)] | None = None


def _invalid(exc: msgspec.MsgspecError) -> ValidationError:
    """The validation error naming the field msgspec complained about."""
    text = str(exc)
    missing = _MISSING.search(text)
    if missing is not None:
        return ValidationError(f"missing field {missing.group(1)!r}", {missing.group(1): "required"})
    where = _PATH.search(text)
    field = (where.group(1).split("[", 1)[0] or "d") if where else "d"
    reason = text[: where.start()] if where else text
    return ValidationError(f"invalid field {field!r}: {reason}", {field: reason})


def parse_request(d: object) -> RelayRequest:
    """The request from a decoded JSON object (or the raw JSON bytes of ``d``)."""
    try:
        if isinstance(d, bytes | bytearray | memoryview):
            return msgspec.json.decode(d, type=RelayRequest)
        return msgspec.convert(d, type=RelayRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _invalid(exc) from None


class MlsRelay:
    def __init__(self, permissions: PermissionService, broker: Broker) -> None:
        self.permissions = permissions
        self.broker = broker

    async def relay(self, sender_id: str, d: object) -> None:
        """Validate an ``mls_relay`` request's ``d`` and publish ``mls_message`` to each recipient.

        Raises ValidationError (bad shape, payload not base64, a recipient who cannot view the
        group's channel) or NotFound (the sender cannot view that channel); nothing is published
        then.
        """
        request = parse_request(d)
        if not is_base64(request.payload):
            raise ValidationError(
                "payload is not base64", {"payload": "must be base64 (standard or URL-safe)"}
            )
        # NotFound unless the sender can VIEW_CHANNEL it (DMs: only their recipients can).
        await self.permissions.channel_permissions(sender_id, request.group_id)
        viewers = set(await self.permissions.channel_viewers(request.group_id))
        if request.recipients is None:
            targets = sorted(viewers - {sender_id})
        else:
            targets = list(dict.fromkeys(request.recipients))
            outside = [u for u in targets if not valid_id(u) or u not in viewers]
            if outside:
                raise ValidationError(
                    "every recipient must be able to view the group's channel",
                    {"recipients": f"cannot view channel {request.group_id}: {', '.join(outside)}"},
                )
        if not targets:
            return
        await publish_event(
            self.broker,
            [user_topic(u) for u in targets],
            MLS_MESSAGE,
            {
                "group_id": request.group_id,
                "sender_id": sender_id,
                "kind": request.kind,
                "payload": request.payload,
            },
        )
