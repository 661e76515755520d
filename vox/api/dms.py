"""/api/v1/dms: open and list direct-message channels (protocol.md section 4).

Messages in a DM use the ordinary message routes (vox/api/messages.py) with the DM's channel id.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import identity
from vox.api.spec import documented

bp = Blueprint("dms", __name__, url_prefix="/api/v1/dms")

# The service enforces 1-9 distinct others; these bounds only stop absurd bodies before it runs.
# A recipient is a user id, or name@domain for a user of another server (docs/federation.md).
UserId = Annotated[str, msgspec.Meta(max_length=300)]


class OpenDm(msgspec.Struct):
    recipients: Annotated[list[UserId], msgspec.Meta(max_length=100)]


@bp.post("")
@documented("Open (or find) a direct message channel", body=OpenDm, ok=(200, 201))
async def open_dm() -> tuple[dict[str, Any], int]:
    who = await identity()
    body = await json_body(OpenDm)
    dm, created = await ctx().dms.open(who.user_id, body.recipients)
    return dm, 201 if created else 200


@bp.get("")
@documented("My direct message channels", returns="array")
async def my_dms() -> list[dict[str, Any]]:
    who = await identity()
    return await ctx().dms.mine(who.user_id)
