"""AES-256-GCM for secrets at rest (MFA seeds, OIDC client secrets, OIDC flow state).

Each value is sealed with a fresh 96-bit nonce and a *purpose* bound in as associated data, so a
ciphertext made for one column cannot be replayed into another. Format: ``v1.`` + urlsafe base64
of nonce || ciphertext+tag.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vox.errors import VoxError

_PREFIX = "v1."
_NONCE = 12


class SecretBoxError(VoxError):
    """A sealed value could not be opened: wrong key, wrong purpose, or tampered."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("SecretBox needs a 32-byte key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<redacted>)"

    def seal(self, plaintext: bytes, purpose: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext, purpose.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str, purpose: str) -> bytes:
        if not token.startswith(_PREFIX):
            raise SecretBoxError("unknown sealed format")
        try:
            raw = base64.urlsafe_b64decode(token[len(_PREFIX) :])
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], purpose.encode())
        except (InvalidTag, ValueError) as exc:
            raise SecretBoxError("sealed value failed authentication") from exc
