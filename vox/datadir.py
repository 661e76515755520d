"""The data directory: created 0700 on first start, holding the generated server keys.

Keys are generated once and then only read: the Ed25519 key that signs access tokens
(``keys/jwt_ed25519.pem``, or ``keys/jwt_rs256.pem`` when RS256 is configured), the
32-byte server secret that encrypts secrets at rest with AES-256-GCM (``keys/server_secret``),
and the Ed25519 key that signs server-to-server federation requests and vouchers
(``keys/federation_ed25519.pem``, published to peers). All files are 0600. Losing them logs every
user out, makes stored MFA/OIDC secrets unreadable and changes the server's federation identity,
so operators back them up with the database.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from vox.errors import ConfigError

log = logging.getLogger("vox.datadir")

SERVER_SECRET_BYTES = 32


@dataclass(frozen=True)
class ServerKeys:
    jwt_private_key: Ed25519PrivateKey | RSAPrivateKey
    server_secret: bytes
    # Signs federation requests and vouchers; every daemon of one community must share it.
    federation_key: Ed25519PrivateKey

    def __repr__(self) -> str:  # keys must never reach a log line through a repr
        return "ServerKeys(<redacted>)"


def _ensure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    # O_EXCL: two daemons racing on one data dir must not overwrite each other's fresh key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pem(key: Ed25519PrivateKey | RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def prepare(data_dir: Path, jwt_algorithm: str = "EdDSA") -> ServerKeys:
    """Create the directory layout if missing and load (or generate) the server keys.

    Blocking file I/O: call it from a worker thread.
    """
    try:
        _ensure_dir(data_dir)
        keys_dir = data_dir / "keys"
        _ensure_dir(keys_dir)
        _ensure_dir(data_dir / "blobs")
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot create {str(data_dir)!r}: {exc.strerror}") from None

    rs256 = jwt_algorithm == "RS256"
    jwt_path = keys_dir / ("jwt_rs256.pem" if rs256 else "jwt_ed25519.pem")
    secret_path = keys_dir / "server_secret"
    federation_path = keys_dir / "federation_ed25519.pem"

    def make_jwt_key() -> bytes:
        if rs256:
            return _pem(rsa.generate_private_key(public_exponent=65537, key_size=3072))
        return _pem(Ed25519PrivateKey.generate())

    def make_secret() -> bytes:
        return secrets.token_bytes(SERVER_SECRET_BYTES)

    def make_federation_key() -> bytes:
        return _pem(Ed25519PrivateKey.generate())

    for path, make in (
        (jwt_path, make_jwt_key),
        (secret_path, make_secret),
        (federation_path, make_federation_key),
    ):
        if not path.exists():
            try:
                _write_private(path, make())
                log.info("generated key file=%s", path)
            except FileExistsError:
                pass
    key = serialization.load_pem_private_key(jwt_path.read_bytes(), password=None)
    expected = RSAPrivateKey if rs256 else Ed25519PrivateKey
    if not isinstance(key, expected):
        raise ConfigError("data_dir", f"{jwt_path} is not an {expected.__name__}")
    secret = secret_path.read_bytes()
    if len(secret) != SERVER_SECRET_BYTES:
        raise ConfigError("data_dir", f"{secret_path} must hold exactly {SERVER_SECRET_BYTES} bytes")
    federation_key = serialization.load_pem_private_key(federation_path.read_bytes(), password=None)
    if not isinstance(federation_key, Ed25519PrivateKey):
        raise ConfigError("data_dir", f"{federation_path} is not an Ed25519PrivateKey")
    return ServerKeys(jwt_private_key=key, server_secret=secret, federation_key=federation_key)
