"""Server-to-server signing and vouchers, sans-IO (docs/federation.md).

Every federation request carries four headers: ``Vox-Origin`` (the sender's domain),
``Vox-Destination`` (the receiver's domain), ``Vox-Timestamp`` (unix milliseconds) and
``Vox-Signature`` (base64url Ed25519 over the canonical bytes below). The canonical bytes bind
the method, the path with its query, a SHA-256 of the body, the timestamp and both domains, so a
signed request can be neither re-aimed at another server nor altered in transit. The answer is
signed back (``Vox-Origin`` and ``Vox-Signature`` over its status, body hash and the request's
signature), so the caller knows it came from the peer and belongs to its request.

A voucher is a compact signed token ``base64url(json payload).base64url(signature)`` a home
server issues to one of its users for one other server (its audience), short-lived and carrying
a random ``jti`` the audience remembers to make it single-use.

Nothing here does I/O or keeps state: replay memory and key lookup belong to the caller
(vox.services.federation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vox.errors import FederationAuthError

__all__ = [
    "HEADER_DESTINATION",
    "HEADER_ORIGIN",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "RESPONSE_VERSION",
    "SIGNATURE_VERSION",
    "VOUCHER_TTL_MS",
    "Headers",
    "VoucherClaims",
    "b64url_decode",
    "b64url_encode",
    "canonical_bytes",
    "is_valid_domain",
    "issue_voucher",
    "new_voucher_payload",
    "public_key_b64",
    "public_key_from_b64",
    "request_origin",
    "request_signature",
    "sign_request",
    "sign_response",
    "verify_request",
    "verify_response",
    "verify_voucher",
    "voucher_issuer",
]

SIGNATURE_VERSION = "vox-fed-v1"
# Replies are signed too, over other bytes, so a reply signature can never pass for a request's.
RESPONSE_VERSION = "vox-fed-v1-response"
HEADER_ORIGIN = "Vox-Origin"
HEADER_DESTINATION = "Vox-Destination"
HEADER_TIMESTAMP = "Vox-Timestamp"
HEADER_SIGNATURE = "Vox-Signature"

VOUCHER_TTL_MS = 60_000
# A voucher is a login credential: a bigger one is garbage, not a token worth decoding.
_MAX_VOUCHER_CHARS = 4096
_ED25519_SIG_BYTES = 64
_ED25519_KEY_BYTES = 32

# A DNS name (lower case, dot-separated labels), optionally with a port for private
# deployments on one host; never a scheme, path, user or whitespace.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}(?::\d{{1,5}})?\Z){_LABEL}(?:\.{_LABEL})*(?::\d{{1,5}})?")


def is_valid_domain(domain: str) -> bool:
    return bool(_DOMAIN.fullmatch(domain))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode canonical unpadded base64url; raises ValueError on anything else.

    Canonical only: the unused low bits of the last character must be zero, so one byte string
    has exactly one text form (a signature re-spelled with other spare bits would otherwise
    pass as a new request to the replay check).
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    if b64url_encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url_encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a raw 32-byte Ed25519 public key in base64url; raises ValueError."""
    raw = b64url_decode(text.strip())
    if len(raw) != _ED25519_KEY_BYTES:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def canonical_bytes(
    *, method: str, path: str, body: bytes, timestamp_ms: int, origin: str, destination: str
) -> bytes:
    return "\n".join(
        (
            SIGNATURE_VERSION,
            method.upper(),
            path,
            hashlib.sha256(body).hexdigest(),
            str(timestamp_ms),
            origin,
            destination,
        )
    ).encode("utf-8")


def sign_request(
    key: Ed25519PrivateKey,
    *,
    origin: str,
    destination: str,
    method: str,
    path: str,
    body: bytes,
    now_ms: int,
) -> dict[str, str]:
    """The four signature headers for a request from ``origin`` to ``destination``."""
    message = canonical_bytes(
        method=method, path=path, body=body, timestamp_ms=now_ms, origin=origin, destination=destination
    )
    return {
        HEADER_ORIGIN: origin,
        HEADER_DESTINATION: destination,
        HEADER_TIMESTAMP: str(now_ms),
        HEADER_SIGNATURE: b64url_encode(key.sign(message)),
    }


class Headers(Protocol):
    """What is read from request headers: a plain dict or a case-insensitive HTTP header map."""

    def get(self, key: str, /) -> str | None: ...


def _header(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        # Plain dicts are case-sensitive; HTTP header names are not.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        raise FederationAuthError("missing_header", f"missing {name} header")
    return value.strip()


def request_origin(headers: Headers) -> str:
    """The claimed origin of a request, before verification (to pick the key to verify with)."""
    origin = _header(headers, HEADER_ORIGIN).lower()
    if not is_valid_domain(origin):
        raise FederationAuthError("bad_origin", "Vox-Origin is not a domain")
    return origin


def request_signature(headers: Headers) -> str:
    """The signature header as sent (the replay key of a verified request)."""
    return _header(headers, HEADER_SIGNATURE)


def verify_request(
    public_key: Ed25519PublicKey,
    headers: Headers,
    *,
    method: str,
    path: str,
    body: bytes,
    now_ms: int,
    our_domain: str,
    max_skew_ms: int,
) -> str:
    """Check a signed request addressed to ``our_domain``; return its origin.

    Raises FederationAuthError naming the reason. Replays within the skew window are the
    caller's to catch (it remembers the signature).
    """
    origin = request_origin(headers)
    destination = _header(headers, HEADER_DESTINATION).lower()
    if destination != our_domain:
        raise FederationAuthError("wrong_destination", "request is addressed to another server")
    stamp = _header(headers, HEADER_TIMESTAMP)
    if not stamp.isdigit() or len(stamp) > 16:
        raise FederationAuthError("bad_timestamp", "Vox-Timestamp is not unix milliseconds")
    timestamp_ms = int(stamp)
    if abs(now_ms - timestamp_ms) > max_skew_ms:
        raise FederationAuthError("stale", "request timestamp is outside the allowed clock skew")
    try:
        signature = b64url_decode(_header(headers, HEADER_SIGNATURE))
    except ValueError:
        raise FederationAuthError("bad_signature", "Vox-Signature is not base64url") from None
    if len(signature) != _ED25519_SIG_BYTES:
        raise FederationAuthError("bad_signature", "Vox-Signature has the wrong length")
    message = canonical_bytes(
        method=method, path=path, body=body, timestamp_ms=timestamp_ms, origin=origin, destination=destination
    )
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise FederationAuthError("bad_signature", "signature does not verify") from None
    return origin


def _response_bytes(
    *, status: int, body: bytes, request_signature: str, origin: str, destination: str
) -> bytes:
    return "\n".join(
        (
            RESPONSE_VERSION,
            str(status),
            hashlib.sha256(body).hexdigest(),
            request_signature,
            origin,
            destination,
        )
    ).encode("utf-8")


def sign_response(
    key: Ed25519PrivateKey, *, origin: str, destination: str, status: int, body: bytes, request_signature: str
) -> dict[str, str]:
    """The headers that sign a reply (from ``origin``) to a signed request from ``destination``.

    The reply is bound to the request by its signature, so it needs no timestamp of its own and
    cannot be replayed as the answer to another request.
    """
    message = _response_bytes(
        status=status, body=body, request_signature=request_signature, origin=origin, destination=destination
    )
    return {HEADER_ORIGIN: origin, HEADER_SIGNATURE: b64url_encode(key.sign(message))}


def verify_response(
    public_key: Ed25519PublicKey,
    headers: Headers,
    *,
    status: int,
    body: bytes,
    request_signature: str,
    peer: str,
    our_domain: str,
) -> None:
    """Check that ``peer`` signed this reply to our request; raises FederationAuthError."""
    if _header(headers, HEADER_ORIGIN).lower() != peer:
        raise FederationAuthError("wrong_origin", "reply signed in another server's name")
    try:
        signature = b64url_decode(_header(headers, HEADER_SIGNATURE))
    except ValueError:
        raise FederationAuthError("bad_signature", "reply signature is not base64url") from None
    message = _response_bytes(
        status=status, body=body, request_signature=request_signature, origin=peer, destination=our_domain
    )
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise FederationAuthError("bad_signature", "reply signature does not verify") from None


@dataclass(frozen=True, slots=True)
class VoucherClaims:
    """A verified voucher: ``iss`` vouches that its user ``sub`` (named ``name``) is the bearer."""

    issuer: str
    audience: str
    subject: str
    name: str
    jti: str
    issued_at_ms: int
    expires_at_ms: int

    @property
    def identity(self) -> str:
        """The user's federated address, ``name@issuer``."""
        return f"{self.name}@{self.issuer}"


def new_voucher_payload(
    *, issuer: str, audience: str, subject: str, name: str, now_ms: int, ttl_ms: int = VOUCHER_TTL_MS
) -> dict[str, Any]:
    return {
        "v": 1,
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "name": name,
        "jti": secrets.token_urlsafe(18),
        "iat": now_ms,
        "exp": now_ms + ttl_ms,
    }


def issue_voucher(key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> str:
    body = b64url_encode(json.dumps(dict(payload), separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{body}.{b64url_encode(key.sign(body.encode('ascii')))}"


def voucher_issuer(text: str) -> str:
    """The claimed issuer of a voucher, before verification (to pick the key to verify with)."""
    return _voucher_parts(text)[2].issuer


def _voucher_parts(text: str) -> tuple[bytes, bytes, VoucherClaims]:
    if not isinstance(text, str) or len(text) > _MAX_VOUCHER_CHARS or text.count(".") != 1:
        raise FederationAuthError("bad_voucher", "malformed voucher")
    body, _, sig = text.partition(".")
    try:
        payload = json.loads(b64url_decode(body))
        signature = b64url_decode(sig)
    except ValueError:
        raise FederationAuthError("bad_voucher", "malformed voucher") from None
    if not isinstance(payload, dict) or payload.get("v") != 1:
        raise FederationAuthError("bad_voucher", "unknown voucher version")
    strings = ("iss", "aud", "sub", "name", "jti")
    ints = ("iat", "exp")
    if not all(isinstance(payload.get(k), str) and payload[k] for k in strings) or not all(
        type(payload.get(k)) is int for k in ints
    ):
        raise FederationAuthError("bad_voucher", "voucher is missing claims")
    if not is_valid_domain(payload["iss"]):
        raise FederationAuthError("bad_voucher", "voucher issuer is not a domain")
    claims = VoucherClaims(
        issuer=payload["iss"],
        audience=payload["aud"],
        subject=payload["sub"],
        name=payload["name"],
        jti=payload["jti"],
        issued_at_ms=payload["iat"],
        expires_at_ms=payload["exp"],
    )
    return body.encode("ascii"), signature, claims


def verify_voucher(
    public_key: Ed25519PublicKey, text: str, *, audience: str, now_ms: int, max_skew_ms: int = 30_000
) -> VoucherClaims:
    """Check signature, audience and lifetime; the caller makes ``jti`` single-use."""
    signed, signature, claims = _voucher_parts(text)
    try:
        public_key.verify(signature, signed)
    except InvalidSignature:
        raise FederationAuthError("bad_signature", "voucher signature does not verify") from None
    if not hmac.compare_digest(claims.audience.encode(), audience.encode()):
        raise FederationAuthError("wrong_audience", "voucher is addressed to another server")
    if claims.expires_at_ms <= now_ms:
        raise FederationAuthError("expired", "voucher has expired")
    # Issued in the future (beyond clock skew), or living longer than any voucher may.
    if (
        claims.issued_at_ms > now_ms + max_skew_ms
        or claims.expires_at_ms - claims.issued_at_ms > 10 * VOUCHER_TTL_MS
    ):
        raise FederationAuthError("bad_voucher", "voucher lifetime is not acceptable")
    return claims
