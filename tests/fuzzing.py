"""Bounds shared by the property-based fuzz tests.

The defaults keep them inside the normal test run; ``VOX_FUZZ_EXAMPLES`` sets every fuzz test's
example count (e.g. ``VOX_FUZZ_EXAMPLES=2000``) for a longer hunt, and ``VOX_FUZZ_RANDOM=1`` draws
fresh random examples instead of the fixed (derandomized) ones.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings


def examples(default: int) -> int:
    """``default`` examples, or what ``VOX_FUZZ_EXAMPLES`` asks for."""
    raw = os.environ.get("VOX_FUZZ_EXAMPLES", "")
    return int(raw) if raw.strip().isdigit() and int(raw) > 0 else default


def fuzz_settings(default: int, **extra: Any) -> settings:
    """Deterministic by default (the same examples every run, so CI never flakes on a new seed);
    with ``VOX_FUZZ_RANDOM=1``, random ones (hypothesis prints the seed that repeats a failure)."""
    options: dict[str, Any] = {
        "max_examples": examples(default),
        "deadline": None,
        "derandomize": not os.environ.get("VOX_FUZZ_RANDOM"),
        "database": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    options.update(extra)
    return settings(**options)
