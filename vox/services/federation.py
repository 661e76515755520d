"""Server-to-server federation: identity, signed requests, the durable outbox and the inbox.

The root nursery opens one ``Federation`` (``open_federation``) when ``server_name`` is set and
stores it as ``ctx.federation``; with no ``server_name`` it is None and every federation route
answers 404 ``federation_disabled``. docs/federation.md is the operator's view of all this.

API (what features built on federation use):

- ``server_name`` (our domain) and ``public_key_b64`` (base64url Ed25519, no padding).
- ``await resolve(domain) -> Peer(domain, base_url, public_key)``: static peers from the config
  first, then DNS (SRV ``_vox._tcp`` + TXT ``_vox-key``), cached; raises ``PeerUnavailable``.
- ``await request(domain, method, path, json_body=None) -> Any``: one signed synchronous call to
  a peer (``path`` under ``/api/v1/federation/``, query included), bounded by
  ``federation_timeout_s``; the answer must be signed by the peer (vox.api.federation signs
  every answer to a signed request, the features' routes included); returns the decoded JSON
  (None for an empty body). A non-2xx answer raises ``PeerError(status, code)``, an unreachable
  peer ``PeerUnavailable``, a peer refused by our own policy ``FederationForbidden``. A peer that
  answers garbage (5xx, non-JSON, unsigned) is logged and throttled: calls to it fail fast with
  ``PeerUnavailable`` for a backoff that doubles.
- ``await enqueue(domain, kind, payload) -> int``: durable, ordered, at-least-once delivery; returns
  the outbox id once the row is committed. The delivery worker POSTs
  ``/api/v1/federation/inbox`` a batch of a destination's oldest rows (vox.protocol.federation_inbox;
  one row alone goes as ``{"id", "kind", "payload"}``), deletes what the peer acknowledged and
  retries the rest with backoff; rows are never dropped for age.
- ``on(kind, handler)``: register ``async handler(origin: str, payload: dict) -> None`` for
  inbox deliveries of ``kind``. The receiver runs a batch's handlers in order and counts a row
  acknowledged once its handler returned (or raised an ``APIError``: a refusal about the content
  is final, reported in the 200 body and not retried); any other exception stops the batch there
  (503 when it was the first row) and the sender retries from that row. Deliveries are deduplicated
  by (origin, outbox id), so a handler runs once per delivery in all but a crash between the
  handler and the dedup record; handlers that must be exactly-once also dedup on their own keys.
- ``await verify_inbound(headers, method=, path=, body=, client=) -> origin``: for federation
  routes (vox.api.federation.signed_request calls it): policy (403 ``federation_forbidden``), the
  origin's key, signature, destination and timestamp (401 ``federation_unauthorized`` with a
  ``reason``), replay (401, reason ``replayed``), rate limits (429): per verified peer, and per
  source address for requests that fail verification.
- ``issue_voucher(subject=, name=, audience=) -> str`` and
  ``await redeem_voucher(text) -> VoucherClaims``: a short-lived signed voucher for one of our
  users, and the audience's check of one (issuer key, signature, audience, lifetime, single use).
- ``run_delivery`` is the outbox worker the root nursery starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vox.config import Config, domain_set
from vox.ephemeral import Ephemeral
from vox.errors import (
    APIError,
    FederationAuthError,
    FederationForbidden,
    PayloadTooLarge,
    PeerError,
    PeerUnavailable,
    RateLimited,
    ValidationError,
)
from vox.metrics import Metrics
from vox.protocol import federation as proto
from vox.protocol import federation_inbox as inbox
from vox.protocol.federation import Headers
from vox.protocol.federation_inbox import InboxItem
from vox.services.federation_peers import Peer, PeerDirectory, parse_static_peers
from vox.services.ratelimit import Limit, RateLimiter
from vox.storage.federation import FederationStore, OutboxHead, OutboxRow

__all__ = ["Federation", "InboxHandler", "OutboxState", "open_federation"]

log = logging.getLogger("vox.federation")

InboxHandler = Callable[[str, dict[str, Any]], Awaitable[None]]

INBOX_PATH = "/api/v1/federation/inbox"
FEDERATION_PREFIX = "/api/v1/federation/"
# A peer's answer larger than this is garbage, not something to buffer.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
BACKOFF_START_S = 1.0
# How often the worker looks at the outbox without being woken: it takes over destinations
# another daemon stopped delivering (its lease ran out) and catches rows other daemons enqueued.
POLL_S = 5.0
# The inbox remembers processed deliveries this long; a sender retries only until acknowledged.
SEEN_RETENTION_MS = 7 * 86_400_000
PRUNE_EVERY_S = 3600.0
_KIND_CHARS = inbox.KIND_CHARS
# Room in a request body for the batch envelope around the rows' kinds and payloads.
_ENVELOPE_CHARS = 1024
_ROW_ENVELOPE_CHARS = 64


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class OutboxState:
    """What the worker last saw of the outbox (for /healthz, which must not query it)."""

    pending: int = 0
    oldest_created_at: int = 0  # unix ms; 0 when nothing is pending
    checked_at: int = 0  # unix ms of the worker's last look; 0 before the first


@dataclass
class _Throttle:
    failures: int = 0
    until: float = 0.0  # trio.current_time()


class Federation:
    def __init__(
        self,
        config: Config,
        key: Ed25519PrivateKey,
        store: FederationStore,
        ephemeral: Ephemeral,
        directory: PeerDirectory,
        http: httpx.AsyncClient,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.server_name = config.server_name
        self.key = key
        self.public_key_b64 = proto.public_key_b64(key)
        self.store = store
        self.ephemeral = ephemeral
        self.directory = directory
        self.http = http
        self.policy = config.federation_policy
        self.allowlist = domain_set(config.federation_allowlist)
        self.max_skew_ms = int(config.federation_max_skew_s * 1000)
        self.timeout_s = config.federation_timeout_s
        self.retry_max_s = config.federation_retry_max_s
        # Peers are assumed to take bodies as large as ours do; the envelope takes a little.
        self.max_payload_chars = config.max_request_bytes - _ENVELOPE_CHARS
        self.batch_max = config.federation_batch_max
        rows_room = self.max_payload_chars - self.batch_max * _ROW_ENVELOPE_CHARS
        self.batch_bytes = max(min(config.federation_batch_bytes, rows_room), 1)
        # Peers that refused a batch (an older version, a smaller body limit): one row at a time.
        self._single_only: set[str] = set()
        self.outbox_state = OutboxState()
        per_minute = Limit(config.federation_rate, 60.0)
        self.limiter = RateLimiter(ephemeral, {"federation": per_minute, "federation_failures": per_minute})
        self.handlers: dict[str, InboxHandler] = {}
        # Identifies this daemon's leases on outbox rows.
        self.owner = secrets.token_hex(8)
        self._wake = trio.Event()
        self._delivering: set[str] = set()
        self._throttles: dict[str, _Throttle] = {}
        # Destinations the pending gauge has a value for (set back to 0 once emptied).
        self._gauged: set[str] = set()

    # -- identity and peers --------------------------------------------------------------------

    def key_document(self) -> dict[str, str]:
        return {"server_name": self.server_name, "public_key": self.public_key_b64, "algorithm": "ed25519"}

    def allows(self, domain: str) -> bool:
        """Whether our policy lets ``domain`` federate with us (both directions)."""
        if domain == self.server_name or self.policy == "closed":
            return False
        return self.policy == "open" or domain in self.allowlist

    def _check_policy(self, domain: str) -> None:
        if not self.allows(domain):
            raise FederationForbidden(f"federation with {domain} is not allowed by this server's policy")

    async def resolve(self, domain: str) -> Peer:
        return await self.directory.resolve(domain)

    # -- outgoing requests ---------------------------------------------------------------------

    async def request(self, domain: str, method: str, path: str, json_body: Any = None) -> Any:
        domain = domain.lower()
        self._check_policy(domain)
        throttle = self._throttles.get(domain)
        if throttle is not None and throttle.until > trio.current_time():
            raise PeerUnavailable(domain, "peer server is throttled after bad answers")
        peer = await self.resolve(domain)
        status, data = await self._send(peer, method, path, json_body)
        if status == 0 or status >= 500:
            self._throttle(domain)
        if status == 0:
            raise PeerError(status, "garbage", "peer server answered with something other than JSON")
        self._throttles.pop(domain, None)
        if not 200 <= status < 300:
            raise PeerError(status, _error_code(data))
        return data

    def _throttle(self, domain: str) -> None:
        throttle = self._throttles.setdefault(domain, _Throttle())
        throttle.failures += 1
        delay = self._backoff(throttle.failures)
        throttle.until = trio.current_time() + delay
        log.warning(
            "peer answered garbage; throttled",
            extra={"fields": {"peer": domain, "failures": throttle.failures, "retry_in_s": delay}},
        )

    def _backoff(self, attempts: int) -> float:
        return float(min(BACKOFF_START_S * 2 ** min(max(attempts - 1, 0), 30), self.retry_max_s))

    async def _send(self, peer: Peer, method: str, path: str, json_body: Any) -> tuple[int, Any]:
        """Sign and send one request; (status, decoded JSON), status 0 when the answer is garbage
        (not JSON, too large, or not signed by the peer).

        Raises PeerUnavailable when the peer cannot be reached in time.
        """
        if not path.startswith(FEDERATION_PREFIX):
            raise ValueError(f"federation requests go under {FEDERATION_PREFIX}")
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        headers = proto.sign_request(
            self.key,
            origin=self.server_name,
            destination=peer.domain,
            method=method,
            path=path,
            body=body,
            now_ms=_now_ms(),
        )
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        url = peer.base_url + path
        try:
            with trio.fail_after(self.timeout_s + 1.0):
                async with self.http.stream(method.upper(), url, content=body, headers=headers) as response:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_RESPONSE_BYTES:
                            log.warning(
                                "peer answer too large", extra={"fields": {"peer": peer.domain, "path": path}}
                            )
                            return 0, None
                        chunks.append(chunk)
                    status = response.status_code
                    reply_headers = response.headers
        except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
            raise PeerUnavailable(peer.domain, f"peer server unreachable: {type(exc).__name__}") from None
        raw = b"".join(chunks)
        try:
            proto.verify_response(
                peer.public_key,
                reply_headers,
                status=status,
                body=raw,
                request_signature=headers[proto.HEADER_SIGNATURE],
                peer=peer.domain,
                our_domain=self.server_name,
            )
        except FederationAuthError as exc:
            # Whatever answered is not the peer (a proxy's error page, a hijacked address) or
            # altered its answer: garbage, whatever it says.
            log.warning(
                "peer reply not signed by the peer",
                extra={"fields": {"peer": peer.domain, "path": path, "status": status, "reason": exc.reason}},
            )
            return 0, None
        if not raw.strip():
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            log.warning(
                "peer answered non-JSON",
                extra={"fields": {"peer": peer.domain, "path": path, "status": status}},
            )
            return 0, None

    # -- the outbox ----------------------------------------------------------------------------

    async def enqueue(self, domain: str, kind: str, payload: dict[str, Any]) -> int:
        domain = domain.lower()
        if not proto.is_valid_domain(domain):
            raise ValidationError("not a server name", {"domain": "must be a domain name"})
        if not 0 < len(kind) <= _KIND_CHARS:
            raise ValueError(f"an inbox kind has 1 to {_KIND_CHARS} characters")
        self._check_policy(domain)
        text = json.dumps(payload, separators=(",", ":"))
        # Refused now rather than queued: the peer would refuse it as too large for ever.
        if len(text) > self.max_payload_chars:
            raise PayloadTooLarge("too large to send to another server")
        row_id = await self.store.enqueue(domain, kind, text, _now_ms())
        self.metrics.federation_outbox_pending.labels(domain).inc()
        self._wake.set()
        return row_id

    async def run_delivery(
        self, draining: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The outbox worker: one task per destination with due rows; returns when draining."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on, draining, nursery.cancel_scope)
            task_status.started()
            next_prune = trio.current_time()
            while True:
                self._wake = trio.Event()
                wait_s = POLL_S
                try:
                    heads = await self.store.heads()
                    if trio.current_time() >= next_prune:
                        next_prune = trio.current_time() + PRUNE_EVERY_S
                        await self.store.prune_seen(_now_ms() - SEEN_RETENTION_MS)
                except Exception:
                    log.exception("federation outbox unreadable; retrying")
                    heads = []
                else:
                    self._observe(heads)
                now = _now_ms()
                for head in heads:
                    if head.destination in self._delivering:
                        continue
                    due_at = max(head.next_attempt_at, head.lease_until)
                    if due_at <= now:
                        self._delivering.add(head.destination)
                        nursery.start_soon(self._deliver_destination, head.destination)
                    else:
                        wait_s = min(wait_s, (due_at - now) / 1000)
                with trio.move_on_after(max(wait_s, 0.05)):
                    await self._wake.wait()

    def _observe(self, heads: list[OutboxHead]) -> None:
        """Bring the pending gauge and the /healthz snapshot up to date with the worker's look."""
        gauge = self.metrics.federation_outbox_pending
        current = {h.destination for h in heads}
        for gone in self._gauged - current:
            gauge.labels(gone).set(0)
        for head in heads:
            gauge.labels(head.destination).set(head.pending)
        self._gauged = current | self._gauged
        self.outbox_state = OutboxState(
            pending=sum(h.pending for h in heads),
            oldest_created_at=min((h.created_at for h in heads), default=0),
            checked_at=_now_ms(),
        )

    @staticmethod
    async def _stop_on(draining: trio.Event, scope: trio.CancelScope) -> None:
        await draining.wait()
        scope.cancel()

    def _batch_limit(self, destination: str) -> int:
        return 1 if destination in self._single_only else self.batch_max

    async def _deliver_destination(self, destination: str) -> None:
        """Deliver one destination's rows in order, a batch per request, until it is empty or a
        request fails."""
        lease_ms = int((self.timeout_s * 3 + 5) * 1000)
        # Rows of this destination this task holds leases on (claimed, not deleted nor released).
        batch: list[OutboxRow] = []
        try:
            while True:
                batch = await self.store.claim_batch(
                    destination,
                    self.owner,
                    _now_ms(),
                    lease_ms,
                    limit=self._batch_limit(destination),
                    max_bytes=self.batch_bytes,
                )
                if not batch:
                    return
                accepted, error = await self._deliver(destination, batch)
                if accepted:
                    await self.store.delivered(destination, batch[0].id, batch[accepted - 1].id, self.owner)
                    self.metrics.federation_deliveries.labels(destination).inc(accepted)
                    self.metrics.federation_outbox_pending.labels(destination).dec(accepted)
                    batch = batch[accepted:]
                if error is None:
                    continue
                head = batch[0]
                delay = self._backoff(head.attempts + 1)
                if error.retry_after_s:
                    delay = max(delay, min(error.retry_after_s, self.retry_max_s))
                attempts = await self.store.failed(
                    destination, head.id, self.owner, _now_ms() + int(delay * 1000), error.reason
                )
                batch = []
                self.metrics.federation_delivery_failures.labels(destination).inc()
                log.warning(
                    "federation delivery failed; will retry",
                    extra={
                        "fields": {
                            "peer": destination,
                            "outbox_id": head.id,
                            "kind": head.kind,
                            "attempts": attempts,
                            "retry_in_s": delay,
                            "error": error.reason,
                        }
                    },
                )
                return
        except Exception:
            log.exception("federation delivery crashed", extra={"fields": {"peer": destination}})
            if batch:
                # Backed off like a failed attempt, so a row that crashes every time cannot
                # spin the worker.
                crashed, batch = batch[0], []
                self.metrics.federation_delivery_failures.labels(destination).inc()
                with contextlib.suppress(Exception):
                    next_at = _now_ms() + int(self._backoff(crashed.attempts + 1) * 1000)
                    await self.store.failed(destination, crashed.id, self.owner, next_at, "delivery crashed")
        finally:
            if batch:
                # Cut off mid-delivery (shutdown): hand the rows back now rather than letting the
                # lease run out, so the next daemon to look delivers them at once.
                with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                    await self.store.release(destination, self.owner)
            self._delivering.discard(destination)
            # The worker recomputes when this destination is next due.
            self._wake.set()

    async def _deliver(self, destination: str, batch: list[OutboxRow]) -> tuple[int, _Failure | None]:
        """One delivery attempt of a batch: how many leading rows the peer acknowledged (or
        finally refused), and why it stopped there, if it did."""
        if not self.allows(destination):
            # Policy changed after it was queued: keep it, the policy may change back.
            return 0, _Failure("refused by our own federation policy")
        items = [InboxItem(r.id, r.kind, json.loads(r.payload)) for r in batch]
        # One row goes in the envelope every version takes; a batch only to peers that take it.
        body = (
            inbox.single_envelope(items[0].id, items[0].kind, items[0].payload)
            if len(items) == 1
            else (inbox.batch_envelope(items))
        )
        try:
            peer = await self.resolve(destination)
            status, data = await self._send(peer, "POST", INBOX_PATH, body)
        except PeerUnavailable as exc:
            return 0, _Failure(exc.message)
        if 200 <= status < 300:
            if len(items) == 1:
                self._log_refusals(destination, items, [data])
                return 1, None
            accepted = inbox.accepted_count(data, [i.id for i in items])
            if accepted is None:
                return 0, _Failure(f"peer answered {status} without saying what it accepted")
            assert isinstance(data, dict)
            results = data.get("results")
            self._log_refusals(destination, items[:accepted], results if isinstance(results, list) else [])
            if accepted == len(items):
                return accepted, None
            stopped = data.get("stopped")
            return accepted, _Failure(f"peer stopped the batch: {_error_code(stopped)}")
        code = _error_code(data)
        if status in (400, 413) and code in ("validation_error", "payload_too_large"):
            if len(items) > 1:
                # A peer of an older version (no batches) or with a smaller body limit: one row
                # per request to it from now on, which every version takes.
                self._single_only.add(destination)
                log.warning(
                    "peer refused a batch; sending it one row per request",
                    extra={"fields": {"peer": destination, "rows": len(items), "code": code}},
                )
                return 0, None
            # The envelope itself is unacceptable: retrying cannot help and would block the queue.
            log.error(
                "peer rejected a federation delivery as malformed; dropped",
                extra={"fields": {"peer": destination, "outbox_id": items[0].id, "kind": items[0].kind}},
            )
            return 1, None
        if status == 0 or status >= 500:
            self._throttle(destination)
        retry_after_s = 0.0
        if status == 429 and isinstance(data, dict):
            err = data.get("error")
            if isinstance(err, dict) and isinstance(err.get("retry_after_ms"), int):
                retry_after_s = err["retry_after_ms"] / 1000
        code = "garbage" if status == 0 else code
        return 0, _Failure(f"peer answered {status} {code}", retry_after_s)

    @staticmethod
    def _log_refusals(destination: str, items: list[InboxItem], results: list[Any]) -> None:
        for item, result in zip(items, results, strict=False):
            if isinstance(result, dict) and isinstance(result.get("error"), dict):
                log.error(
                    "peer refused a federation delivery",
                    extra={
                        "fields": {
                            "peer": destination,
                            "outbox_id": item.id,
                            "kind": item.kind,
                            "code": _error_code(result),
                        }
                    },
                )

    # -- the inbox -----------------------------------------------------------------------------

    def on(self, kind: str, handler: InboxHandler) -> None:
        if kind in self.handlers:
            raise ValueError(f"an inbox handler for {kind!r} is already registered")
        self.handlers[kind] = handler

    async def verify_inbound(
        self, headers: Headers, *, method: str, path: str, body: bytes, client: str = ""
    ) -> str:
        origin = proto.request_origin(headers)
        # The policy before any key lookup: a refused origin costs no DNS.
        self._check_policy(origin)
        # Requests that fail verification are counted per source address, and an address out of
        # them is refused before any lookup: a forger can neither make us query DNS without end
        # nor, by claiming a real peer's name, spend that peer's own budget (charged below, only
        # once its signature verified).
        await self.limiter.peek("federation_failures", client)
        try:
            await self._verify(origin, headers, method=method, path=path, body=body)
            # Remembered for as long as its timestamp is acceptable; a replay (which anyone who
            # saw the request could send) is a failure of its sender address, not of the peer.
            signature = proto.request_signature(headers)
            fresh = await self.ephemeral.set_if_absent(
                f"fed:replay:{origin}:{signature}", b"1", ttl_s=2 * self.max_skew_ms / 1000
            )
            if not fresh:
                raise FederationAuthError("replayed", "this signed request was already received")
        except FederationAuthError:
            with contextlib.suppress(RateLimited):
                await self.limiter.take("federation_failures", client)
            raise
        await self.limiter.take("federation", origin)
        return origin

    async def _verify(self, origin: str, headers: Headers, *, method: str, path: str, body: bytes) -> None:
        now_ms = _now_ms()

        async def check(*, fresh: bool) -> None:
            if fresh:
                # The peer may have rotated its key since we cached its DNS record: look again.
                self.directory.forget(origin)
            try:
                peer = await self.resolve(origin)
            except PeerUnavailable:
                raise FederationAuthError(
                    "unknown_key", "no public key found for the origin server"
                ) from None
            try:
                proto.verify_request(
                    peer.public_key,
                    headers,
                    method=method,
                    path=path,
                    body=body,
                    now_ms=now_ms,
                    our_domain=self.server_name,
                    max_skew_ms=self.max_skew_ms,
                )
            except FederationAuthError as exc:
                if fresh or exc.reason != "bad_signature" or peer.static:
                    raise
                await check(fresh=True)

        await check(fresh=False)

    async def receive(self, origin: str, envelope: Any) -> dict[str, Any]:
        """Process an inbox delivery (one row or a batch) from a verified ``origin``; the body to
        answer 200 with. Raises the error to answer when not even the first row was processed."""
        items, is_batch = inbox.parse_envelope(envelope)
        results, stopped = await self._process(origin, items)
        if stopped is not None and not results:
            raise stopped
        if not is_batch:
            answer = dict(results[0])
            del answer["id"]
            return answer
        body: dict[str, Any] = {"ok": True, "accepted": results[-1]["id"], "results": results}
        if stopped is not None:
            body["stopped"] = {"id": items[len(results)].id, **stopped.body()}
        return body

    async def _process(
        self, origin: str, items: list[InboxItem]
    ) -> tuple[list[dict[str, Any]], APIError | None]:
        """Run the handlers of ``items`` in order until one cannot be processed now; the answer
        of each processed row, and the error that stopped the rest (if any).

        Dedup records are written in one transaction at the end, and each row's lock is held
        until then, so a second daemon of ours receiving the same retry runs no handler twice.
        """
        seen = await self.store.seen(origin, [i.id for i in items])
        results: list[dict[str, Any]] = []
        processed: list[int] = []
        locks: list[tuple[str, bytes]] = []
        stopped: APIError | None = None
        count = self.metrics.federation_inbox_items
        try:
            for item in items:
                if item.id in seen:
                    results.append({"id": item.id, "ok": True, "duplicate": True})
                    count.labels(origin, "duplicate").inc()
                    continue
                answer = await self._process_one(origin, item, locks)
                if isinstance(answer, APIError):
                    stopped = answer
                    count.labels(origin, "in_progress" if isinstance(answer, _InProgress) else "failed").inc()
                    break
                outcome = "ok" if answer.get("ok") else str(answer["error"]["code"])
                count.labels(origin, outcome if outcome in ("ok", "unknown_kind") else "refused").inc()
                results.append({"id": item.id, **answer})
                processed.append(item.id)
                seen.add(item.id)
            await self.store.mark_seen(origin, processed, _now_ms())
        finally:
            for lock, token in locks:
                await self.ephemeral.delete_if_equal(lock, token)
        return results, stopped

    async def _process_one(
        self, origin: str, item: InboxItem, locks: list[tuple[str, bytes]]
    ) -> dict[str, Any] | APIError:
        handler = self.handlers.get(item.kind)
        if handler is None:
            # Acknowledged, so a kind this server does not know never blocks the sender's queue.
            log.warning(
                "inbox delivery of an unknown kind", extra={"fields": {"peer": origin, "kind": item.kind}}
            )
            return {
                "ok": False,
                "error": {"code": "unknown_kind", "message": f"no handler for {item.kind!r}"},
            }
        # Two daemons of ours may receive the same retry at once; only one runs the handler.
        lock = f"fed:inbox:{origin}:{item.id}"
        token = secrets.token_bytes(8)
        if not await self.ephemeral.set_if_absent(lock, token, ttl_s=self.timeout_s * 3 + 5):
            return _InProgress("this delivery is being processed")
        locks.append((lock, token))
        try:
            await handler(origin, item.payload)
        except APIError as exc:
            # A refusal about the content (unknown user, not allowed): final, never retried.
            log.warning(
                "inbox delivery refused",
                extra={"fields": {"peer": origin, "kind": item.kind, "code": exc.code}},
            )
            return {"ok": False, **exc.body()}
        except Exception:
            # Not the content's fault (a database hiccup, a bug): unacknowledged, so the sender
            # keeps the row and retries it.
            log.exception("inbox handler failed", extra={"fields": {"peer": origin, "kind": item.kind}})
            return _HandlerFailed("the delivery could not be processed; retry later")
        return {"ok": True}

    # -- vouchers ------------------------------------------------------------------------------

    def issue_voucher(self, *, subject: str, name: str, audience: str) -> str:
        audience = audience.lower()
        self._check_policy(audience)
        payload = proto.new_voucher_payload(
            issuer=self.server_name, audience=audience, subject=subject, name=name, now_ms=_now_ms()
        )
        return proto.issue_voucher(self.key, payload)

    async def redeem_voucher(self, text: str) -> proto.VoucherClaims:
        issuer = proto.voucher_issuer(text)
        self._check_policy(issuer)
        try:
            peer = await self.resolve(issuer)
        except PeerUnavailable:
            raise FederationAuthError("unknown_key", "no public key found for the voucher's issuer") from None
        now = _now_ms()
        claims = proto.verify_voucher(peer.public_key, text, audience=self.server_name, now_ms=now)
        ttl_s = max(claims.expires_at_ms - now, 1) / 1000 + 1
        if not await self.ephemeral.set_if_absent(f"fed:jti:{issuer}:{claims.jti}", b"1", ttl_s=ttl_s):
            raise FederationAuthError("replayed", "this voucher was already used")
        return claims


class _InProgress(APIError):
    status = 409
    code = "delivery_in_progress"


class _HandlerFailed(APIError):
    status = 503
    code = "delivery_failed"


@dataclass(frozen=True, slots=True)
class _Failure:
    reason: str
    retry_after_s: float = 0.0


def _error_code(data: Any) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return str(error["code"])[:64]
    return "unknown"


@asynccontextmanager
async def open_federation(
    config: Config,
    key: Ed25519PrivateKey,
    store: FederationStore,
    ephemeral: Ephemeral,
    metrics: Metrics | None = None,
) -> AsyncIterator[Federation]:
    """The Federation service with its HTTP client; the caller checks ``config.server_name``."""
    directory = PeerDirectory(
        parse_static_peers(config.federation_peers),
        dns_server=config.federation_dns_server,
        insecure_http=config.federation_insecure_http,
        timeout_s=config.federation_timeout_s,
    )
    timeout = httpx.Timeout(config.federation_timeout_s)
    # No redirects: a signature covers one path on one server. No proxies from the environment:
    # peers are reached directly (HTTPS_PROXY in a daemon's environment is not a federation setting).
    async with httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        transport=httpx.AsyncHTTPTransport(retries=0),
    ) as http:
        service = Federation(config, key, store, ephemeral, directory, http, metrics)
        log.info(
            "federation ready",
            extra={
                "fields": {
                    "server_name": service.server_name,
                    "public_key": service.public_key_b64,
                    "policy": service.policy,
                    "static_peers": len(directory.static),
                }
            },
        )
        yield service
