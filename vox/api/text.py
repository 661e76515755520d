"""U+0000 (NUL) is refused in any text a client sends: 400 ``validation_error`` before a route runs.

PostgreSQL text cannot hold it, so a name, a message or an id with a NUL reached the database
and failed there as a 500 (found by the API fuzz run); SQLite stored it. No field needs it, and
refusing it at the edge keeps the answer the same on both storage engines.
"""

from __future__ import annotations

import re

from quart import request

from vox.errors import ValidationError

NUL = "\x00"
REASON = "must not contain U+0000"

# A JSON string can carry NUL only as the escape \u0000; an even run of backslashes before it is
# escaped backslashes followed by the plain text "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def refuse_nul_in_json(raw: bytes) -> None:
    if b"\\u0000" in raw and _JSON_NUL.search(raw):
        raise ValidationError("text must not contain U+0000", {"body": REASON})


def refuse_nul_in_text(name: str, value: str) -> None:
    if NUL in value:
        raise ValidationError(f"{name} must not contain U+0000", {name: REASON})


async def refuse_nul_in_url() -> None:
    """Before every request: the path (so every path parameter) and the query string."""
    refuse_nul_in_text("path", request.path)
    for name, value in request.args.items(multi=True):
        refuse_nul_in_text("query", name)
        refuse_nul_in_text(name, value)
