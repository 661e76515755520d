"""Gateway TCP connections: counted from accept, refused with 4012, bounded in time before upgrade.

trio-websocket's ``serve_websocket`` hands a connection to the application only once its HTTP
upgrade completed, so a socket that never upgrades is invisible to it (and by default waits 60 s).
``serve_guarded_websocket`` takes the same arguments plus the gateway's tally
(vox.transports.limits): every accepted TCP connection is counted against ``max_connections_per_ip``
and ``max_gateway_connections`` until its socket closes, whether it upgraded or not. One over a
limit still gets the WebSocket handshake and is then closed with 4012 "server full", as the
contract says; a flood beyond the refusals in progress is closed without a handshake. The upgrade
itself must complete within ``connect_timeout`` (``ws_handshake_timeout_s``).

The per-connection work is trio-websocket's own (``WebSocketServer._handle_connection``, the
function its listener loop runs); trio-websocket is pinned below 0.13.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from vox.metrics import Metrics
from vox.protocol.gateway import SUBPROTOCOL, CloseCode, token_from_subprotocols
from vox.transports.limits import ListenerLimits, Verdict, peer_ip
from vox.transports.tls import finish_handshake
from vox.transports.tls_failures import HandshakeFailures

__all__ = ["DISCONNECT_TIMEOUT_S", "MESSAGE_QUEUE", "refuse_server_full", "serve_guarded_websocket"]

Handler = Callable[[WebSocketRequest], Awaitable[None]]

# Received messages trio-websocket buffers per connection before it stops reading the socket (its
# default): a client that floods frames is slowed by TCP, not buffered.
MESSAGE_QUEUE = 1
# Seconds a closing client gets to answer the close frame before the socket is closed anyway
# (trio-websocket's default is 60).
DISCONNECT_TIMEOUT_S = 5.0


async def refuse_server_full(metrics: Metrics, request: WebSocketRequest) -> None:
    """Complete the upgrade and close at once with 4012 (what a full gateway answers)."""
    offers_v1, _ = token_from_subprotocols(request.proposed_subprotocols)
    ws = await request.accept(subprotocol=SUBPROTOCOL if offers_v1 else None)
    await ws.aclose(CloseCode.SERVER_FULL, "server full")
    metrics.gateway_closes.labels(str(int(CloseCode.SERVER_FULL))).inc()


async def serve_guarded_websocket(
    handler: Handler,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    limits: ListenerLimits,
    refuse: Handler,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    connect_timeout: float,
    message_queue_size: int = MESSAGE_QUEUE,
    disconnect_timeout: float = DISCONNECT_TIMEOUT_S,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners: list[Any]
    if ssl_context is None:
        listeners = list(await trio.open_tcp_listeners(port, host=host))
    else:
        listeners = list(
            await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
        )
    options: dict[str, Any] = {
        "handler_nursery": handler_nursery,
        "message_queue_size": message_queue_size,
        "max_message_size": max_message_size,
        "connect_timeout": connect_timeout,
        "disconnect_timeout": disconnect_timeout,
    }
    server = WebSocketServer(handler, listeners, **options)
    failures = HandshakeFailures(limits.name)
    refuser = WebSocketServer(refuse, listeners, **options)

    async def serve_one(stream: trio.abc.Stream) -> None:
        ip = peer_ip(stream)
        if ip is None:  # gone before it was served
            await trio.aclose_forcefully(stream)
            return
        with limits.hold(ip) as admission:
            if admission.verdict is not Verdict.DROP and not await finish_handshake(
                stream, connect_timeout, failures=failures, peer=ip
            ):
                return
            if admission.verdict is Verdict.ADMIT:
                await server._handle_connection(stream)
            elif admission.verdict is Verdict.REFUSE:
                await refuser._handle_connection(stream)
            else:
                await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_listeners, serve_one, listeners, handler_nursery=handler_nursery)
        )
        task_status.started(server)
        await trio.sleep_forever()
