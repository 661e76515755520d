"""The QUIC media listener: aioquic's sans-IO ``QuicConnection`` on one trio UDP socket.

``serve_media`` binds the socket, reports its port through ``task_status`` and runs:

- the **receive loop**: reads UDP datagrams (draining the socket's queue in batches), routes each
  to its connection by destination connection id (a new Initial makes a new connection), feeds it
  to aioquic, handles the resulting events and then sends what the touched connections have to
  send. Media fan-out happens here, inline: an authenticated sender's datagram is checked by
  ``MediaService.route`` and queued as a DATAGRAM frame on every receiver's connection, and the
  receivers are flushed once per batch. A wake-up of another task per datagram and receiver would
  cost more than the forwarding itself;
- **one nursery per connection** (in the listener's connections nursery): its timer task, which
  sleeps until aioquic's next deadline (loss detection, ACK delay, idle timeout, the end of a
  close) and also sends what a close from outside (a gateway ``voice_leave``) queued, and its
  authentication deadline. Cancelling that nursery ends the connection's tasks and nothing else.

Sends go through the socket's non-blocking stdlib object: UDP may drop, and a full send buffer
drops the packet (counted as ``send_buffer_full``) instead of stalling every room behind one
``await``.

Authentication: the first client-initiated bidirectional stream carries the media token and a
``\\n``; the answer is ``ok\\n`` on the same stream, or a CONNECTION_CLOSE with an application error
code (``CloseCode``) and the reason as its phrase. Datagrams before that are dropped and counted.

TLS: ``media_cert_file``, else the REST and gateway certificate (tls_cert or tls_self_signed, see
vox.transports.tls), else a self-signed one generated on first start in ``data_dir/keys``
(``media_cert.pem``/``media_key.pem``, 0600; renewed when it expires within a day). ALPN
``vox-media/1`` is required; DATAGRAM frames (RFC 9221) are enabled.
"""

from __future__ import annotations

import enum
import logging
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path

import trio
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without __all__ (mypy strict)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from vox.config import Config
from vox.errors import ConfigError
from vox.protocol.media import ALPN, MAX_DATAGRAM_BYTES, MediaTokenError
from vox.services.media import MediaService, MediaSession
from vox.transports.tls import CertFiles, ensure_self_signed

__all__ = ["CloseCode", "MediaEndpoint", "ensure_certificate", "serve_media"]

log = logging.getLogger("vox.media")

SMALLEST_INITIAL = 1200  # RFC 9000 14.1: a client's Initial is padded to at least this
RECV_BATCH = 64
# Datagrams queued on one receiver's connection beyond which more are dropped: a receiver whose
# congestion window is closed must not make the server buffer without bound.
MAX_PENDING_DATAGRAMS = 256
AUTH_LINE_MAX = 1024


class CloseCode(enum.IntEnum):
    """Application error codes of the media connection's CONNECTION_CLOSE."""

    NO_ERROR = 0  # left the voice channel
    AUTH_FAILED = 1
    AUTH_TIMEOUT = 2
    SERVER_SHUTDOWN = 3
    PROTOCOL_ERROR = 4


@dataclass(eq=False)
class MediaConnection:
    """One QUIC connection and what the listener keeps about it (the service's ``MediaLink``)."""

    endpoint: MediaEndpoint
    quic: QuicConnection
    addr: tuple[str, int]
    session: MediaSession | None = None
    auth_stream: int | None = None
    auth_buf: bytearray = field(default_factory=bytearray)
    closing: bool = False
    terminated: bool = False
    dirty: bool = False
    # Media datagrams queued and not yet sent, and when the batch of the oldest was read: the
    # forward delay metric (pacing or a closed congestion window included).
    queued: int = 0
    queued_since: float = 0.0
    timer_at: float = math.inf
    wake: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    # -- MediaLink ------------------------------------------------------------------------------
    def queue_datagram(self, data: bytes) -> bool:
        # aioquic exposes no length of its datagram queue; the private deque is the only bound
        # (aioquic is pinned below 1.8 in pyproject.toml, and the e2e tests exercise this path).
        if self.closing or len(self.quic._datagrams_pending) >= MAX_PENDING_DATAGRAMS:
            return False
        self.quic.send_datagram_frame(data)
        if not self.queued:
            self.queued_since = self.endpoint.batch_time
        self.queued += 1
        if not self.dirty:
            self.dirty = True
            self.endpoint.dirty.append(self)
        return True

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.quic.close(error_code=code, reason_phrase=reason)
        # Called from outside the receive loop too (a gateway voice_leave): the timer task sends.
        self.wake.set()


class MediaEndpoint:
    def __init__(
        self,
        service: MediaService,
        config: Config,
        quic_config: QuicConfiguration,
        raw: socket.socket,
        nursery: trio.Nursery,
    ) -> None:
        self.service = service
        self.config = config
        self.quic_config = quic_config
        self.raw = raw
        self.nursery = nursery
        self.by_cid: dict[bytes, MediaConnection] = {}
        self.connections: set[MediaConnection] = set()
        self.dirty: list[MediaConnection] = []
        self.batch_time = 0.0  # when the batch being handled was read off the socket

    # -- receiving ------------------------------------------------------------------------------
    async def receive_loop(self) -> None:
        raw = self.raw
        while True:
            await trio.lowlevel.wait_readable(raw)
            now = self.batch_time = trio.current_time()
            for _ in range(RECV_BATCH):
                try:
                    data, addr = raw.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable reported on Linux
                    log.debug("media socket error", extra={"fields": {"error": repr(exc)}})
                    continue
                self._packet(data, addr[:2], now)
            # Once per batch: datagrams for one receiver read in the same batch share a packet,
            # which costs the receiver less than one packet each (flushing per datagram was
            # measured: worse end-to-end latency at 10 speakers in a room of 10).
            self._flush_dirty(now)
            await trio.lowlevel.checkpoint()

    def _packet(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.quic_config.connection_id_length
            )
        except ValueError:
            self.service.drop("not_quic")
            return
        supported = self.quic_config.supported_versions
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in supported
            and len(data) >= SMALLEST_INITIAL  # RFC 9000 6.1: no amplification by small packets
        ):
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=supported,
                ),
                addr,
            )
            return
        conn = self.by_cid.get(header.destination_cid)
        if conn is None:
            if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_INITIAL:
                return  # a stray or late packet of a connection we no longer know
            if len(self.connections) >= self.config.media_max_connections:
                self.service.auth_failed("server_full")
                return
            conn = MediaConnection(
                self,
                QuicConnection(
                    configuration=self.quic_config,
                    original_destination_connection_id=header.destination_cid,
                ),
                addr,
            )
            self.connections.add(conn)
            self.service.connections = len(self.connections)
            self.by_cid[header.destination_cid] = conn
            self.by_cid[conn.quic.host_cid] = conn
            self.nursery.start_soon(self._run_connection, conn)
        conn.quic.receive_datagram(data, addr, now)
        self._events(conn, now)
        if not conn.dirty:
            conn.dirty = True
            self.dirty.append(conn)

    def _events(self, conn: MediaConnection, now: float) -> None:
        quic = conn.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, DatagramFrameReceived):
                self._datagram(conn, event.data, now)
            elif isinstance(event, StreamDataReceived):
                self._stream(conn, event)
            elif isinstance(event, ConnectionIdIssued):
                self.by_cid[event.connection_id] = conn
            elif isinstance(event, ConnectionIdRetired):
                if self.by_cid.get(event.connection_id) is conn:
                    del self.by_cid[event.connection_id]
            elif isinstance(event, HandshakeCompleted):
                if event.alpn_protocol != ALPN:  # aioquic refuses this already; kept as a guard
                    self.service.auth_failed("bad_alpn")
                    conn.close(CloseCode.PROTOCOL_ERROR, "ALPN vox-media/1 required")
            elif isinstance(event, ConnectionTerminated):
                self._terminated(conn)

    def _datagram(self, conn: MediaConnection, data: bytes, now: float) -> None:
        service = self.service
        sender = conn.session
        if sender is None:
            service.drop("unauthenticated")
            return
        service.received += 1
        targets = service.route(sender, data, now)
        if isinstance(targets, str):
            service.drop(targets)
            return
        forwarded = 0
        for receiver in targets:
            if receiver is sender:
                continue
            link = receiver.link
            if link is not None and link.queue_datagram(data):
                forwarded += 1
            else:
                service.drop("receiver_congested")
        service.forwarded += forwarded

    def _stream(self, conn: MediaConnection, event: StreamDataReceived) -> None:
        if conn.session is not None or conn.closing:
            return  # after authentication the stream carries nothing the server reads (yet)
        if event.stream_id % 4 != 0:  # not client-initiated bidirectional
            return
        if conn.auth_stream is None:
            conn.auth_stream = event.stream_id
        elif conn.auth_stream != event.stream_id:
            return
        conn.auth_buf += event.data
        end = conn.auth_buf.find(b"\n")
        if end < 0:
            if len(conn.auth_buf) > AUTH_LINE_MAX or event.end_stream:
                self._refuse(conn, "bad_token")
            return
        line = bytes(conn.auth_buf[:end]).strip()
        conn.auth_buf.clear()
        try:
            token = line.decode("ascii")
            conn.session = self.service.authenticate(token, conn)
        except UnicodeDecodeError:
            self._refuse(conn, "bad_token")
        except MediaTokenError as exc:
            self._refuse(conn, exc.reason)
        else:
            conn.quic.send_stream_data(event.stream_id, b"ok\n")

    def _refuse(self, conn: MediaConnection, reason: str) -> None:
        # The reason, never the token, goes to the log and the metrics.
        self.service.auth_failed(reason)
        log.info("media connection refused", extra={"fields": {"reason": reason, "addr": conn.addr[0]}})
        conn.close(CloseCode.AUTH_FAILED, reason)

    def _terminated(self, conn: MediaConnection) -> None:
        if conn.terminated:
            return
        conn.terminated = True
        self.connections.discard(conn)
        self.service.connections = len(self.connections)
        for cid in [cid for cid, c in self.by_cid.items() if c is conn]:
            del self.by_cid[cid]
        session = conn.session
        if session is not None and session.link is conn:
            self.service.link_closed(session)
        conn.scope.cancel()

    # -- sending --------------------------------------------------------------------------------
    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.raw.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.service.drop("send_buffer_full")
        except OSError as exc:
            log.debug("media send failed", extra={"fields": {"error": repr(exc)}})

    def _transmit(self, conn: MediaConnection, now: float) -> None:
        conn.dirty = False
        for data, addr in conn.quic.datagrams_to_send(now):
            self._send(data, addr)
        if conn.queued and not conn.quic._datagrams_pending:
            self.service.observe_forward_delay(trio.current_time() - conn.queued_since, conn.queued)
            conn.queued = 0
        deadline = conn.quic.get_timer()
        if deadline is not None and deadline < conn.timer_at:
            conn.wake.set()  # the timer task sleeps until a later deadline

    def _flush_dirty(self, now: float) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            if not conn.terminated:
                self._transmit(conn, now)
            else:
                conn.dirty = False

    # -- per connection -------------------------------------------------------------------------
    async def _run_connection(self, conn: MediaConnection) -> None:
        with conn.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer, conn)
                nursery.start_soon(self._auth_deadline, conn)
        if not conn.terminated:  # cancelled from outside (shutdown)
            self._terminated(conn)

    async def _timer(self, conn: MediaConnection) -> None:
        quic = conn.quic
        while True:
            deadline = quic.get_timer()
            conn.timer_at = math.inf if deadline is None else deadline
            woke = False
            with trio.move_on_at(conn.timer_at):
                await conn.wake.wait()
                woke = True
            conn.wake = trio.Event()
            now = trio.current_time()
            if not woke or (deadline is not None and now >= deadline):
                quic.handle_timer(now)
                self._events(conn, now)
            if conn.terminated:
                return
            self._transmit(conn, now)
            self._flush_dirty(now)

    async def _auth_deadline(self, conn: MediaConnection) -> None:
        await trio.sleep(self.config.media_auth_timeout_s)
        if conn.session is None and not conn.closing:
            self.service.auth_failed("auth_timeout")
            conn.close(CloseCode.AUTH_TIMEOUT, "no media token in time")

    def close_all(self, code: int, reason: str) -> None:
        now = trio.current_time()
        for conn in list(self.connections):
            conn.close(code, reason)
            self._transmit(conn, now)


# -- TLS certificate --------------------------------------------------------------------------------


def ensure_certificate(config: Config, tls_files: CertFiles | None = None) -> tuple[Path, Path]:
    """The media listener's certificate and key files; blocking (run it in a worker thread).

    ``media_cert_file``/``media_key_file`` win; else the REST and gateway certificate
    (``tls_files``, from tls_cert/tls_key or tls_self_signed); else a self-signed one of its own."""
    if config.media_cert_file or config.media_key_file:
        if not (config.media_cert_file and config.media_key_file):
            raise ConfigError("media_cert_file", "media_cert_file and media_key_file go together")
        cert, key = Path(config.media_cert_file), Path(config.media_key_file)
        for name, path in (("media_cert_file", cert), ("media_key_file", key)):
            if not path.is_file():
                raise ConfigError(name, f"{str(path)!r} not found")
        return cert, key
    if tls_files is not None:
        return tls_files.cert, tls_files.key
    keys = config.data_dir / "keys"
    host = config.media_host or config.host
    names = ("localhost", host) if host and host != "localhost" else ("localhost",)
    files = ensure_self_signed(keys / "media_cert.pem", keys / "media_key.pem", names, label="media")
    return files.cert, files.key


def _quic_configuration(config: Config, cert: Path, key: Path) -> QuicConfiguration:
    quic = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        max_datagram_frame_size=MAX_DATAGRAM_BYTES + 64,
        idle_timeout=config.media_idle_timeout_s,
    )
    try:
        quic.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:
        raise ConfigError("media_cert_file", f"cannot load the media certificate: {exc}") from None
    return quic


async def serve_media(
    config: Config,
    service: MediaService,
    draining: trio.Event,
    *,
    tls_files: CertFiles | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind the media socket, report its port, serve until ``draining`` is set, then close every
    connection (CONNECTION_CLOSE SERVER_SHUTDOWN) and return."""
    cert, key = await trio.to_thread.run_sync(ensure_certificate, config, tls_files)
    quic_config = await trio.to_thread.run_sync(_quic_configuration, config, cert, key)
    host = config.media_host or config.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_DGRAM)
    try:
        raw.setblocking(False)
        try:
            raw.bind((host, config.media_port))
        except OSError as exc:
            raise ConfigError("media_port", f"cannot bind UDP {host}:{config.media_port}: {exc}") from None
        port = int(raw.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        service.media_url = config.public_media_url or f"quic://{shown}:{port}"
        async with trio.open_nursery() as nursery:
            endpoint = MediaEndpoint(service, config, quic_config, raw, nursery)
            nursery.start_soon(endpoint.receive_loop)
            task_status.started(port)
            await draining.wait()
            service.media_url = None  # no new media sessions while draining
            endpoint.close_all(CloseCode.SERVER_SHUTDOWN, "server shutting down")
            await trio.sleep(0.05)  # let the closes leave; the rest is cancelled
            nursery.cancel_scope.cancel()
    finally:
        raw.close()
