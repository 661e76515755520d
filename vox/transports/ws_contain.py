"""Keeps a failure inside trio-websocket's per-connection code to that one connection.

trio-websocket runs each TCP connection's reader in a task of the nursery it is given, so an
exception raised there propagates into that nursery, and with it out of the whole gateway and
the daemon. One such case is reachable by any client: a message over ``max_message_size`` that
arrives after the server started closing (a protocol error was just answered with 4002, say)
makes trio-websocket try to send a 1009 close in a state where wsproto refuses to send one, and
the ``LocalProtocolError`` escapes its reader task (trio-websocket 0.12.2, wsproto 1.x).

``contained(nursery)`` is what the gateway's listener (vox.transports.ws_guard) gets as its
``handler_nursery``: ``trio.serve_listeners`` only calls ``start_soon`` on it, and an exception
out of a connection task started there ends that connection (``serve_listeners`` closes its TCP
stream) and is logged, instead of raising into the gateway. The client already has its close
frame.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio

log = logging.getLogger("vox.gateway")


class _ContainedNursery:
    __slots__ = ("_nursery",)

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any, name: object = None) -> None:
        self._nursery.start_soon(_contain, fn, *args, name=name if name is not None else fn)


async def _contain(fn: Callable[..., Awaitable[object]], *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        # One connection's failure: logged, and the others go on. Only the type is logged: the
        # messages of the WebSocket layer may quote what the client sent.
        log.warning("websocket connection failed", extra={"fields": {"error": type(exc).__name__}})


def contained(nursery: trio.Nursery) -> trio.Nursery:
    """``nursery`` as a listener's ``handler_nursery``, with each connection contained."""
    return cast(trio.Nursery, _ContainedNursery(nursery))
