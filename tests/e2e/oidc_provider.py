"""A small but real OpenID Connect provider for tests, and a loopback "client callback" listener.

The provider is an HTTP server on 127.0.0.1 port 0 (threads, independent of the test's trio
loop): discovery document, JWKS with an RSA key, an authorize endpoint that checks its inputs and
redirects back with a code, a token endpoint that checks the code, the PKCE verifier and the
client's credentials and issues an RS256 ID token carrying the nonce, and userinfo. Knobs let a
test make it misbehave (a wrong nonce, audience or issuer, a signature by another key, a refusal).

ID tokens are signed with PyJWT, not with the library the server verifies them with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "test-key-1"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": KID,
        "use": "sig",
        "alg": "RS256",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes(3, "big")),
    }


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    code_challenge: str
    user: dict[str, Any]


@dataclass
class Provider:
    client_id: str = "vox-test"
    client_secret: str | None = "s3cret-of-the-client"
    # Claims of whoever "signs in" at the next authorize.
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "user-1", "preferred_username": "alice"})
    # Misbehaviour for the next ID token: {"nonce": ..., "aud": ..., "iss": ..., "exp": ...} overrides
    # claims; "other_key": True signs with a key that is not in the JWKS (same kid).
    tamper: dict[str, Any] = field(default_factory=dict)
    deny: bool = False
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    other_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    grants: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
        }

    # -- endpoints ------------------------------------------------------------------------------
    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        problems = []
        if query.get("response_type") != "code":
            problems.append("response_type")
        if query.get("client_id") != self.client_id:
            problems.append("client_id")
        if query.get("code_challenge_method") != "S256" or len(query.get("code_challenge", "")) != 43:
            problems.append("pkce")
        if "openid" not in query.get("scope", "").split():
            problems.append("scope")
        if not query.get("nonce") or not query.get("state"):
            problems.append("nonce/state")
        redirect = query.get("redirect_uri", "")
        if problems or not redirect:
            self.errors.append("authorize: " + ",".join(problems))
            return 400, {}, b"bad authorize request"
        sep = "&" if "?" in redirect else "?"
        if self.deny:
            params = {"error": "access_denied", "state": query["state"]}
            return 302, {"Location": redirect + sep + urlencode(params)}, b""
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(
            self.client_id, redirect, query["nonce"], query["code_challenge"], dict(self.user)
        )
        return 302, {"Location": redirect + sep + urlencode({"code": code, "state": query["state"]})}, b""

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.startswith("Basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        grant = self.grants.pop(form.get("code", ""), None)  # single use
        problems = []
        if grant is None:
            problems.append("code")
        if client_id != self.client_id:
            problems.append("client_id")
        if self.client_secret is not None and secret != self.client_secret:
            problems.append("client_secret")
        if form.get("grant_type") != "authorization_code":
            problems.append("grant_type")
        verifier = form.get("code_verifier", "")
        if grant is not None and _b64url(hashlib.sha256(verifier.encode()).digest()) != grant.code_challenge:
            problems.append("code_verifier")
        if grant is not None and form.get("redirect_uri") != grant.redirect_uri:
            problems.append("redirect_uri")
        if problems or grant is None:
            self.errors.append("token: " + ",".join(problems))
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": "invalid_grant"}).encode()
        access = secrets.token_urlsafe(24)
        self.tokens[access] = grant.user
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.user["sub"],
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            "at_hash": _b64url(hashlib.sha256(access.encode()).digest()[:16]),
        }
        tamper = dict(self.tamper)
        signer = self.other_key if tamper.pop("other_key", False) else self.key
        claims.update(tamper)
        id_token = jwt.encode(claims, signer, algorithm="RS256", headers={"kid": KID})
        body = {"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": id_token}
        return (
            200,
            {"Content-Type": "application/json", "Cache-Control": "no-store"},
            json.dumps(body).encode(),
        )

    def userinfo(self, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        user = self.tokens.get((authorization or "").removeprefix("Bearer "))
        if user is None:
            return 401, {}, b""
        return 200, {"Content-Type": "application/json"}, json.dumps(user).encode()

    def handle(self, method: str, path: str, body: bytes, headers: Any) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        self.requests.append(f"{method} {parts.path}")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        as_json = {"Content-Type": "application/json"}
        # Served under any prefix, so a test can configure an issuer URL this provider does not claim.
        if method == "GET" and parts.path.endswith("/.well-known/openid-configuration"):
            return 200, as_json, json.dumps(self.discovery()).encode()
        if method == "GET" and parts.path == "/jwks":
            return 200, as_json, json.dumps({"keys": [_jwk(self.key)]}).encode()
        if method == "GET" and parts.path == "/authorize":
            return self.authorize(query)
        if method == "POST" and parts.path == "/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            return self.token(form, headers.get("Authorization"))
        if method == "GET" and parts.path == "/userinfo":
            return self.userinfo(headers.get("Authorization"))
        return 404, {}, b""


class Listener:
    """A loopback HTTP listener on port 0 recording every request it gets (the desktop client's
    TCP callback, or the provider)."""

    def __init__(self, handler: Any) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = outer.handler(method, self.path, body, self.headers)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Receiver:
    """The client's loopback callback: records the query strings it receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.listener = Listener(self._handle)

    def _handle(self, method: str, path: str, body: bytes, headers: Any) -> tuple[int, dict[str, str], bytes]:
        self.received.append({k: v[0] for k, v in parse_qs(urlsplit(path).query).items()})
        return 200, {"Content-Type": "text/plain"}, b"signed in; you can close this window"

    @property
    def url(self) -> str:
        return self.listener.url + "/callback"

    def __enter__(self) -> Receiver:
        self.listener.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.__exit__(*exc)


def serve_provider(provider: Provider) -> Listener:
    listener = Listener(provider.handle)
    provider.server = listener.server
    return listener
