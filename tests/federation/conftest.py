"""Fixtures of the federation tests (the scaffolding itself is in fed_helpers.py)."""

from __future__ import annotations

from tests.federation.fed_helpers import pings

__all__ = ["pings"]
