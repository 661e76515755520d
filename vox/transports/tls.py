"""TLS for the listeners: which certificate, self-signed certificates, and the one ``SSLContext`` builder.

``resolve`` decides once at start-up (in a worker thread; it reads files and may generate a key):

- ``tls_cert``/``tls_key`` set: both must name readable PEM files and the key must belong to the
  certificate, or start-up fails with ``ConfigError`` naming the key;
- ``tls_self_signed``: a certificate and key generated in ``data_dir/keys`` (``tls_cert.pem``,
  ``tls_key.pem``, 0600) for localhost, 127.0.0.1, ::1 and the configured host, reused while it
  has more than a day left and still names those hosts. Its SHA-256 fingerprint is logged, so a
  client can pin it;
- neither: plaintext (``None``).

``server_context`` builds the context REST and the gateway serve with: TLS 1.2 at least, 1.3
whenever the client offers it (OpenSSL picks the highest common version), forward-secret AEAD
suites only for 1.2, no compression, no renegotiation. Both listeners complete the handshake with
``finish_handshake`` before any protocol reads (REST: vox.transports.http_guard; gateway:
vox.transports.ws_guard). A failed one (plaintext sent to the TLS port, an old protocol version,
an untrusted certificate on the client's side) is one rate-limited log line at info with the
client address and OpenSSL's reason (vox.transports.tls_failures); the connection is closed at
once and the listener goes on.

QUIC media (always TLS 1.3) uses ``media_cert_file`` when set, else these files, else its own
self-signed certificate (vox.transports.quic.ensure_certificate).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HyperConfig

from vox.config import Config
from vox.errors import ConfigError
from vox.transports.tls_failures import HandshakeFailures, failure_reason

__all__ = [
    "GATEWAY_ALPN",
    "REST_ALPN",
    "CertFiles",
    "check_pair",
    "ensure_self_signed",
    "fingerprint",
    "finish_handshake",
    "generate_self_signed",
    "hypercorn_config",
    "resolve",
    "self_signed_names",
    "server_context",
    "write_private",
]

log = logging.getLogger("vox.tls")

REST_ALPN = ("h2", "http/1.1")
GATEWAY_ALPN = ("http/1.1",)
# TLS 1.2 suites (1.3's are OpenSSL's fixed AEAD set): ECDHE for forward secrecy, AEAD only. Every
# one is allowed by RFC 9113's TLS 1.2 profile for h2.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
RENEW_BEFORE = datetime.timedelta(days=1)
SELF_SIGNED_DAYS = 365


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def resolve(config: Config) -> CertFiles | None:
    """The REST and gateway certificate, or None for plaintext; blocking (run in a worker thread)."""
    if config.tls_cert or config.tls_key:
        if config.tls_self_signed:
            raise ConfigError("tls_self_signed", "use either tls_self_signed or tls_cert/tls_key")
        if not (config.tls_cert and config.tls_key):
            raise ConfigError(
                "tls_cert" if not config.tls_cert else "tls_key", "tls_cert and tls_key go together"
            )
        files = CertFiles(Path(config.tls_cert), Path(config.tls_key))
        check_pair(files, cert_key="tls_cert", key_key="tls_key")
        return files
    if config.tls_self_signed:
        keys = config.data_dir / "keys"
        names = self_signed_names(config.host, config.media_host)
        return ensure_self_signed(keys / "tls_cert.pem", keys / "tls_key.pem", names, label="tls")
    return None


def check_pair(files: CertFiles, *, cert_key: str, key_key: str) -> None:
    """Raise ConfigError unless both files exist, parse as PEM and the key belongs to the certificate."""
    for name, path in ((cert_key, files.cert), (key_key, files.key)):
        if not path.is_file():
            raise ConfigError(name, f"{str(path)!r} not found")
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(cert_key, f"{str(files.cert)!r} is not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except TypeError:
        raise ConfigError(key_key, f"{str(files.key)!r} is encrypted; give an unencrypted key") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(key_key, f"{str(files.key)!r} is not a PEM private key: {exc}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(key_key, f"{str(files.key)!r} is not the key of {str(files.cert)!r}")


def server_context(files: CertFiles, *, alpn: Sequence[str]) -> ssl.SSLContext:
    """A server context for ``files`` offering the ``alpn`` protocols."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_cert", f"cannot load the certificate: {exc}") from None
    return context


async def finish_handshake(
    stream: trio.abc.Stream,
    timeout_s: float,
    *,
    failures: HandshakeFailures | None = None,
    peer: str | None = None,
) -> bool:
    """Complete a TLS stream's handshake before the protocol on top reads from it; False (the
    stream closed) when it fails or takes longer than ``timeout_s``. A plain stream passes. A
    failure with a TLS reason is reported to ``failures`` with the client address ``peer``.

    trio-websocket starts by reading the upgrade request and, when TLS under it fails, waits for
    a request that can no longer come until its connect timeout, holding the socket and leaving
    the client (plaintext ws:// sent to the wss:// port, say) without an answer."""
    if not isinstance(stream, trio.SSLStream):
        return True
    try:
        with trio.fail_after(timeout_s):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        await trio.aclose_forcefully(stream)
        reason = failure_reason(exc)
        if failures is not None and reason is not None:
            failures.failed(peer, reason)
        return False
    return True


class _HyperConfigTLS(HyperConfig):
    # hypercorn builds its own context from certfile/keyfile; this hands it ours instead.
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context

    @property
    def ssl_enabled(self) -> bool:
        return True


def hypercorn_config(context: ssl.SSLContext | None) -> HyperConfig:
    """A hypercorn Config serving ``context`` (plaintext when None)."""
    return HyperConfig() if context is None else _HyperConfigTLS(context)


# -- self-signed certificates -----------------------------------------------------------------------


def self_signed_names(*hosts: str) -> tuple[str, ...]:
    """Loopback names plus the configured hosts (a wildcard bind address names no host)."""
    names = ["localhost", "127.0.0.1", "::1"]
    for host in hosts:
        if not host or host in names:
            continue
        try:
            if ipaddress.ip_address(host).is_unspecified:
                continue
        except ValueError:
            pass
        names.append(host)
    return tuple(names)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def generate_self_signed(names: Sequence[str], common_name: str) -> tuple[bytes, bytes]:
    """A P-256 key and a certificate for ``names`` signed by it, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` 0600 and atomically (a reader never sees half a key)."""
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _still_good(cert: x509.Certificate, names: Sequence[str]) -> bool:
    if cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) <= RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(_general_name(n) in san for n in names)


def ensure_self_signed(cert_path: Path, key_path: Path, names: Sequence[str], *, label: str) -> CertFiles:
    """Reuse the certificate at ``cert_path`` while it is valid for ``names``, else make a new one."""
    if cert_path.is_file() and key_path.is_file():
        loaded = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _still_good(loaded, names):
            _log_fingerprint(loaded, cert_path, label=label, generated=False)
            return CertFiles(cert_path, key_path)
    cert_pem, key_pem = generate_self_signed(names, f"vox {label}")
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)
    _log_fingerprint(x509.load_pem_x509_certificate(cert_pem), cert_path, label=label, generated=True)
    return CertFiles(cert_path, key_path)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER certificate, colon-separated hex (what clients pin)."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex(":")


def _log_fingerprint(cert: x509.Certificate, path: Path, *, label: str, generated: bool) -> None:
    # Public: clients of a self-signed server pin this.
    fields = {"file": str(path), "sha256": cert.fingerprint(hashes.SHA256()).hex(":"), "generated": generated}
    log.info(f"{label} certificate (self-signed)", extra={"fields": fields})
