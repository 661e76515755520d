"""Sans-IO rules of messages: UUIDv7 ids, mention parsing, emoji validation, content limits."""

from __future__ import annotations

import uuid

import pytest

from vox.errors import ValidationError
from vox.services.ids import is_uuid, uuid7
from vox.services.mentions import MAX_USER_MENTIONS, parse
from vox.services.messages import MessageService, validate_emoji

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7(1_700_000_000_000 + i) for i in range(50)]
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(uuid7(5) for _ in range(1000))) == 1000
    assert int(uuid.UUID(uuid7(1_700_000_000_123)).hex[:12], 16) == 1_700_000_000_123
    assert is_uuid(ids[0]) and not is_uuid("not-a-uuid") and not is_uuid(ids[0].upper())


@pytest.mark.parametrize(
    ("content", "may", "kind", "users"),
    [
        ("hello", True, None, ()),
        (f"hi <@{A}> and <@{B}> and <@{A}>", False, "user", (A, B)),
        ("@everyone look", True, "everyone", ()),
        ("@everyone look", False, None, ()),
        (f"@here <@{A}>", True, "here", (A,)),
        (f"@here <@{A}>", False, "user", (A,)),
        ("@here and @everyone", True, "everyone", ()),
        ("mail me at x@everyone.org", True, None, ()),
        ("`@everyone` in code", True, None, ()),
        ("<@not-an-id>", True, None, ()),
    ],
)
def test_mentions(content: str, may: bool, kind: str | None, users: tuple[str, ...]) -> None:
    found = parse(content, may_mention_everyone=may)
    assert found.mention_type == kind
    assert found.user_ids == users


def test_mentions_are_capped() -> None:
    ids = [str(uuid.uuid4()) for _ in range(MAX_USER_MENTIONS + 20)]
    found = parse(" ".join(f"<@{i}>" for i in ids), may_mention_everyone=False)
    assert found.user_ids == tuple(ids[:MAX_USER_MENTIONS])


@pytest.mark.parametrize("emoji", ["👍", "❤️", "👨‍👩‍👧", "🇫🇷", "1️⃣", ":party_parrot:", ":a-b:"])
def test_valid_emoji(emoji: str) -> None:
    assert validate_emoji(emoji) == emoji


@pytest.mark.parametrize(
    "emoji", ["", "a", "abc", "<script>", "👍" * 20, ":bad name:", "::", ":x", "\u200d", "1"]
)
def test_invalid_emoji(emoji: str) -> None:
    with pytest.raises(ValidationError):
        validate_emoji(emoji)


def test_content_limits() -> None:
    check = MessageService.check_content
    assert check("  hi  ", encrypted=False) == "hi"
    with pytest.raises(ValidationError):
        check("   ", encrypted=False)
    with pytest.raises(ValidationError):
        check("x" * 4001, encrypted=False)
    assert check("x" * 4000, encrypted=False) == "x" * 4000
    assert check("", encrypted=False, allow_empty=True) == ""
    assert check("Y2lwaGVy  ", encrypted=True) == "Y2lwaGVy  "  # ciphertext is never trimmed
    with pytest.raises(ValidationError):
        check("c" * (16 * 1024 + 1), encrypted=True)
