"""End-to-end encryption keys (protocol.md section 5): devices publish their Olm keys, others
list them and claim one-time keys to start Olm sessions.

The server never uses the keys: they are opaque base64 strings, checked only for form and size
(``is_base64``) so that what clients fetch is what a well-behaved client uploaded. Rules:

- ``device_id``: 1-64 characters of ``A-Z a-z 0-9 _ -``, chosen by the client, unique per user.
- Keys: strict base64, standard (``+/``) or URL-safe (``-_``) alphabet, padded or unpadded
  (vodozemac emits unpadded standard base64), canonical (no stray bits), at most
  ``MAX_KEY_LENGTH`` characters; signatures at most ``MAX_SIGNATURE_LENGTH``.
- ``key_id``: 1-64 characters of ``A-Z a-z 0-9 + / = _ : . -``.
- One upload carries at most ``MAX_KEYS_PER_UPLOAD`` one-time keys; a device holds at most
  ``max_one_time_keys`` (config). A key id repeated in the request or already stored for the
  device, or a request that would overflow the cap, is refused whole: nothing is stored.
- Uploading a different identity key for a known device replaces the device: its unclaimed
  one-time keys (and its signed prekey, unless a new one comes with the upload) are dropped,
  because they were published beside the old identity and would start sessions the device can
  no longer open. A new signing key without a new signed prekey drops the signed prekey too
  (its signature no longer verifies).

Events: when a device is added or its identity key, signing key or signed prekey changes,
``patch {entity_type: "device_keys", entity_id: user_id, diff: {device_id, identity_key,
signing_key}}`` goes to the user's contacts and own devices: ``guild:{id}`` of each of their
guilds (co-members), ``user:{id}`` of each friend and the user's own ``user:{id}``, the audience
of presence and profile patches. Adding one-time keys alone sends nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vox.errors import NotFound, ValidationError
from vox.pubsub import Broker
from vox.services.guild_events import guild_topic, user_topic
from vox.services.permissions import valid_id
from vox.services.publish import publish_event
from vox.services.ratelimit import RateLimiter
from vox.storage.accounts import Accounts
from vox.storage.base import Row
from vox.storage.keys import Claimed, DeviceKeys, DeviceUpload, DuplicateKeyIds, TooManyKeys

__all__ = [
    "MAX_KEYS_PER_UPLOAD",
    "MAX_KEY_LENGTH",
    "MAX_SIGNATURE_LENGTH",
    "KeyService",
    "is_base64",
    "valid_device_id",
    "valid_key_id",
]

MAX_KEY_LENGTH = 256
MAX_SIGNATURE_LENGTH = 512
MAX_KEYS_PER_UPLOAD = 100
MAX_ID_LENGTH = 64

_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9+/=_:.-]{1,64}")
_STANDARD = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_URLSAFE = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _now_ms() -> int:
    return int(time.time() * 1000)


def is_base64(value: str) -> bool:
    """Strict base64: one alphabet (standard or URL-safe), padding either complete or absent,
    no whitespace, non-empty, and canonical (the unused low bits of the last character are 0,
    so every byte string has exactly one padded and one unpadded spelling)."""
    if _STANDARD.fullmatch(value):
        altchars = None
    elif _URLSAFE.fullmatch(value):
        altchars = b"-_"
    else:
        return False
    body = value.rstrip("=")
    padding = len(value) - len(body)
    if len(body) % 4 == 1 or (padding and padding != -len(body) % 4):
        return False
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return False
    return base64.b64encode(raw, altchars=altchars).decode().rstrip("=") == body


def valid_device_id(value: str) -> bool:
    return bool(_DEVICE_ID.fullmatch(value))


def valid_key_id(value: str) -> bool:
    return bool(_KEY_ID.fullmatch(value))


def _check_key(field: str, value: str, limit: int = MAX_KEY_LENGTH) -> None:
    if len(value) > limit:
        raise ValidationError(f"{field} is too long", {field: f"at most {limit} characters"})
    if not is_base64(value):
        raise ValidationError(f"{field} is not base64", {field: "must be base64 (standard or URL-safe)"})


def _check_device_id(device_id: str) -> None:
    if not valid_device_id(device_id):
        raise ValidationError("invalid device_id", {"device_id": "1-64 characters of A-Z a-z 0-9 _ -"})


def device_object(row: Row) -> dict[str, Any]:
    return {
        "device_id": row["device_id"],
        "identity_key": row["identity_key"],
        "signing_key": row["signing_key"],
    }


def claimed_object(claimed: Claimed) -> dict[str, Any]:
    d = claimed.device
    prekey = None
    if d["signed_prekey"] is not None:
        prekey = {"key": d["signed_prekey"], "signature": d["signed_prekey_signature"]}
    otk = claimed.one_time_key
    return {
        **device_object(d),
        "signed_prekey": prekey,
        "one_time_key": None if otk is None else {"key_id": otk["key_id"], "key": otk["key"]},
    }


class RemoteKeys(Protocol):
    """Keys of users of other servers, asked of their home server; None for local users."""

    async def claim(self, claimer_id: str, user_id: str, device_id: str | None) -> dict[str, Any] | None: ...

    async def devices(self, user_id: str) -> dict[str, list[dict[str, Any]]] | None: ...


class KeyService:
    def __init__(
        self,
        keys: DeviceKeys,
        accounts: Accounts,
        broker: Broker,
        limiter: RateLimiter,
        *,
        max_one_time_keys: int = 100,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.keys = keys
        self.accounts = accounts
        self.broker = broker
        self.limiter = limiter
        self.max_one_time_keys = max_one_time_keys
        self.clock = clock
        # Set when federation is on: claims and device lists of users of other servers come
        # from their home server (vox.services.federated_keys).
        self.remote: RemoteKeys | None = None

    async def upload(
        self,
        user_id: str,
        *,
        device_id: str,
        identity_key: str,
        signing_key: str,
        signed_prekey: tuple[str, str] | None = None,
        one_time_keys: Sequence[tuple[str, str]] = (),
    ) -> dict[str, int]:
        """Publish the caller's device keys; ``signed_prekey`` is (key, signature) and
        ``one_time_keys`` (key_id, key) pairs. Answers ``{remaining}``: the device's unclaimed
        one-time keys after the upload. Every check runs before anything is written."""
        _check_device_id(device_id)
        _check_key("identity_key", identity_key)
        _check_key("signing_key", signing_key)
        if signed_prekey is not None:
            _check_key("signed_prekey.key", signed_prekey[0])
            _check_key("signed_prekey.signature", signed_prekey[1], MAX_SIGNATURE_LENGTH)
        if len(one_time_keys) > MAX_KEYS_PER_UPLOAD:
            raise ValidationError(
                "too many one-time keys", {"one_time_keys": f"at most {MAX_KEYS_PER_UPLOAD} per upload"}
            )
        seen: set[str] = set()
        for i, (key_id, key) in enumerate(one_time_keys):
            if not valid_key_id(key_id):
                raise ValidationError(
                    f"one_time_keys[{i}].key_id is invalid",
                    {"one_time_keys": f"[{i}].key_id: 1-64 characters of A-Z a-z 0-9 + / = _ : . -"},
                )
            if key_id in seen:
                raise ValidationError(
                    f"key id {key_id!r} appears twice", {"one_time_keys": f"duplicate key_id {key_id!r}"}
                )
            seen.add(key_id)
            if len(key) > MAX_KEY_LENGTH or not is_base64(key):
                raise ValidationError(
                    f"one_time_keys[{i}].key is invalid",
                    {"one_time_keys": f"[{i}].key: base64, at most {MAX_KEY_LENGTH} characters"},
                )
        try:
            result = await self.keys.upload(
                DeviceUpload(
                    user_id=user_id,
                    device_id=device_id,
                    identity_key=identity_key,
                    signing_key=signing_key,
                    signed_prekey=None if signed_prekey is None else signed_prekey[0],
                    signed_prekey_signature=None if signed_prekey is None else signed_prekey[1],
                    one_time_keys=list(one_time_keys),
                    now=self.clock(),
                ),
                max_keys=self.max_one_time_keys,
            )
        except DuplicateKeyIds as exc:
            raise ValidationError(
                "one-time key ids already uploaded for this device",
                {"one_time_keys": f"already stored: {', '.join(exc.key_ids)}"},
            ) from None
        except TooManyKeys as exc:
            raise ValidationError(
                "too many one-time keys for this device",
                {
                    "one_time_keys": f"a device holds at most {exc.limit} unclaimed one-time keys;"
                    f" {exc.stored} are stored, {exc.adding} more do not fit"
                },
            ) from None
        if result.changed:
            await self._announce(
                user_id, {"device_id": device_id, "identity_key": identity_key, "signing_key": signing_key}
            )
        return {"remaining": result.remaining}

    async def count(self, user_id: str, device_id: str) -> dict[str, int]:
        """``{remaining}`` for one of the caller's own devices; NotFound when it has no keys."""
        _check_device_id(device_id)
        remaining = await self.keys.count(user_id, device_id)
        if remaining is None:
            raise NotFound("no keys were uploaded for this device")
        return {"remaining": remaining}

    async def devices(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """Any user's devices (keys are public); NotFound for an unknown user."""
        if self.remote is not None:
            listed = await self.remote.devices(user_id)
            if listed is not None:
                return listed
        rows = await self.keys.devices(user_id) if valid_id(user_id) else None
        if rows is None:
            raise NotFound("user not found")
        return {"devices": [device_object(r) for r in rows]}

    async def claim(self, claimer_id: str, user_id: str, device_id: str | None = None) -> dict[str, Any]:
        """One one-time key (or none, when they ran out: the client then uses the signed prekey)
        from each device of ``user_id``, or from ``device_id`` only. Rate limited per claimer
        (``key_claim``), charged before anything is looked up."""
        await self.limiter.take("key_claim", claimer_id)
        if device_id is not None:
            _check_device_id(device_id)
        if self.remote is not None:
            proxied = await self.remote.claim(claimer_id, user_id, device_id)
            if proxied is not None:
                return proxied
        claimed = await self.keys.claim(user_id, device_id) if valid_id(user_id) else None
        if claimed is None:
            raise NotFound("user not found")
        if device_id is not None and not claimed:
            raise NotFound("device not found")
        return {"devices": [claimed_object(c) for c in claimed]}

    async def _announce(self, user_id: str, diff: dict[str, Any]) -> None:
        guilds, friends = await self.accounts.presence_audience(user_id)
        topics = [guild_topic(g) for g in guilds] + [user_topic(f) for f in friends] + [user_topic(user_id)]
        await publish_event(
            self.broker, topics, "patch", {"entity_type": "device_keys", "entity_id": user_id, "diff": diff}
        )
