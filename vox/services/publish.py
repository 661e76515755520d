"""Publishing one event to several topics, encoded once (DMs, friends, emoji).

Called after the change committed. A broker failure is logged, not raised, as in
``vox.services.guild_events``: the change stands, and a broker outage already cuts every
subscription, so clients reconnect and resync.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vox.errors import BrokerError
from vox.protocol.gateway import encode_event, envelope
from vox.pubsub import Broker

__all__ = ["publish_event"]

log = logging.getLogger("vox.events")


async def publish_event(broker: Broker, topics: Iterable[str], type_: str, d: Any) -> None:
    payload = envelope(encode_event(type_, d))
    for topic in topics:
        try:
            await broker.publish(topic, payload)
        except BrokerError as exc:
            log.warning(
                "event not published", extra={"fields": {"topic": topic, "type": type_, "error": str(exc)}}
            )
