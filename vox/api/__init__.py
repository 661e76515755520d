"""REST routes by area: each module has a Quart blueprint; routes parse, authenticate, call a service."""

from __future__ import annotations

from typing import cast

from quart import current_app

from vox.context import Context


def ctx() -> Context:
    """The daemon context of the app serving the current request."""
    return cast(Context, current_app.extensions["vox"])
