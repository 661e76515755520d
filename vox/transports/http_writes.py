"""One socket write per HTTP/1.1 response instead of three.

hypercorn's trio server writes each h11 event as it is produced: the status line and headers,
then the body, then the (usually empty) end of message, each through a lock and its own ``send``
system call. On loopback a TCP ``send`` also runs the receiver's side of the stack, so in a
profile of a busy daemon these writes were about a sixth of the event loop's time.

``CoalescingTCPServer`` keeps what the protocol asks to write in a buffer and writes it at once:
when the protocol reports a state change (the response is complete and the connection idles or
closes), when the buffer reaches ``FLUSH_BYTES`` (a large streamed download), or from a task
spawned at the first buffered write (so a response that stays open, streaming slowly, is never
held back longer than one scheduler pass). The bytes and their order are unchanged.

hypercorn builds its connection objects from the module attribute ``hypercorn.trio.run.TCPServer``
and has no option for this, so ``install`` points that attribute at the subclass, once per process,
for the hypercorn version it was written against (it is pinned); any other version is left alone
and served the usual way.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

import trio
from hypercorn.events import RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["CoalescingTCPServer", "install"]

log = logging.getLogger("vox.rest")

WRITTEN_FOR = frozenset({"0.18.0"})
FLUSH_BYTES = 64 * 1024


class CoalescingTCPServer(TCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            # hypercorn returns without closing the socket when a TLS handshake fails (plaintext
            # sent to the TLS port, say): the client would wait for an answer until the socket is
            # garbage collected. Closing a closed stream does nothing.
            await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, RawData):
            if not event.data:  # h11's end of a sized body: nothing to write
                return
            self._pending.append(event.data)
            self._pending_bytes += len(event.data)
            if len(self._pending) == 1:
                self._task_group.spawn(self._flush)
            elif self._pending_bytes >= FLUSH_BYTES:
                await self._flush()
            return
        # What was written goes out before any close or idle state: this task's buffer, and a
        # write the spawned flush has in flight (it holds the send lock while sending; a close
        # while it sends would cut the response off).
        # Shielded: when a response is complete before its request body has arrived (a 404 or
        # 405 to a POST), the request task itself hands the app "http.disconnect" and then asks
        # for the close, and quart-trio cancels that task on the disconnect. Cancelled here, the
        # close never happened and the next request on the connection waited forever.
        with trio.CancelScope(shield=True):
            await self._flush()
            async with self.send_lock:
                pass
            await super().protocol_send(event)

    async def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        # Shielded like hypercorn's own send: the request task that completed the response may be
        # cancelled right after, and a half-sent response would leave the client waiting.
        with trio.CancelScope(shield=True):
            await super().protocol_send(RawData(data=data))


def install() -> bool:
    """Serve hypercorn connections with ``CoalescingTCPServer``; False when the installed
    hypercorn is not the version this was written for (then nothing changes)."""
    found = version("hypercorn")
    if found not in WRITTEN_FOR:
        log.info("response write coalescing off", extra={"fields": {"hypercorn": found}})
        return False
    hypercorn_run.TCPServer = CoalescingTCPServer  # type: ignore[attr-defined]
    return True
