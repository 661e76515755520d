"""Gateway frames to one WebSocket client: framed cheaply, and a backlog in one socket write.

A gateway connection's writer finds more than one frame queued whenever it falls behind (a busy
channel, a burst of events, a slow client). Sending them one ``send_message`` at a time costs, per
frame, a lock round trip, a socket ``send`` and two trips through the scheduler; here they are
written with one ``send_all``. On the wire it is the same sequence of WebSocket text messages.

Framing. wsproto frames each message through its generic path (an event object, the extension
hooks, two copies of the payload into bytearrays), which was a visible share of the per-delivery
cost under fan-out. A server's complete text message without extensions is just a header and the
UTF-8 payload (RFC 6455 section 5.2: FIN + opcode 1, no mask, 7/16/64-bit length), so while the
connection is open, no extension was negotiated and no fragmented message is in progress, frames
are built here; otherwise wsproto frames them as before. Building a frame changes no wsproto state
(``send_data`` with ``fin=True`` leaves none behind).

trio-websocket (pinned to 0.12) and wsproto (1.x) have no public calls for this: this uses the
private members trio-websocket's own ``_send`` uses, and falls back to ``send_message`` per frame
if they are ever missing.
"""

from __future__ import annotations

import struct
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

__all__ = ["send_text_frames", "text_frame"]

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_FIN_TEXT = 0x81


def text_frame(text: str) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (what a server sends)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return _SHORT.pack(_FIN_TEXT, size) + payload
    if size < 65536:
        return _MEDIUM.pack(_FIN_TEXT, 126, size) + payload
    return _LONG.pack(_FIN_TEXT, 127, size) + payload


def _plain(proto: Any) -> bool:
    """The connection is open, speaks no extension and has no message half sent."""
    connection: Any = getattr(proto, "connection", None)
    frames: Any = getattr(connection, "_proto", None)
    return (
        frames is not None
        and connection.state is ConnectionState.OPEN
        and not frames.extensions
        and not frames.client
        and frames._outbound_opcode is None
    )


async def send_text_frames(ws: WebSocketConnection, frames: list[str]) -> None:
    proto: Any = getattr(ws, "_wsproto", None)
    lock: Any = getattr(ws, "_stream_lock", None)
    stream: Any = getattr(ws, "_stream", None)
    if proto is None or lock is None or stream is None:
        for frame in frames:
            await ws.send_message(frame)
        return
    if ws.closed is not None:
        raise ConnectionClosed(ws.closed)
    if _plain(proto):
        data = b"".join([text_frame(frame) for frame in frames])
    else:
        data = b"".join([proto.send(TextMessage(data=frame)) for frame in frames])
    async with lock:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws.closed) from None
