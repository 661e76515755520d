"""Single sign-on with OpenID Connect (protocol.md section 2, "SSO (OIDC)").

The flow: ``authorize`` makes a PKCE (S256) verifier, a 32-byte ``state`` and a ``nonce``, seals
them (AES-256-GCM, the purpose bound to the state's hash) into the Ephemeral store for
``flow_ttl_s`` under ``oidc:state:{sha256(state)}`` and sends the browser to the provider.
``callback`` takes the sealed flow back with GETDEL (single use, also across daemons on Redis),
exchanges the code, validates the ID token (JWKS signature, iss, aud, exp, nonce, at_hash),
reads userinfo, resolves the account by ``{slug}:{sub}`` (creating it when new) and returns the
client's loopback ``redirect_uri`` with the tokens in its query.

Protocol work is done by libraries: authlib builds the authorization URL, the PKCE challenge
and the token request with its client authentication; joserfc (authlib's JOSE layer) verifies the
ID token's signature against the provider's JWKS; authlib's ``CodeIDToken`` checks its claims.
HTTP goes through httpx's async client, which runs natively on trio (through anyio): a deadline
cancels a request to a slow provider outright, where a blocking client in a worker thread would
keep the thread until its socket timeout. (authlib's own httpx client classes are not used: they
are deprecated in favour of a client Vox does not depend on.)

Nothing secret is logged: not the client secret, the code, the state, the nonce nor any token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import msgspec
import trio
from authlib.common.security import generate_token
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from vox.ephemeral import Ephemeral
from vox.errors import APIError, IntegrityError, NotFound, ValidationError
from vox.pubsub import Broker
from vox.services.admin_events import publish_admin_event
from vox.services.auth import AuthService, ClientInfo
from vox.services.secretbox import SecretBox, SecretBoxError
from vox.services.timefmt import iso
from vox.storage.base import Row
from vox.storage.oidc import NewOidcUser, OidcStore

__all__ = [
    "ASYMMETRIC_ALGS",
    "CLIENT_SECRET_PURPOSE",
    "OidcService",
    "OidcStateInvalid",
    "ProviderUnavailable",
    "redirect_allowed",
    "username_candidates",
]

log = logging.getLogger("vox.oidc")

CLIENT_SECRET_PURPOSE = "oidc_client_secret"  # noqa: S105 (an AAD label, not a secret)
FLOW_PURPOSE = "oidc_flow:"
# Only public-key signatures: an HMAC-signed ID token would be keyed with the client secret,
# and "none" is never acceptable.
ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
STATE_BYTES = 32
NONCE_BYTES = 32
# RFC 7636: 43..128 characters; 64 random ones from authlib's unreserved alphabet.
VERIFIER_CHARS = 64
MAX_STATE = 256
MAX_CODE = 2048
MAX_REDIRECT_URI = 2048
# Everything a provider sends (discovery, JWKS, token and userinfo answers) is small; a larger
# answer is refused rather than read into memory.
MAX_RESPONSE_BYTES = 512 * 1024
METADATA_TTL_S = 3600.0
METADATA_CACHE_MAX = 64
CLOCK_LEEWAY_S = 60
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{2,32}$")


class OidcStateInvalid(APIError):
    """The callback's state is unknown, expired, already used or was tampered with: there is no
    redirect_uri to send the browser back to, so this is answered as JSON."""

    status = 400
    code = "oidc_state_invalid"


class ProviderUnavailable(APIError):
    """The provider's discovery document could not be fetched or is unusable (authorize)."""

    status = 502
    code = "oidc_provider_unavailable"


class _FlowFailed(Exception):
    """A failure after the state was accepted: reported to the client's redirect_uri."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Flow(msgspec.Struct, frozen=True):
    provider_id: str
    slug: str
    redirect_uri: str
    callback_url: str
    code_verifier: str
    nonce: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class _Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: tuple[str, ...]
    auth_methods: tuple[str, ...]
    expires_at: float


def _is_loopback_host(host: str | None) -> bool:
    return host in {"127.0.0.1", "::1"}


def url_allowed_for_provider(url: str) -> bool:
    """Provider URLs must be https; plain http only on loopback (a provider on the same host,
    development and tests)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return not parts.username and not parts.password
    return parts.scheme == "http" and _is_loopback_host(parts.hostname) and not parts.username


def redirect_allowed(uri: str, configured: frozenset[str]) -> bool:
    """Only a loopback ``http://127.0.0.1:{port}/...`` (or ``[::1]``) URI or one of the configured
    ones: the browser is sent there with tokens, so anything else would be an open redirect."""
    if not 0 < len(uri) <= MAX_REDIRECT_URI or not uri.isascii() or not uri.isprintable() or " " in uri:
        return False
    if uri in configured:
        return True
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "http" or port is None or parts.fragment or "\\" in uri:
        return False
    # The netloc must be exactly the literal address and port: no userinfo ("127.0.0.1@evil"),
    # no host names (localhost can resolve elsewhere; RFC 8252 section 8.3).
    return parts.netloc in {f"127.0.0.1:{port}", f"[::1]:{port}"}


def username_candidates(claims: dict[str, Any]) -> tuple[str, ...]:
    """Usernames to try, best first: from preferred_username, nickname, name or the email's local
    part (folded to ASCII and the allowed characters), then the same with a number, then with a
    random suffix, so a free one is always among them."""
    base = "user"
    for key in ("preferred_username", "nickname", "name", "email"):
        raw = claims.get(key)
        if not isinstance(raw, str):
            continue
        if key == "email":
            raw = raw.partition("@")[0]
        folded = unicodedata.normalize("NFKD", raw[:256]).encode("ascii", "ignore").decode()
        cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "", folded.replace(" ", "_")).strip("._-")[:32]
        if len(cleaned) >= 2:
            base = cleaned
            break
    names = [base]
    names += [f"{base[: 32 - len(str(n))]}{n}" for n in range(2, 10)]
    names += [f"{base[:24]}_{secrets.token_hex(3)}" for _ in range(3)]
    return tuple(n for n in names if USERNAME_RE.match(n))


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > MAX_RESPONSE_BYTES:
                raise httpx.DecodingError("response from the identity provider is too large")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CappedTransport(httpx.AsyncBaseTransport):
    """Bounds every answer from a provider, including the ones authlib reads itself."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
            await response.aclose()
            raise httpx.DecodingError("response from the identity provider is too large")
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def provider_object(row: Row) -> dict[str, Any]:
    """The admin view of a provider: never the client secret, only whether one is set."""
    return {
        "id": row["id"],
        "slug": row["slug"],
        "display_name": row["display_name"],
        "icon_hint": row["icon_hint"],
        "issuer_url": row["issuer_url"],
        "client_id": row["client_id"],
        "has_client_secret": row["client_secret_enc"] is not None,
        "scopes": row["scopes"],
        "enabled": bool(row["enabled"]),
        "created_at": iso(row["created_at"]),
    }


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _state_key(state: str) -> str:
    return "oidc:state:" + hashlib.sha256(state.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class OidcService:
    def __init__(
        self,
        store: OidcStore,
        auth: AuthService,
        secretbox: SecretBox,
        ephemeral: Ephemeral,
        broker: Broker,
        *,
        flow_ttl_s: float,
        allowed_redirects: frozenset[str],
        http_timeout_s: float,
    ) -> None:
        self.store = store
        self.auth = auth
        self.box = secretbox
        self.ephemeral = ephemeral
        self.broker = broker
        self.flow_ttl_s = flow_ttl_s
        self.allowed_redirects = allowed_redirects
        self.http_timeout_s = http_timeout_s
        # Discovery documents and JWKS by issuer: per service object (a daemon), never global.
        self._metadata: dict[str, _Metadata] = {}
        self._jwks: dict[str, dict[str, Any]] = {}

    # -- the public list ----------------------------------------------------------------------
    async def public_providers(self) -> list[dict[str, Any]]:
        return [
            {"slug": p["slug"], "display_name": p["display_name"], "icon_hint": p["icon_hint"]}
            for p in await self.store.providers(enabled_only=True)
        ]

    # -- administration (callers have checked system admin and elevation) ---------------------
    async def admin_providers(self) -> list[dict[str, Any]]:
        return [provider_object(p) for p in await self.store.providers(enabled_only=False)]

    async def create_provider(self, actor_id: str, values: dict[str, Any], ip: str | None) -> dict[str, Any]:
        row = await self.store.create_provider(actor_id, self._checked(values), ip)
        await self._announce("oidc_provider_created", actor_id, row)
        return provider_object(row)

    async def update_provider(
        self, actor_id: str, key: str, changes: dict[str, Any], ip: str | None
    ) -> dict[str, Any]:
        current = await self.store.provider(key) if 0 < len(key) <= 36 else None
        if current is None:
            raise NotFound("no such provider")
        row = await self.store.update_provider(actor_id, current["id"], self._checked(changes), ip)
        if row is None:
            raise NotFound("no such provider")
        await self._announce("oidc_provider_updated", actor_id, row)
        return provider_object(row)

    async def delete_provider(self, actor_id: str, key: str, ip: str | None) -> None:
        current = await self.store.provider(key) if 0 < len(key) <= 36 else None
        row = None if current is None else await self.store.delete_provider(actor_id, current["id"], ip)
        if row is None:
            raise NotFound("no such provider")
        await self._announce("oidc_provider_deleted", actor_id, row)

    def _checked(self, values: dict[str, Any]) -> dict[str, Any]:
        """Semantic checks the body schema cannot express; seals the client secret."""
        out = dict(values)
        issuer = out.get("issuer_url")
        if issuer is not None:
            parts = urlsplit(issuer)
            if not url_allowed_for_provider(issuer) or parts.query or parts.fragment:
                raise ValidationError(
                    "issuer_url must be an https URL (http only on 127.0.0.1 or [::1]) without query",
                    {"issuer_url": "not an allowed issuer URL"},
                )
        scopes = out.get("scopes")
        if scopes is not None and "openid" not in scopes.split():
            raise ValidationError("scopes must include openid", {"scopes": "must include openid"})
        if "client_secret" in out:
            secret = out.pop("client_secret")
            out["client_secret_enc"] = (
                None if secret is None else self.box.seal(secret.encode(), CLIENT_SECRET_PURPOSE)
            )
        return out

    async def _announce(self, kind: str, actor_id: str, row: Row) -> None:
        await publish_admin_event(
            self.broker,
            kind,
            actor_id=actor_id,
            target_type="oidc_provider",
            target_id=str(row["id"]),
            details={"slug": row["slug"], "enabled": bool(row["enabled"])},
        )

    # -- authorize --------------------------------------------------------------------------
    async def authorize(self, slug: str, redirect_uri: str, callback_url: str) -> str:
        """The provider's authorization URL for a new flow; the flow state is stored sealed."""
        if not redirect_allowed(redirect_uri, self.allowed_redirects):
            raise ValidationError(
                "redirect_uri must be a loopback http://127.0.0.1:PORT/... URI or a configured one",
                {"redirect_uri": "not allowed"},
            )
        provider = await self.store.provider(slug) if 0 < len(slug) <= 32 else None
        if provider is None or not bool(provider["enabled"]) or provider["slug"] != slug:
            raise NotFound("no such enabled provider")
        try:
            meta = await self._discover(provider["issuer_url"])
        except _FlowFailed as exc:
            raise ProviderUnavailable(exc.message) from None
        state = secrets.token_urlsafe(STATE_BYTES)
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        verifier = generate_token(VERIFIER_CHARS)
        flow = _Flow(
            provider_id=provider["id"],
            slug=slug,
            redirect_uri=redirect_uri,
            callback_url=callback_url,
            code_verifier=verifier,
            nonce=nonce,
            created_ms=_now_ms(),
        )
        key = _state_key(state)
        sealed = self.box.seal(msgspec.json.encode(flow), FLOW_PURPOSE + key)
        await self.ephemeral.set(key, sealed.encode(), self.flow_ttl_s)
        url = prepare_grant_uri(
            meta.authorization_endpoint,
            client_id=provider["client_id"],
            response_type="code",
            redirect_uri=callback_url,
            scope=provider["scopes"],
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        log.info("oidc flow started", extra={"fields": {"provider": slug}})
        return str(url)

    # -- callback ---------------------------------------------------------------------------
    async def callback(self, state: str, code: str | None, error: str | None, client: ClientInfo) -> str:
        """The URL to send the browser to: the client's redirect_uri with tokens, or with
        ``error`` and ``error_description``. Raises OidcStateInvalid when the state is bad."""
        if not 0 < len(state) <= MAX_STATE:
            raise OidcStateInvalid("missing or malformed state")
        key = _state_key(state)
        raw = await self.ephemeral.getdel(key)
        if raw is None:
            raise OidcStateInvalid("unknown, expired or already used state")
        try:
            flow = msgspec.json.decode(self.box.open(raw.decode(), FLOW_PURPOSE + key), type=_Flow)
        except (SecretBoxError, msgspec.DecodeError, UnicodeDecodeError):
            log.warning("oidc flow state failed authentication")
            raise OidcStateInvalid("unknown, expired or already used state") from None
        if _now_ms() - flow.created_ms > self.flow_ttl_s * 1000:
            raise OidcStateInvalid("unknown, expired or already used state")
        try:
            if error is not None:
                raise _FlowFailed("access_denied", "the identity provider refused the sign-in")
            if not code or len(code) > MAX_CODE:
                raise _FlowFailed("oidc_failed", "the identity provider sent no code")
            tokens = await self._complete(flow, code, client)
        except _FlowFailed as exc:
            log.info("oidc sign-in failed", extra={"fields": {"provider": flow.slug, "reason": exc.code}})
            return _with_query(flow.redirect_uri, {"error": exc.code, "error_description": exc.message})
        return _with_query(
            flow.redirect_uri,
            {
                "access_token": tokens["access_token"],
                "refresh_token": tokens["refresh_token"],
                "token_type": "Bearer",
                "expires_in": str(tokens["expires_in"]),
                "user_id": tokens["user_id"],
            },
        )

    async def _complete(self, flow: _Flow, code: str, client: ClientInfo) -> dict[str, Any]:
        provider = await self.store.provider(flow.provider_id)
        if provider is None or not bool(provider["enabled"]):
            raise _FlowFailed("oidc_provider_disabled", "this provider is no longer enabled")
        meta = await self._discover(provider["issuer_url"])
        secret = self._client_secret(provider)
        token = await self._exchange(meta, provider["client_id"], secret, code, flow)
        claims = await self._validate_id_token(meta, provider["client_id"], token, flow.nonce)
        info = await self._userinfo(meta, str(token["access_token"]), claims)
        external_id = f"{flow.slug}:{claims['sub']}"
        user_id = await self._resolve_user(external_id, flow.slug, {**info, **claims, "sub": claims["sub"]})
        log.info("oidc sign-in", extra={"fields": {"provider": flow.slug, "user_id": user_id}})
        return await self.auth.open_session(user_id, client)

    def _client_secret(self, provider: dict[str, Any]) -> str | None:
        sealed = provider["client_secret_enc"]
        if sealed is None:
            return None
        try:
            return self.box.open(sealed, CLIENT_SECRET_PURPOSE).decode()
        except SecretBoxError:
            log.error(
                "oidc client secret cannot be decrypted (server_secret changed?)",
                extra={"fields": {"provider": provider["slug"]}},
            )
            raise _FlowFailed("oidc_provider_unavailable", "the provider is misconfigured") from None

    # -- provider I/O -------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=_CappedTransport(), timeout=self.http_timeout_s, follow_redirects=False
        )

    async def _get_json(self, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        if not url_allowed_for_provider(url):
            raise _FlowFailed("oidc_provider_unavailable", "the provider published an unusable URL")
        try:
            with trio.fail_after(self.http_timeout_s * 2):
                async with self._http() as http:
                    response = await http.get(url, headers={"Accept": "application/json", **(headers or {})})
            if response.status_code != 200:
                raise _FlowFailed("oidc_provider_unavailable", "the provider answered with an error")
            data = msgspec.json.decode(response.content)
        except (httpx.HTTPError, msgspec.DecodeError, trio.TooSlowError):
            raise _FlowFailed("oidc_provider_unavailable", "the provider could not be reached") from None
        if not isinstance(data, dict):
            raise _FlowFailed("oidc_provider_unavailable", "the provider answered with something unexpected")
        return data

    async def _discover(self, issuer_url: str) -> _Metadata:
        cached = self._metadata.get(issuer_url)
        if cached is not None and cached.expires_at > trio.current_time():
            return cached
        doc = await self._get_json(issuer_url.rstrip("/") + "/.well-known/openid-configuration")
        issuer = doc.get("issuer")
        # OpenID Connect Discovery 1.0, section 4.3: the document must be for this issuer.
        if not isinstance(issuer, str) or issuer.rstrip("/") != issuer_url.rstrip("/"):
            raise _FlowFailed("oidc_provider_unavailable", "the discovery document names another issuer")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not url_allowed_for_provider(value):
                raise _FlowFailed("oidc_provider_unavailable", f"the discovery document has no usable {name}")
            endpoints[name] = value
        userinfo = doc.get("userinfo_endpoint")
        algs = doc.get("id_token_signing_alg_values_supported")
        methods = doc.get("token_endpoint_auth_methods_supported")
        meta = _Metadata(
            issuer=issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            userinfo_endpoint=userinfo
            if isinstance(userinfo, str) and url_allowed_for_provider(userinfo)
            else None,
            algorithms=tuple(
                a for a in (algs if isinstance(algs, list) else ["RS256"]) if a in ASYMMETRIC_ALGS
            ),
            auth_methods=tuple(
                m for m in (methods if isinstance(methods, list) else []) if isinstance(m, str)
            ),
            expires_at=trio.current_time() + METADATA_TTL_S,
        )
        if len(self._metadata) >= METADATA_CACHE_MAX:
            self._metadata.clear()
            self._jwks.clear()
        self._metadata[issuer_url] = meta
        return meta

    async def _exchange(
        self, meta: _Metadata, client_id: str, secret: str | None, code: str, flow: _Flow
    ) -> dict[str, Any]:
        if secret is None:
            method = "none"
        elif not meta.auth_methods or "client_secret_basic" in meta.auth_methods:
            method = "client_secret_basic"
        else:
            method = "client_secret_post"
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=flow.callback_url,
            code_verifier=flow.code_verifier,
        )
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        _, headers, body = ClientAuth(client_id, secret, method).prepare(
            "POST", meta.token_endpoint, headers, body
        )
        try:
            with trio.fail_after(self.http_timeout_s * 2):
                async with self._http() as http:
                    response = await http.post(meta.token_endpoint, content=body.encode(), headers=headers)
            token = msgspec.json.decode(response.content)
        except (httpx.HTTPError, msgspec.DecodeError, trio.TooSlowError):
            raise _FlowFailed("oidc_provider_unavailable", "the provider's token endpoint failed") from None
        if not isinstance(token, dict) or response.status_code != 200 or "error" in token:
            # RFC 6749 section 5.2: invalid_grant and friends (the code was used or expired).
            raise _FlowFailed("oidc_failed", "the provider refused the authorization code")
        if not isinstance(token.get("id_token"), str) or not isinstance(token.get("access_token"), str):
            raise _FlowFailed("oidc_token_invalid", "the provider returned no ID token")
        return token

    async def _keyset(self, meta: _Metadata, *, refresh: bool) -> KeySet:
        jwks = None if refresh else self._jwks.get(meta.jwks_uri)
        if jwks is None:
            jwks = await self._get_json(meta.jwks_uri)
            self._jwks[meta.jwks_uri] = jwks
        try:
            return KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise _FlowFailed("oidc_provider_unavailable", "the provider's JWKS is unusable") from None

    async def _validate_id_token(
        self, meta: _Metadata, client_id: str, token: dict[str, Any], nonce: str
    ) -> dict[str, Any]:
        raw = token["id_token"]
        algorithms = list(meta.algorithms) or ["RS256"]
        decoded = None
        for refresh in (False, True):
            # A key the cached set does not know may be a rotation: fetch the set once more.
            keys = await self._keyset(meta, refresh=refresh)
            try:
                decoded = jwt.decode(raw, keys, algorithms=algorithms)
                break
            except JoseError as exc:
                if refresh or exc.error not in {"invalid_key_id", "bad_signature"}:
                    log.info("oidc id token rejected", extra={"fields": {"reason": exc.error}})
                    raise _FlowFailed("oidc_token_invalid", "the ID token failed verification") from None
            except (ValueError, TypeError):
                raise _FlowFailed("oidc_token_invalid", "the ID token is malformed") from None
        assert decoded is not None
        # authlib compares the nonce too; this comparison is the constant-time one.
        got = decoded.claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            log.info("oidc id token rejected", extra={"fields": {"reason": "nonce"}})
            raise _FlowFailed("oidc_token_invalid", "the ID token failed verification")
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {
                "iss": {"essential": True, "value": meta.issuer},
                "aud": {"essential": True, "value": client_id},
            },
            {"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]},
        )
        try:
            claims.validate(now=int(time.time()), leeway=CLOCK_LEEWAY_S)
        except JoseError as exc:
            log.info("oidc id token rejected", extra={"fields": {"reason": exc.error}})
            raise _FlowFailed("oidc_token_invalid", "the ID token failed verification") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 255:
            raise _FlowFailed("oidc_token_invalid", "the ID token has no usable subject")
        return dict(claims)

    async def _userinfo(self, meta: _Metadata, access_token: str, claims: dict[str, Any]) -> dict[str, Any]:
        if meta.userinfo_endpoint is None:
            return {}
        info = await self._get_json(meta.userinfo_endpoint, {"Authorization": f"Bearer {access_token}"})
        # OpenID Connect Core 1.0, section 5.3.2: a userinfo answer for another subject is ignored.
        if info.get("sub") != claims["sub"]:
            log.warning("oidc userinfo subject mismatch: ignored")
            return {}
        return info

    # -- accounts ---------------------------------------------------------------------------
    async def _resolve_user(self, external_id: str, slug: str, claims: dict[str, Any]) -> str:
        for _ in range(3):
            user = await self.store.user_by_external_id(external_id)
            if user is not None:
                if bool(user["disabled"]):
                    raise _FlowFailed("account_disabled", "this account is disabled")
                return str(user["id"])
            email = claims.get("email")
            verified = claims.get("email_verified") is True
            display = claims.get("name")
            new = NewOidcUser(
                external_id=external_id,
                usernames=username_candidates(claims),
                display_name=display[:64] if isinstance(display, str) and display.strip() else None,
                email=email if verified and isinstance(email, str) and 3 <= len(email) <= 254 else None,
            )
            try:
                created = await self.store.create_user(new)
            except IntegrityError:
                continue  # a concurrent sign-in created it (or took the name): look again
            if created is None:
                continue
            row, is_admin = created
            log.info(
                "user registered", extra={"fields": {"user_id": row["id"], "admin": is_admin, "via": slug}}
            )
            await publish_admin_event(
                self.broker,
                "user_registered",
                actor_id=None,
                target_type="user",
                target_id=str(row["id"]),
                details={"username": row["username"], "via": "oidc", "provider": slug},
            )
            return str(row["id"])
        raise _FlowFailed("oidc_failed", "no account could be created for this sign-in")
