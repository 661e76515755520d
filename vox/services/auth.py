"""Accounts and sessions: registration, login (with MFA), token refresh with reuse detection,
logout, session listing/revocation, and authentication of every request and gateway identify.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import pyotp

from vox.ephemeral import Ephemeral
from vox.errors import Conflict, Forbidden, Unauthorized, ValidationError
from vox.protocol.gateway import encode_event, envelope
from vox.pubsub import Broker
from vox.services.admin_events import publish_admin_event
from vox.services.passwords import Passwords
from vox.services.ratelimit import RateLimiter
from vox.services.secretbox import SecretBox, SecretBoxError
from vox.services.timefmt import iso
from vox.services.tokens import Tokens, hash_refresh, new_refresh_token
from vox.storage.accounts import Accounts, NewUser, RefreshOutcome, RegistrationBlocked
from vox.storage.base import Row

log = logging.getLogger("vox.auth")

MFA_TOKEN_TTL_S = 300.0
MFA_TOKEN_ATTEMPTS = 5
TOTP_STEP_S = 30
MFA_PURPOSE = "mfa_secret"
POLICIES = ("open", "invite_only", "closed")


class RegistrationClosed(Forbidden):
    code = "registration_closed"


class MfaRequired(Unauthorized):
    code = "mfa_required"


class InvalidCredentials(Forbidden):
    """Re-authentication of a signed-in user failed (their token stays valid: not a 401)."""

    code = "invalid_credentials"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class ClientInfo:
    ip: str | None
    user_agent: str | None


class _MfaPending(msgspec.Struct):
    user_id: str
    attempts: int
    ip: str | None
    user_agent: str | None


def session_revoked_event(session_id: str) -> bytes:
    return envelope(encode_event("_session_revoked", {"session_id": session_id}))


class AuthService:
    def __init__(
        self,
        accounts: Accounts,
        tokens: Tokens,
        passwords: Passwords,
        secretbox: SecretBox,
        ephemeral: Ephemeral,
        broker: Broker,
        limiter: RateLimiter,
        *,
        default_policy: str,
        refresh_ttl_s: int,
    ) -> None:
        self.accounts = accounts
        self.tokens = tokens
        self.passwords = passwords
        self.box = secretbox
        self.ephemeral = ephemeral
        self.broker = broker
        self.limiter = limiter
        self.default_policy = default_policy
        self.refresh_ttl_ms = refresh_ttl_s * 1000

    # -- registration -----------------------------------------------------------------------
    async def registration_policy(self) -> str:
        stored = await self.accounts.registration_policy()
        return stored if stored in POLICIES else self.default_policy

    async def register(
        self, username: str, password: str, email: str | None, invite_code: str | None
    ) -> tuple[str, bool, str | None]:
        """Create the account; returns (user_id, is_admin, guild joined through the invite)."""
        policy = await self.registration_policy()
        if policy != "open" and not await self.accounts.any_user():
            # Bootstrap: the first account (who becomes the admin) can always be created.
            policy = "open"
        if policy == "closed":
            raise RegistrationClosed("registration is closed on this server")
        if policy == "invite_only" and not invite_code:
            raise RegistrationClosed("registration needs an invite code on this server")
        if await self.accounts.user_by_username(username) is not None:
            raise Conflict("that username is already taken", field="username")
        password_hash = await self.passwords.hash(password)
        created = await self.accounts.create_user(
            NewUser(username=username, password_hash=password_hash, email=email, invite_code=invite_code)
        )
        if created is RegistrationBlocked.INVITE_INVALID:
            raise ValidationError("invalid invite code", {"invite_code": "unknown, expired or used up"})
        assert not isinstance(created, RegistrationBlocked)
        user, is_admin, guild_id = created
        log.info("user registered", extra={"fields": {"user_id": user["id"], "admin": is_admin}})
        await publish_admin_event(
            self.broker,
            "user_registered",
            actor_id=None,
            target_type="user",
            target_id=str(user["id"]),
            details={"username": user["username"], "via": "password"},
        )
        return str(user["id"]), is_admin, guild_id

    # -- login ------------------------------------------------------------------------------
    async def login(self, username: str, password: str, client: ClientInfo) -> dict[str, Any]:
        subject = username.lower()
        # Refuse outright while this username's failure budget is spent, before hashing anything.
        await self.limiter.peek("login_failures", subject)
        user = await self.accounts.user_by_username(username)
        verified = await self.passwords.verify(user["password_hash"] if user else None, password)
        if user is None or not verified.ok:
            await self.limiter.take("login_failures", subject)
            log.info("login failed", extra={"fields": {"username_known": user is not None}})
            raise Unauthorized("invalid username or password")
        if bool(user["disabled"]):
            raise Forbidden("this account is disabled")
        if verified.new_hash is not None:
            await self.accounts.set_password_hash(user["id"], verified.new_hash)
            log.info("password hash upgraded", extra={"fields": {"user_id": user["id"]}})
        if bool(user["mfa_enabled"]):
            return {"mfa_required": True, "mfa_token": await self._new_mfa_token(user["id"], client)}
        return await self._open_session(user["id"], client)

    async def _new_mfa_token(self, user_id: str, client: ClientInfo) -> str:
        token = secrets.token_urlsafe(32)
        pending = _MfaPending(user_id=user_id, attempts=0, ip=client.ip, user_agent=client.user_agent)
        await self.ephemeral.set(_mfa_key(token), msgspec.json.encode(pending), MFA_TOKEN_TTL_S)
        return token

    async def verify_mfa(self, mfa_token: str, code: str) -> dict[str, Any]:
        key = _mfa_key(mfa_token)
        # getdel makes the token single use even under concurrent attempts; a wrong code puts it
        # back with one attempt fewer.
        raw = await self.ephemeral.getdel(key)
        if raw is None:
            raise Unauthorized("unknown or expired mfa_token")
        pending = msgspec.json.decode(raw, type=_MfaPending)
        await self.limiter.take("mfa", pending.user_id)
        user = await self.accounts.user_by_id(pending.user_id)
        if user is None or bool(user["disabled"]) or not bool(user["mfa_enabled"]):
            raise Unauthorized("unknown or expired mfa_token")
        if not await self._check_totp(user, code):
            if pending.attempts + 1 < MFA_TOKEN_ATTEMPTS:
                pending.attempts += 1
                await self.ephemeral.set(key, msgspec.json.encode(pending), MFA_TOKEN_TTL_S)
            raise Unauthorized("invalid or already used code")
        return await self._open_session(pending.user_id, ClientInfo(pending.ip, pending.user_agent))

    async def open_session(self, user_id: str, client: ClientInfo) -> dict[str, Any]:
        """Tokens for a new session of a user another flow has authenticated (SSO)."""
        return await self._open_session(user_id, client)

    async def _open_session(self, user_id: str, client: ClientInfo) -> dict[str, Any]:
        refresh = new_refresh_token()
        session_id = await self.accounts.create_session(
            user_id, hash_refresh(refresh), client.ip, client.user_agent, self.refresh_ttl_ms
        )
        return self._token_response(user_id, session_id, refresh)

    def _token_response(self, user_id: str, session_id: str, refresh: str) -> dict[str, Any]:
        return {
            "access_token": self.tokens.issue(user_id, session_id),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.tokens.access_ttl_s,
            "user_id": user_id,
        }

    # -- refresh / logout / sessions --------------------------------------------------------
    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        new = new_refresh_token()
        result = await self.accounts.rotate_refresh(
            hash_refresh(refresh_token), hash_refresh(new), self.refresh_ttl_ms
        )
        if result.outcome is RefreshOutcome.REUSED:
            assert result.session_id is not None and result.user_id is not None
            log.warning(
                "refresh token reuse: session revoked",
                extra={"fields": {"user_id": result.user_id, "session_id": result.session_id}},
            )
            await self._announce_revoked(result.user_id, result.session_id)
            raise Unauthorized("refresh token already used; the session has been revoked")
        if result.outcome is not RefreshOutcome.ROTATED:
            raise Unauthorized("unknown, expired or revoked refresh token")
        assert result.user_id is not None and result.session_id is not None
        user = await self.accounts.user_by_id(result.user_id)
        if user is None or bool(user["disabled"]):
            raise Forbidden("this account is disabled")
        return self._token_response(result.user_id, result.session_id, new)

    async def revoke(self, identity: Identity, session_id: str) -> bool:
        revoked = await self.accounts.revoke_session(session_id, identity.user_id)
        if revoked:
            await self._announce_revoked(identity.user_id, session_id)
        return revoked

    async def _announce_revoked(self, user_id: str, session_id: str) -> None:
        await self.broker.publish(f"user:{user_id}", session_revoked_event(session_id))

    async def sessions(self, identity: Identity) -> list[dict[str, Any]]:
        rows = await self.accounts.list_sessions(identity.user_id)
        return [
            {
                "id": r["id"],
                "created_at": iso(r["created_at"]),
                "last_used_at": iso(r["last_used_at"]),
                "ip": r["ip"],
                "user_agent": r["user_agent"],
                "current": r["id"] == identity.session_id,
            }
            for r in rows
        ]

    # -- authentication ---------------------------------------------------------------------
    async def authenticate(self, token: str) -> Identity:
        """The identity behind an access token; 401 unless the token and its session are live."""
        claims = self.tokens.verify(token)
        state = await self.accounts.session_state(claims.session_id)
        if state is None or state["user_id"] != claims.user_id:
            raise Unauthorized("session not found")
        if state["revoked_at"] is not None:
            raise Unauthorized("session revoked")
        if state["expires_at"] <= int(time.time() * 1000):
            raise Unauthorized("session expired")
        if bool(state["disabled"]):
            raise Unauthorized("account disabled")
        return Identity(user_id=claims.user_id, session_id=claims.session_id)

    async def reauthenticate(self, user_id: str, password: str, code: str | None) -> None:
        """Confirm a signed-in user's password, and their TOTP code when MFA is on (sudo-style,
        before elevated actions). Failures spend the same budgets as logins and MFA checks."""
        user = await self.accounts.user_by_id(user_id)
        if user is None:
            raise Unauthorized("user not found")
        subject = str(user["username"]).lower()
        await self.limiter.peek("login_failures", subject)
        verified = await self.passwords.verify(user["password_hash"], password)
        if not verified.ok:
            await self.limiter.take("login_failures", subject)
            raise InvalidCredentials("wrong password")
        if bool(user["mfa_enabled"]):
            if code is None:
                raise MfaRequired("this account has MFA enabled: send code as well")
            await self.limiter.take("mfa", user_id)
            if not await self._check_totp(user, code):
                raise InvalidCredentials("invalid or already used code")

    # -- MFA management ---------------------------------------------------------------------
    async def mfa_setup(self, identity: Identity) -> dict[str, str]:
        user = await self._user(identity)
        if bool(user["mfa_enabled"]):
            raise Conflict("MFA is already enabled; disable it first")
        secret = pyotp.random_base32()
        await self.accounts.set_mfa_secret(
            identity.user_id, self.box.seal(secret.encode(), MFA_PURPOSE), False
        )
        uri = pyotp.TOTP(secret).provisioning_uri(name=user["username"], issuer_name="Vox")
        return {"secret": secret, "otpauth_uri": uri}

    async def mfa_enable(self, identity: Identity, code: str) -> None:
        await self.limiter.take("mfa", identity.user_id)
        user = await self._user(identity)
        if bool(user["mfa_enabled"]):
            raise Conflict("MFA is already enabled")
        if user["mfa_secret_enc"] is None:
            raise Conflict("call /auth/mfa/setup first")
        if not await self._check_totp(user, code, enable=True):
            raise ValidationError("invalid code", {"code": "invalid or already used"})
        log.info("mfa enabled", extra={"fields": {"user_id": identity.user_id}})

    async def mfa_disable(self, identity: Identity, code: str) -> None:
        await self.limiter.take("mfa", identity.user_id)
        user = await self._user(identity)
        if not bool(user["mfa_enabled"]):
            raise Conflict("MFA is not enabled")
        if not await self._check_totp(user, code):
            raise ValidationError("invalid code", {"code": "invalid or already used"})
        await self.accounts.set_mfa_secret(identity.user_id, None, False)
        log.info("mfa disabled", extra={"fields": {"user_id": identity.user_id}})

    async def _user(self, identity: Identity) -> Row:
        user = await self.accounts.user_by_id(identity.user_id)
        if user is None:
            raise Unauthorized("user not found")
        return user

    async def _check_totp(self, user: Row, code: str, *, enable: bool = False) -> bool:
        """Accept a code of the current step or one step either side, each step only once."""
        if user["mfa_secret_enc"] is None or not (len(code) == 6 and code.isdigit()):
            return False
        try:
            secret = self.box.open(user["mfa_secret_enc"], MFA_PURPOSE).decode()
        except SecretBoxError:
            log.error(
                "mfa secret cannot be decrypted (server_secret changed?)",
                extra={"fields": {"user_id": user["id"]}},
            )
            return False
        totp = pyotp.TOTP(secret)
        now_step = int(time.time()) // TOTP_STEP_S
        for step in (now_step - 1, now_step, now_step + 1):
            if hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
                return await self.accounts.accept_mfa_step(user["id"], step, enable=enable)
        return False


def _mfa_key(token: str) -> str:
    return "mfa:" + hashlib.sha256(token.encode()).hexdigest()
