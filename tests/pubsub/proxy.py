"""A TCP relay in front of the real Redis, so tests can cut the broker's connections and refuse
new ones (a Redis outage as the broker sees it) without disturbing anyone else's use of Redis."""

from __future__ import annotations

import trio


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._links: set[trio.CancelScope] = set()
        self.refusing = False
        self.accepted = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def outage(self) -> None:
        """Close every relayed connection and refuse new ones until ``restore``."""
        self.refusing = True
        for scope in self._links:
            scope.cancel()

    def restore(self) -> None:
        self.refusing = False

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.refusing:
                return
            try:
                upstream = await trio.open_tcp_stream(*self._target)
            except OSError:
                return
            self.accepted += 1
            async with upstream:
                with trio.CancelScope() as scope:
                    self._links.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
                    finally:
                        self._links.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, link: trio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        link.cancel()
