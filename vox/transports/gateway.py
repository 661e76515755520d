"""The gateway transport: a trio-websocket listener on ``/gateway``.

Connections run in a nursery owned here (not the listener's), so shutdown can stop accepting
first, then ask every connection to close with a close frame, and only hard-cancel after the
grace period.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial

import trio
from trio_websocket import WebSocketRequest

from vox.context import Context
from vox.nurseries.connection import GatewayConnection
from vox.nurseries.handoff import SessionTaker
from vox.nurseries.session import SessionRegistry
from vox.protocol.gateway import MAX_CLIENT_FRAME_BYTES, SUBPROTOCOL, CloseCode, token_from_subprotocols
from vox.transports import tls
from vox.transports.http_headers import HeaderPolicy, with_security_headers
from vox.transports.ws_contain import contained
from vox.transports.ws_guard import refuse_server_full, serve_guarded_websocket

log = logging.getLogger("vox.gateway")

GATEWAY_PATH = "/gateway"


class GatewayServer:
    def __init__(self, ctx: Context, sessions: SessionRegistry) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.open: set[GatewayConnection] = set()
        c = ctx.config
        self.limits = ctx.connections.listener(
            "gateway", total=c.max_gateway_connections, per_ip=c.max_connections_per_ip
        )
        ctx.connections.export_to(ctx.metrics.registry)
        self._ids = itertools.count(1)
        # The security headers of the listener's HTTP refusals: fixed by the configuration. A
        # tuple, copied per refusal, since trio-websocket appends Content-Length to the list given.
        policy = HeaderPolicy.from_config(ctx.config, tls=ctx.tls is not None)
        self.reject_headers = tuple(with_security_headers([], policy))

    async def handle(self, request: WebSocketRequest) -> None:
        path = request.path.split("?", 1)[0]
        if path != GATEWAY_PATH:
            await request.reject(
                404,
                extra_headers=list(self.reject_headers),
                body=b'{"error":{"code":"not_found","message":"gateway is at /gateway"}}',
            )
            return
        if self.ctx.draining.is_set():
            await request.reject(503, extra_headers=list(self.reject_headers))
            return
        offers_v1, token = token_from_subprotocols(request.proposed_subprotocols)
        ws = await request.accept(subprotocol=SUBPROTOCOL if offers_v1 else None)
        if len(self.open) >= self.ctx.config.max_gateway_connections:
            await ws.aclose(CloseCode.SERVER_FULL, "server full")
            self.ctx.metrics.gateway_closes.labels(str(int(CloseCode.SERVER_FULL))).inc()
            return
        remote = request.remote
        client_ip = str(getattr(remote, "address", remote))
        conn = GatewayConnection(
            self.ctx, ws, next(self._ids), self.sessions, client_ip=client_ip, header_token=token
        )
        self.open.add(conn)
        self.ctx.metrics.gateway_connections.inc()
        try:
            await conn.run()
        except Exception:
            # One connection's bug must never take the daemon down.
            log.exception("gateway connection crashed", extra={"fields": {"conn": conn.conn_id}})
        finally:
            self.open.discard(conn)
            self.ctx.metrics.gateway_connections.dec()


async def serve_gateway(
    ctx: Context, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio.open_nursery() as sessions_nursery:
        server = GatewayServer(ctx, SessionRegistry(ctx, sessions_nursery))
        sessions_nursery.start_soon(server.sessions.run_timers)
        if ctx.nodes is not None:
            # Resumes of sessions held by other nodes, and the requests of others for ours.
            taker = SessionTaker(ctx, server.sessions, ctx.nodes)
            await sessions_nursery.start(taker.run)
            server.sessions.handoff = taker
        await _serve_connections(ctx, server, task_status)
        # Every connection is closed; end the sessions (presence goes offline) and stop.
        server.sessions.end_all()
        if server.sessions.handoff is not None:
            server.sessions.handoff.close()
        sessions_nursery.cancel_scope.deadline = trio.current_time() + ctx.config.shutdown_grace_s


async def _serve_connections(ctx: Context, server: GatewayServer, task_status: trio.TaskStatus[int]) -> None:
    ssl_context = tls.server_context(ctx.tls, alpn=tls.GATEWAY_ALPN) if ctx.tls else None
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as listener:
            ws_server = await listener.start(
                lambda task_status: serve_guarded_websocket(
                    server.handle,
                    ctx.config.host,
                    ctx.config.gateway_port,
                    ssl_context=ssl_context,
                    limits=server.limits,
                    refuse=partial(refuse_server_full, ctx.metrics),
                    connect_timeout=ctx.config.ws_handshake_timeout_s,
                    handler_nursery=contained(connections),
                    max_message_size=MAX_CLIENT_FRAME_BYTES,
                    task_status=task_status,
                )
            )
            task_status.started(ws_server.port)
            await ctx.draining.wait()
            listener.cancel_scope.cancel()
        for conn in list(server.open):
            conn.close_soon(CloseCode.GOING_AWAY, "server shutting down")
        # Each connection closes with 1001 (a handshake that was under way sees ctx.draining as it
        # starts); give them the grace period.
        connections.cancel_scope.deadline = trio.current_time() + ctx.config.shutdown_grace_s
