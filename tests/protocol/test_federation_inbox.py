"""The inbox envelope: single rows and batches parsed, malformed ones refused with the field
named, and how far a receiver's answer says a batch got."""

from __future__ import annotations

from typing import Any

import pytest

from vox.errors import ValidationError
from vox.protocol.federation_inbox import (
    BATCH_ITEMS_MAX,
    InboxItem,
    accepted_count,
    batch_envelope,
    parse_envelope,
    single_envelope,
)


def test_a_single_row_and_a_batch_round_trip() -> None:
    assert parse_envelope(single_envelope(3, "ping", {"n": 1})) == ([InboxItem(3, "ping", {"n": 1})], False)
    items = [InboxItem(4, "ping", {}), InboxItem(9, "dm_message", {"x": [1]})]
    assert parse_envelope(batch_envelope(items)) == (items, True)


def row(outbox_id: Any, kind: Any = "ping", payload: Any = None) -> dict[str, Any]:
    return {"id": outbox_id, "kind": kind, "payload": {} if payload is None else payload}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        (row("1"), "id"),
        (row(0), "id"),
        (row(True), "id"),
        (row(1, kind=""), "kind"),
        (row(1, kind="k" * 65), "kind"),
        (row(1, payload=[1]), "payload"),
        ({"batch": []}, "batch"),
        ({"batch": {"id": 1}}, "batch"),
        ({"batch": [row(1)] * (BATCH_ITEMS_MAX + 1)}, "batch"),
        ({"batch": [row(2), row(2)]}, "batch"),
        ({"batch": [row(2), row(1)]}, "batch"),
        ({"batch": [row(1), row(2, kind=5)]}, "batch[1].kind"),
        ({"batch": [row(1), 7]}, "batch[1]"),
    ],
)
def test_malformed_envelopes_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_envelope(body)
    assert field in caught.value.extra["fields"]


def test_accepted_names_a_prefix_of_the_batch() -> None:
    ids = [5, 6, 9]
    assert accepted_count({"ok": True, "accepted": 9}, ids) == 3
    assert accepted_count({"ok": True, "accepted": 5}, ids) == 1
    assert accepted_count({"ok": True, "accepted": 0}, ids) == 0
    # Not ours, not a number, not a batch answer: the answer does not say.
    for answer in ({"accepted": 7}, {"accepted": "9"}, {"accepted": True}, {"ok": True}, [9], None):
        assert accepted_count(answer, ids) is None
