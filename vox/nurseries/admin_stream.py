"""Gateway ``admin_subscribe``: elevated system admins receive ``admin_event``s.

The session subscribes to the ``admin:events`` topic (vox.services.admin_events) and delivers
its events like any other, until the elevation that was checked here lapses; an admin who
elevates again sends ``admin_subscribe`` again to extend it. A refusal is answered with an
``error`` frame (the connection stays), as for other requests a client may legitimately race.
"""

from __future__ import annotations

from collections.abc import Callable

from vox.context import Context
from vox.errors import APIError
from vox.nurseries.session import GatewaySession
from vox.protocol.gateway import control_frame
from vox.services.timefmt import iso

__all__ = ["admin_subscribe"]


async def admin_subscribe(ctx: Context, session: GatewaySession, enqueue: Callable[[str], None]) -> None:
    try:
        until = await ctx.admin.require_elevated(session.identity)
    except APIError as exc:
        enqueue(control_frame("error", {"request": "admin_subscribe", **exc.body()}))
        return
    await session.follow_admin(until)
    enqueue(control_frame("admin_subscribed", {"elevated_until": iso(until)}))
