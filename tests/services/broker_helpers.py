"""Reading what a service published, in service tests."""

from __future__ import annotations

import json
from typing import Any

import trio

from vox.protocol.gateway import open_envelope
from vox.pubsub import Message, Subscription


async def drain(sub: Subscription, wait: float = 0.2) -> list[Message]:
    """Everything that arrives on ``sub`` within ``wait`` seconds."""
    got: list[Message] = []
    with trio.move_on_after(wait):
        async for message in sub:
            got.append(message)
    return got


def decoded(message: Message) -> tuple[str, Any]:
    event = open_envelope(message.payload)
    return event.type, json.loads(event.d_json)
