"""Wire timestamps: RFC 3339 UTC strings from the epoch milliseconds the Store keeps."""

from __future__ import annotations

import datetime as dt


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
