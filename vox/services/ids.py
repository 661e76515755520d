"""Identifiers: UUIDv7 for messages (time-ordered, so ids sort by creation), UUIDv4 elsewhere."""

from __future__ import annotations

import os
import re
import time
import uuid

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def uuid7(now_ms: int | None = None) -> str:
    """RFC 9562 UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits.

    Within one millisecond the order of two ids is random; messages also carry created_at, and
    history pages only need ids to be unique and roughly time-ordered.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def is_uuid(value: str) -> bool:
    return bool(_UUID.fullmatch(value))
