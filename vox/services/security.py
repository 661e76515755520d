"""Guild security settings: the ``security_settings`` object of a guild (stored as JSON text).

Known settings and their defaults are ``DEFAULTS``; the wire object always carries every known
setting. ``allow_encrypted_messages`` decides whether messages with ``encrypted: true`` may be
sent in the guild's channels (false by default: a community's moderators can read what is said
in it unless its managers opt in). DMs always allow them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vox.errors import ValidationError

__all__ = ["DEFAULTS", "security_settings", "validate_patch"]

DEFAULTS: dict[str, bool] = {"allow_encrypted_messages": False}


def security_settings(raw: str | None) -> dict[str, Any]:
    """The wire object for a stored value: every known setting, defaults filling the gaps."""
    try:
        stored = json.loads(raw) if raw else {}
    except ValueError:
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    return {k: bool(stored.get(k, default)) for k, default in DEFAULTS.items()}


def validate_patch(patch: object) -> dict[str, Any]:
    """The settings a PATCH changes; ValidationError on ``security_settings`` for anything but an
    object of known settings with values of the right type."""
    if not isinstance(patch, Mapping):
        reason = "must be an object"
        raise ValidationError(f"security_settings {reason}", {"security_settings": reason})
    unknown = sorted(k for k in patch if k not in DEFAULTS)
    if unknown:
        reason = f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}"
        raise ValidationError(f"security_settings: {reason}", {"security_settings": reason})
    for key, value in patch.items():
        if not isinstance(value, bool):
            reason = f"{key} must be true or false"
            raise ValidationError(f"security_settings: {reason}", {"security_settings": reason})
    return dict(patch)
