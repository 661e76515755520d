"""Several queued text frames to one WebSocket client in one socket write.

A gateway connection's writer finds more than one frame queued whenever it falls behind (a busy
channel, a burst of events, a slow client). Sending them one ``send_message`` at a time costs, per
frame, a lock round trip, a socket ``send`` and two trips through the scheduler. Here the frames are
framed by the connection's own wsproto state and written with one ``send_all``; on the wire it is
the same sequence of WebSocket text messages.

trio-websocket (pinned to 0.12) has no public call for this; this uses the same private members
its ``_send`` uses, and falls back to ``send_message`` per frame if they are ever missing.
"""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

__all__ = ["send_text_frames"]


async def send_text_frames(ws: WebSocketConnection, frames: list[str]) -> None:
    proto: Any = getattr(ws, "_wsproto", None)
    lock: Any = getattr(ws, "_stream_lock", None)
    stream: Any = getattr(ws, "_stream", None)
    if len(frames) == 1 or proto is None or lock is None or stream is None:
        for frame in frames:
            await ws.send_message(frame)
        return
    if ws.closed is not None:
        raise ConnectionClosed(ws.closed)
    data = b"".join([proto.send(TextMessage(data=frame)) for frame in frames])
    async with lock:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws.closed) from None
