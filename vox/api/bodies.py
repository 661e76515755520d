"""Request-body parsing: JSON only, size-limited, validated by msgspec into typed structs.

Every failure is a 400 ``validation_error`` naming the field (or 413/415), raised before any
service runs, so bad input can never cause a partial write.
"""

from __future__ import annotations

import contextlib
import re
from typing import TypeVar

import msgspec
from quart import request

from vox.api import ctx
from vox.api.text import refuse_nul_in_json
from vox.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError

T = TypeVar("T")

_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]*)`")


def _field_of(message: str) -> tuple[str, str]:
    missing = _MISSING.search(message)
    if missing is not None:
        prefix = _PATH.search(message)
        parent = f"{prefix.group(1)}." if prefix and prefix.group(1) else ""
        return parent + missing.group(1), "required"
    match = _PATH.search(message)
    if match is None:
        return "body", message
    field = match.group(1) or "body"
    return field.split("[", 1)[0] or "body", message[: match.start()]


def decode(raw: bytes, model: type[T]) -> T:
    try:
        value = msgspec.json.decode(raw, type=model)
    except msgspec.ValidationError as exc:
        field, reason = _field_of(str(exc))
        raise ValidationError(f"invalid field {field!r}: {reason}", {field: reason}) from None
    except msgspec.DecodeError:
        raise ValidationError("request body is not valid JSON", {"body": "invalid JSON"}) from None
    refuse_nul_in_json(raw)
    return value


async def _discard_body() -> None:
    """Read and drop the body so that clients which send it all before reading the answer (most
    HTTP libraries) get the 413 instead of a stalled upload; Quart caps this at its global limit."""
    with contextlib.suppress(Exception):
        async for _ in request.body:
            pass


async def _read_limited(limit: int) -> bytes:
    """The body, refused with 413 as soon as more than ``limit`` bytes arrived: a chunked body
    (no Content-Length) is never buffered beyond the limit. Answering before the rest of the body
    was read makes the server close the connection afterwards."""
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return bytes(raw)


async def json_body(model: type[T]) -> T:
    limit = ctx().config.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        await _discard_body()
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    mimetype = request.mimetype
    raw = await _read_limited(limit)
    if mimetype and mimetype != "application/json":
        raise UnsupportedMediaType("request body must be application/json")
    if not raw.strip():
        raw = b"{}"
    return decode(raw, model)


def query_limit(default: int, maximum: int) -> int:
    """The ``limit`` query parameter: ``default`` when absent, 400 unless 1..``maximum``."""
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError("limit must be an integer", {"limit": f"1..{maximum}"}) from None
    if not 1 <= value <= maximum:
        raise ValidationError("limit out of range", {"limit": f"1..{maximum}"})
    return value
