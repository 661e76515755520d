"""Mention detection in message content (sans-IO): ``<@user_id>``, ``@here``, ``@everyone``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_USER = re.compile(r"<@([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})>")
_EVERYONE = re.compile(r"(?<![\w`])@everyone\b")
_HERE = re.compile(r"(?<![\w`])@here\b")
MAX_USER_MENTIONS = 50


@dataclass(frozen=True, slots=True)
class Mentions:
    mention_type: str | None  # None | "user" | "here" | "everyone"
    user_ids: tuple[str, ...]


def parse(content: str, *, may_mention_everyone: bool) -> Mentions:
    """What a message mentions. ``@everyone``/``@here`` count only with MENTION_EVERYONE;
    the strongest kind wins (everyone > here > user). Mentioned ids are deduplicated in order."""
    seen: dict[str, None] = {}
    for match in _USER.finditer(content):
        seen.setdefault(match.group(1), None)
        if len(seen) >= MAX_USER_MENTIONS:
            break
    kind: str | None = None
    if may_mention_everyone and _EVERYONE.search(content):
        kind = "everyone"
    elif may_mention_everyone and _HERE.search(content):
        kind = "here"
    elif seen:
        kind = "user"
    return Mentions(mention_type=kind, user_ids=tuple(seen))
