"""CoalescingTCPServer: what hypercorn writes for one response leaves in one send, in order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
from hypercorn.events import Closed, RawData, Updated

from vox.transports.http_writes import FLUSH_BYTES, CoalescingTCPServer


class Stream:
    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sends.append(bytes(data))

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True


class Group:
    """hypercorn's task group, as much of it as a connection uses."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def spawn(self, fn: Any, *args: Any) -> None:
        self._nursery.start_soon(fn, *args)


class Protocol:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.events.append(event)


def _server(nursery: trio.Nursery) -> tuple[CoalescingTCPServer, Stream]:
    stream = Stream()
    config = SimpleNamespace(keep_alive_timeout=60)  # an idle connection's timer, never reached
    server = CoalescingTCPServer(None, config, None, None, stream)
    server._task_group = Group(nursery)
    server.protocol = Protocol()
    return server, stream


async def test_a_response_is_one_write() -> None:
    async with trio.open_nursery() as nursery:
        server, stream = _server(nursery)
        await server.protocol_send(RawData(data=b"HTTP/1.1 200 OK\r\n\r\n"))
        await server.protocol_send(RawData(data=b'{"ok":true}'))
        await server.protocol_send(RawData(data=b""))
        await server.protocol_send(Updated(idle=False))
        assert stream.sends == [b'HTTP/1.1 200 OK\r\n\r\n{"ok":true}']
        # The next response on the kept-alive connection is its own write.
        await server.protocol_send(RawData(data=b"HTTP/1.1 404 Not Found\r\n\r\n"))
        await server.protocol_send(Updated(idle=False))
        assert stream.sends[1:] == [b"HTTP/1.1 404 Not Found\r\n\r\n"]
        nursery.cancel_scope.cancel()


async def test_an_open_streaming_response_is_not_held_back() -> None:
    async with trio.open_nursery() as nursery:
        server, stream = _server(nursery)
        await server.protocol_send(RawData(data=b"HTTP/1.1 200 OK\r\n\r\n"))
        await server.protocol_send(RawData(data=b"first chunk"))
        with trio.fail_after(1):
            while not stream.sends:  # the spawned flush writes without waiting for the end
                await trio.sleep(0)
        assert stream.sends == [b"HTTP/1.1 200 OK\r\n\r\nfirst chunk"]


async def test_a_large_body_is_written_in_bounded_pieces_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server, stream = _server(nursery)
        chunks = [bytes([i]) * 16_384 for i in range(20)]
        for chunk in chunks:
            await server.protocol_send(RawData(data=chunk))
        await server.protocol_send(Closed())
        assert b"".join(stream.sends) == b"".join(chunks)
        assert max(len(s) for s in stream.sends) <= FLUSH_BYTES
        assert stream.closed


class SlowStream(Stream):
    async def send_all(self, data: bytes) -> None:
        await trio.sleep(0.05)
        if self.closed:
            raise trio.ClosedResourceError
        self.sends.append(bytes(data))


async def test_a_close_waits_for_a_write_in_flight() -> None:
    async with trio.open_nursery() as nursery:
        server, _ = _server(nursery)
        stream = SlowStream()
        server.stream = stream
        await server.protocol_send(RawData(data=b"HTTP/1.1 413 Payload Too Large\r\n\r\n"))
        await trio.sleep(0.01)  # the spawned flush is now sending
        await server.protocol_send(Closed())
        assert stream.sends == [b"HTTP/1.1 413 Payload Too Large\r\n\r\n"]
        assert stream.closed
