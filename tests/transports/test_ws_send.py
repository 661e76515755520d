"""send_text_frames: a backlog written at once arrives as the same text messages, in order."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream, wrap_server_stream

from vox.transports import ws_send
from vox.transports.ws_send import send_text_frames, text_frame


async def _pair(nursery: trio.Nursery) -> tuple[WebSocketConnection, WebSocketConnection]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server: list[WebSocketConnection] = []

    async def accept() -> None:
        request = await wrap_server_stream(nursery, server_stream)
        server.append(await request.accept())

    nursery.start_soon(accept)
    client = await wrap_client_stream(nursery, client_stream, "localhost", "/gateway")
    with trio.fail_after(5):
        while not server:
            await trio.sleep(0.01)
    return server[0], client


async def test_a_batch_arrives_as_separate_text_messages_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await _pair(nursery)
        frames = [f'{{"type":"message_new","seq":{i},"d":{{"x":"{"é" * i}"}}}}' for i in range(50)]
        await send_text_frames(server, frames[:1])
        await send_text_frames(server, frames[1:])
        with trio.fail_after(5):
            got = [await client.get_message() for _ in frames]
        assert got == frames
        assert all(isinstance(m, str) for m in got)
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_batch_to_a_closed_connection_raises_connection_closed() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await _pair(nursery)
        await server.aclose()
        with pytest.raises(ConnectionClosed):
            await send_text_frames(server, ["a", "b"])
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_text_frame_is_what_wsproto_would_send(size: int) -> None:
    from wsproto.frame_protocol import FrameProtocol

    text = ("é" * size)[: max(size // 2, 0)] + "x" * (size - max(size // 2, 0))
    assert text_frame(text) == bytes(FrameProtocol(client=False, extensions=[]).send_data(text))


async def test_a_single_frame_and_a_large_one_arrive_intact() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await _pair(nursery)
        big = "y" * 70_000
        # A trio-websocket server connection takes the direct framing path (no extension).
        assert ws_send._plain(server._wsproto)
        await send_text_frames(server, ["one"])
        await send_text_frames(server, [big, "after"])
        with trio.fail_after(5):
            got = [await client.get_message() for _ in range(3)]
        assert got == ["one", big, "after"]
        await client.aclose()
        nursery.cancel_scope.cancel()
