"""Rate limits: token buckets per user (per IP when unauthenticated) and route class.

Buckets live in the Ephemeral store, so they are per daemon in memory and shared by every daemon
when Redis is configured. Limits are configurable (``rate_limits`` in the config, e.g.
``"auth=20/60,api=300/60"``: at most N requests per S seconds, refilled continuously).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from vox.ephemeral import BucketResult, Ephemeral
from vox.errors import ConfigError, RateLimited


@dataclass(frozen=True, slots=True)
class Limit:
    burst: int
    per_s: float

    @property
    def rate_per_s(self) -> float:
        return self.burst / self.per_s


DEFAULT_LIMITS: dict[str, Limit] = {
    # register, login, refresh, mfa verify: per IP
    "auth": Limit(30, 60.0),
    # failed logins for one username (credential stuffing), whoever tries them
    "login_failures": Limit(10, 300.0),
    # MFA codes tried for one account
    "mfa": Limit(10, 300.0),
    # every other authenticated REST route: per user
    "api": Limit(600, 60.0),
    # gateway identify/resume: per IP
    "gateway_identify": Limit(60, 60.0),
    # gateway typing notices: per user
    "typing": Limit(30, 10.0),
    # gateway set_status / set_activity: per user
    "presence": Limit(20, 60.0),
    # POST /keys/claim (one-time keys are a finite resource of their owner): per claimer
    "key_claim": Limit(60, 60.0),
    # gateway mls_relay (each one fans out to a channel's members): per sender
    "mls_relay": Limit(120, 60.0),
    # gateway voice_join and voice_screen_share_start (each builds or renegotiates peers): per user
    "voice_join": Limit(30, 60.0),
}


def parse_limits(spec: str) -> dict[str, Limit]:
    """``"auth=20/60,api=300/60"`` over the defaults; raises ConfigError naming ``rate_limits``."""
    limits = dict(DEFAULT_LIMITS)
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        count, _, seconds = value.partition("/")
        name = name.strip()
        if name not in DEFAULT_LIMITS:
            raise ConfigError("rate_limits", f"unknown class {name!r} (known: {', '.join(DEFAULT_LIMITS)})")
        try:
            limit = Limit(int(count), float(seconds))
        except ValueError:
            raise ConfigError("rate_limits", f"{item!r} is not NAME=COUNT/SECONDS") from None
        if limit.burst < 1 or limit.per_s <= 0 or not math.isfinite(limit.per_s):
            raise ConfigError("rate_limits", f"{item!r} must have COUNT >= 1 and SECONDS > 0")
        limits[name] = limit
    return limits


@dataclass(frozen=True, slots=True)
class Decision:
    result: BucketResult

    def headers(self) -> dict[str, str]:
        r = self.result
        return {
            "X-RateLimit-Limit": str(r.limit),
            "X-RateLimit-Remaining": str(max(0, r.remaining)),
            "X-RateLimit-Reset": str(math.ceil(time.time() + r.reset_after_s)),
            "X-RateLimit-Reset-After": f"{r.reset_after_s:.3f}",
        }


class RateLimiter:
    def __init__(self, store: Ephemeral, limits: dict[str, Limit]) -> None:
        self.store = store
        self.limits = limits

    async def take(self, klass: str, subject: str, cost: int = 1) -> Decision:
        """Take from the bucket; raise RateLimited (with retry_after_ms) when it is empty."""
        limit = self.limits[klass]
        result = await self.store.take(
            f"rl:{klass}:{subject}", rate_per_s=limit.rate_per_s, burst=limit.burst, cost=cost
        )
        if not result.allowed:
            raise RateLimitedWithHeaders(Decision(result))
        return Decision(result)

    async def peek(self, klass: str, subject: str) -> Decision:
        """The bucket's state without taking (cost 0); raise RateLimited when it is already empty."""
        limit = self.limits[klass]
        result = await self.store.take(
            f"rl:{klass}:{subject}", rate_per_s=limit.rate_per_s, burst=limit.burst, cost=0
        )
        if result.remaining < 1:
            retry = max(result.retry_after_s, (1 - result.remaining) / limit.rate_per_s)
            blocked = BucketResult(
                allowed=False,
                limit=result.limit,
                remaining=0,
                reset_after_s=result.reset_after_s,
                retry_after_s=retry,
            )
            raise RateLimitedWithHeaders(Decision(blocked))
        return Decision(result)


class RateLimitedWithHeaders(RateLimited):
    def __init__(self, decision: Decision) -> None:
        retry_ms = max(1, math.ceil(decision.result.retry_after_s * 1000))
        super().__init__("too many requests; slow down", retry_after_ms=retry_ms)
        self.decision = decision
        self.headers.update(decision.headers())
