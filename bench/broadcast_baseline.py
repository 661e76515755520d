"""A bare trio-websocket broadcast server: the ceiling for bench/gateway_fanout.py.

No authentication, no storage, no broker: what one trio process with trio-websocket can fan out.
It speaks just enough of the Vox gateway (protocol.md section 6) for the same client harness to
drive it unchanged:

- on connect the server sends ``hello {heartbeat_interval_ms}``;
- ``identify`` (any token, never checked) is answered with ``ready``;
- ``heartbeat`` is answered with ``heartbeat_ack``;
- ``publish {content}`` (the sender's stand-in for ``POST /channels/{id}/messages``) builds a
  message object of the same shape and size as Vox's, encodes it once, puts the frame
  ``{"type":"message_new","seq":N,"d":{...}}`` (``seq`` spliced in per connection) on every
  identified connection's bounded outbound queue, then answers the publisher ``published {id}``.

Each connection has a writer task draining its queue, like Vox's gateway, so one slow client
never blocks the broadcast; a client whose queue fills is closed with 4008, as Vox does.

    python bench/broadcast_baseline.py [--host 127.0.0.1] [--port 0]

Prints ``baseline: ready port=PORT`` (flushed) once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import uuid

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

OUTBOUND_QUEUE = 512  # same as the default of vox.config.Config.gateway_queue_frames
HEARTBEAT_INTERVAL_MS = 30_000
MAX_FRAME = 64 * 1024


class Client:
    __slots__ = ("receive", "send", "seq", "ws")

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.seq = 0
        self.send, self.receive = trio.open_memory_channel[str](OUTBOUND_QUEUE)


class Hub:
    def __init__(self) -> None:
        self.clients: dict[Client, None] = {}
        self.guild_id = str(uuid.uuid4())
        self.channel_id = str(uuid.uuid4())
        self.author = {"id": str(uuid.uuid4()), "username": "sender", "display_name": None}

    def message(self, content: str) -> dict[str, object]:
        """A message object shaped like Vox's (protocol.md section 4)."""
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "id": str(uuid.uuid4()),
            "channel_id": self.channel_id,
            "guild_id": self.guild_id,
            "author": self.author,
            "content": content,
            "encrypted": False,
            "nonce": None,
            "reply_to": None,
            "mention_type": None,
            "mentions": [],
            "attachments": [],
            "reactions": [],
            "created_at": now,
            "edited_at": None,
        }

    def broadcast(self, d_json: str) -> None:
        """Encode once (done by the caller); per connection only the seq is spliced in."""
        slow: list[Client] = []
        for client in self.clients:
            client.seq += 1
            try:
                client.send.send_nowait(
                    '{"type":"message_new","seq":' + str(client.seq) + ',"d":' + d_json + "}"
                )
            except trio.WouldBlock:
                slow.append(client)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        for client in slow:
            self.clients.pop(client, None)
            client.send.close()


def control(type_: str, d: object = None) -> str:
    return json.dumps({"type": type_, "seq": None, "d": d}, separators=(",", ":"))


async def writer(client: Client) -> None:
    try:
        async with client.receive:
            async for frame in client.receive:
                await client.ws.send_message(frame)
        # The queue was closed: the client fell behind (the hub dropped it) or left.
        await client.ws.aclose(4008, "client too slow")
    except ConnectionClosed:
        pass


async def reader(hub: Hub, client: Client) -> None:
    ws = client.ws
    try:
        client.send.send_nowait(control("hello", {"heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS}))
        while True:
            frame = json.loads(await ws.get_message())
            kind = frame.get("type")
            if kind == "heartbeat":
                client.send.send_nowait(control("heartbeat_ack"))
            elif kind == "identify":
                hub.clients[client] = None
                ready = {
                    "session_id": str(uuid.uuid4()),
                    "user_id": str(uuid.uuid4()),
                    "guilds": [],
                    "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
                }
                client.send.send_nowait(control("ready", ready))
            elif kind == "publish":
                message = hub.message(str((frame.get("d") or {}).get("content", "")))
                hub.broadcast(json.dumps(message, separators=(",", ":")))
                # Answered directly (the publisher is usually not identified).
                await ws.send_message(control("published", {"id": message["id"]}))
    except (
        ConnectionClosed,
        ValueError,
        trio.WouldBlock,
        trio.ClosedResourceError,
        trio.BrokenResourceError,
    ):
        pass
    finally:
        hub.clients.pop(client, None)
        client.send.close()


async def handle(hub: Hub, request: WebSocketRequest) -> None:
    ws = await request.accept(subprotocol="vox.v1" if "vox.v1" in request.proposed_subprotocols else None)
    client = Client(ws)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, client)
        await reader(hub, client)
        # Let the writer flush what is queued, briefly, then go.
        nursery.cancel_scope.deadline = trio.current_time() + 0.5


async def main(host: str, port: int) -> None:
    hub = Hub()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                lambda request: handle(hub, request),
                host,
                port,
                ssl_context=None,
                max_message_size=MAX_FRAME,
                task_status=task_status,
            )
        )
        print(f"baseline: ready port={server.port}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.host not in {"127.0.0.1", "localhost", "::1"}:
        sys.exit("the baseline only binds to loopback")
    trio.run(main, args.host, args.port)
