"""Access tokens (JWT, EdDSA by default, RS256 selectable) and opaque refresh tokens.

Verifying an Ed25519 signature costs ~0.2 ms, so a verified token's claims are cached until the
token expires (bounded LRU owned by this object); revocation is checked separately, per request,
against the session (``sid``), so the cache never keeps a revoked session alive.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from vox.errors import Unauthorized

ACCESS_TTL_S = 15 * 60
REFRESH_BYTES = 32
_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    session_id: str
    issued_at: int
    expires_at: int
    jti: str


class TokenExpired(Unauthorized):
    code = "token_expired"


def hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_BYTES)


class Tokens:
    def __init__(
        self,
        private_key: Ed25519PrivateKey | RSAPrivateKey,
        *,
        algorithm: str = "EdDSA",
        access_ttl_s: int = ACCESS_TTL_S,
    ) -> None:
        self._private = private_key
        self._public = private_key.public_key()
        self.algorithm = algorithm
        self.access_ttl_s = access_ttl_s
        self._cache: OrderedDict[str, AccessClaims] = OrderedDict()

    def issue(self, user_id: str, session_id: str, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": user_id,
            "sid": session_id,
            "iat": iat,
            "exp": iat + self.access_ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._private, algorithm=self.algorithm)

    def verify(self, token: str, now: float | None = None) -> AccessClaims:
        """Claims of a valid token, or Unauthorized / TokenExpired."""
        current = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at <= current:
                self._cache.pop(token, None)
                raise TokenExpired("access token expired")
            self._cache.move_to_end(token)
            return cached
        if len(token) > 4096:
            raise Unauthorized("malformed access token")
        try:
            raw = jwt.decode(
                token,
                self._public,
                algorithms=[self.algorithm],
                options={"require": ["sub", "sid", "iat", "exp", "jti"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid access token") from None
        try:
            claims = AccessClaims(
                user_id=str(raw["sub"]),
                session_id=str(raw["sid"]),
                issued_at=int(raw["iat"]),
                expires_at=int(raw["exp"]),
                jti=str(raw["jti"]),
            )
        except (TypeError, ValueError):
            raise Unauthorized("invalid access token claims") from None
        if claims.expires_at <= current:
            raise TokenExpired("access token expired")
        self._cache[token] = claims
        if len(self._cache) > _CACHE_MAX:
            self._cache.popitem(last=False)
        return claims
