"""The inbox envelope, sans-IO (docs/federation.md, "Outbox and delivery").

A sender POSTs either one outbox row, ``{"id", "kind", "payload"}`` (what every version sends
and takes), or a batch of rows of one destination in id order,
``{"batch": [{"id", "kind", "payload"}, ...]}``. The receiver processes a batch in order and
stops at the first row it could not process now; its 200 answer says how far it got:
``{"ok": true, "accepted": <id of the last row processed>, "results": [...], "stopped": {...}}``
(``results`` one per processed row, ``stopped`` only when it stopped early). The sender deletes
the rows up to ``accepted`` and keeps the rest, in order, for a later attempt.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vox.errors import ValidationError

__all__ = [
    "BATCH_ITEMS_MAX",
    "KIND_CHARS",
    "InboxItem",
    "accepted_count",
    "batch_envelope",
    "parse_envelope",
    "single_envelope",
]

KIND_CHARS = 64
# Rows one inbox request may carry; senders are configured at or below it (federation_batch_max).
BATCH_ITEMS_MAX = 1000


@dataclass(frozen=True, slots=True)
class InboxItem:
    id: int
    kind: str
    payload: dict[str, Any]


def single_envelope(outbox_id: int, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": outbox_id, "kind": kind, "payload": payload}


def batch_envelope(items: Sequence[InboxItem]) -> dict[str, Any]:
    return {"batch": [single_envelope(i.id, i.kind, i.payload) for i in items]}


def _item(value: Any, where: str) -> InboxItem:
    if not isinstance(value, dict):
        raise ValidationError("malformed inbox delivery", {where.rstrip(".") or "body": "must be an object"})
    outbox_id, kind, payload = value.get("id"), value.get("kind"), value.get("payload")
    problems: dict[str, str] = {}
    if type(outbox_id) is not int or outbox_id < 1:
        problems[where + "id"] = "must be a positive integer"
    if not isinstance(kind, str) or not 0 < len(kind) <= KIND_CHARS:
        problems[where + "kind"] = f"must be a string of 1 to {KIND_CHARS} characters"
    if not isinstance(payload, dict):
        problems[where + "payload"] = "must be an object"
    if problems:
        raise ValidationError("malformed inbox delivery", problems)
    assert isinstance(outbox_id, int) and isinstance(kind, str) and isinstance(payload, dict)
    return InboxItem(outbox_id, kind, payload)


def parse_envelope(body: Any) -> tuple[list[InboxItem], bool]:
    """The rows of an inbox body and whether it was a batch; ValidationError when malformed.

    A batch's ids must increase: the answer's ``accepted`` names a prefix of the batch.
    """
    if not isinstance(body, dict):
        raise ValidationError("inbox body must be an object", {"body": "must be an object"})
    if "batch" not in body:
        return [_item(body, "")], False
    batch = body["batch"]
    if not isinstance(batch, list) or not 0 < len(batch) <= BATCH_ITEMS_MAX:
        raise ValidationError(
            "malformed inbox batch", {"batch": f"must be a list of 1 to {BATCH_ITEMS_MAX} deliveries"}
        )
    items = [_item(value, f"batch[{n}].") for n, value in enumerate(batch)]
    for earlier, later in itertools.pairwise(items):
        if later.id <= earlier.id:
            raise ValidationError("malformed inbox batch", {"batch": "ids must increase"})
    return items, True


def accepted_count(answer: Any, ids: Sequence[int]) -> int | None:
    """How many leading rows of a batch with ``ids`` a receiver's 200 ``answer`` accepted; None
    when the answer does not say (not a batch answer, or an ``accepted`` that is none of ours)."""
    if not isinstance(answer, dict):
        return None
    accepted = answer.get("accepted")
    if type(accepted) is not int:
        return None
    if accepted == 0:
        return 0
    try:
        return ids.index(accepted) + 1
    except ValueError:
        return None
