"""Queries for end-to-end encryption keys (protocol.md section 5): device keys and one-time keys.

Tables (0001_initial.sql): ``user_devices`` holds one row per (user, device) with its identity
key (Curve25519), signing key (Ed25519) and optional signed prekey with its signature;
``one_time_keys`` holds the device's unclaimed one-time keys. Keys are opaque strings here: the
service validates them.

Concurrency:

- An upload takes the device row first (INSERT ... ON CONFLICT DO NOTHING, then, on
  PostgreSQL, SELECT ... FOR UPDATE), so two uploads for one device run one after the other and
  the duplicate check and the per-device cap see every key already stored. A claim reads the
  device rows FOR SHARE, so an upload that changes them waits for it (claims do not wait for
  each other): a popped key is always returned with the identity key it was published with.
  On SQLite every write transaction already runs alone (one writer).
- A claim pops one key with a single DELETE ... RETURNING whose subquery picks the oldest key; on
  PostgreSQL that subquery is ``FOR UPDATE SKIP LOCKED``, so concurrent claims each lock a
  different key (or find none left) and never return the same one. On SQLite the pop runs inside
  the single writer transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vox.errors import StorageError
from vox.storage.base import Conn, Engine, Row

__all__ = ["Claimed", "DeviceKeys", "DeviceUpload", "DuplicateKeyIds", "TooManyKeys", "UploadResult"]

_DEVICE_COLS = "device_id, identity_key, signing_key, signed_prekey, signed_prekey_signature, updated_at"

_POP = {
    "sqlite": (
        "DELETE FROM one_time_keys WHERE user_id = :u AND device_id = :d AND key_id = ("
        "SELECT key_id FROM one_time_keys WHERE user_id = :u AND device_id = :d"
        " ORDER BY created_at, key_id LIMIT 1) RETURNING key_id, key"
    ),
    "postgres": (
        "DELETE FROM one_time_keys WHERE user_id = :u AND device_id = :d AND key_id = ("
        "SELECT key_id FROM one_time_keys WHERE user_id = :u AND device_id = :d"
        " ORDER BY created_at, key_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING key_id, key"
    ),
}


@dataclass(frozen=True, slots=True)
class DeviceUpload:
    user_id: str
    device_id: str
    identity_key: str
    signing_key: str
    # Both or neither; None keeps the stored signed prekey (unless the identity or signing key
    # changes: a prekey signed for the old keys is dropped with them).
    signed_prekey: str | None
    signed_prekey_signature: str | None
    one_time_keys: Sequence[tuple[str, str]]  # (key_id, key)
    now: int


@dataclass(frozen=True, slots=True)
class UploadResult:
    remaining: int
    # The device is new, or its identity key, signing key or signed prekey changed.
    changed: bool
    # The identity key changed: the device's earlier one-time keys were dropped.
    identity_replaced: bool


@dataclass(frozen=True, slots=True)
class Claimed:
    device: Row  # _DEVICE_COLS
    one_time_key: Row | None  # {key_id, key}, or None when none were left


class DuplicateKeyIds(Exception):
    """One-time key ids the device already has; nothing was stored."""

    def __init__(self, key_ids: list[str]) -> None:
        super().__init__(", ".join(key_ids))
        self.key_ids = key_ids


class TooManyKeys(Exception):
    """Storing the keys would exceed the per-device cap; nothing was stored."""

    def __init__(self, stored: int, adding: int, limit: int) -> None:
        super().__init__(f"{stored} stored + {adding} new > {limit}")
        self.stored = stored
        self.adding = adding
        self.limit = limit


def _lock(c: Conn, mode: str) -> str:
    """A row-lock clause for PostgreSQL (SQLite's single writer needs none)."""
    return f" FOR {mode}" if mode and c.dialect == "postgres" else ""


def _device(c: Conn, user_id: str, device_id: str, *, lock: str = "") -> Row | None:
    sql = f"SELECT {_DEVICE_COLS} FROM user_devices WHERE user_id = :u AND device_id = :d"
    return c.fetchone(sql + _lock(c, lock), {"u": user_id, "d": device_id})


def _count(c: Conn, user_id: str, device_id: str) -> int:
    return int(
        c.fetchval(
            "SELECT COUNT(*) FROM one_time_keys WHERE user_id = :u AND device_id = :d",
            {"u": user_id, "d": device_id},
        )
    )


def _user_exists(c: Conn, user_id: str) -> bool:
    return c.fetchval("SELECT 1 FROM users WHERE id = :u", {"u": user_id}) is not None


def _upload(c: Conn, new: DeviceUpload, max_keys: int) -> UploadResult:
    ident = {"u": new.user_id, "d": new.device_id}
    inserted = c.execute(
        "INSERT INTO user_devices (user_id, device_id, identity_key, signing_key, signed_prekey,"
        " signed_prekey_signature, updated_at) VALUES (:u, :d, :ik, :sk, :spk, :sig, :now)"
        " ON CONFLICT (user_id, device_id) DO NOTHING",
        {
            **ident,
            "ik": new.identity_key,
            "sk": new.signing_key,
            "spk": new.signed_prekey,
            "sig": new.signed_prekey_signature,
            "now": new.now,
        },
    )
    changed = inserted == 1
    replaced = False
    if not changed:
        row = _device(c, new.user_id, new.device_id, lock="UPDATE")
        if row is None:  # devices go only with their user, and users are never deleted
            raise StorageError("device keys: the device row vanished during the upload")
        replaced = row["identity_key"] != new.identity_key
        keys_changed = replaced or row["signing_key"] != new.signing_key
        spk, sig = new.signed_prekey, new.signed_prekey_signature
        if spk is None and not keys_changed:
            spk, sig = row["signed_prekey"], row["signed_prekey_signature"]
        changed = keys_changed or (spk, sig) != (row["signed_prekey"], row["signed_prekey_signature"])
        if changed:
            c.execute(
                "UPDATE user_devices SET identity_key = :ik, signing_key = :sk, signed_prekey = :spk,"
                " signed_prekey_signature = :sig, updated_at = :now WHERE user_id = :u AND device_id = :d",
                {
                    **ident,
                    "ik": new.identity_key,
                    "sk": new.signing_key,
                    "spk": spk,
                    "sig": sig,
                    "now": new.now,
                },
            )
        if replaced:
            # One-time keys are Curve25519 keys an Olm session combines with the identity key
            # they were published with; beside a new identity key they would only produce
            # sessions the device cannot open.
            c.execute("DELETE FROM one_time_keys WHERE user_id = :u AND device_id = :d", ident)
    if new.one_time_keys:
        names = {f"k{i}": key_id for i, (key_id, _) in enumerate(new.one_time_keys)}
        taken = c.fetchall(
            "SELECT key_id FROM one_time_keys WHERE user_id = :u AND device_id = :d"
            f" AND key_id IN ({', '.join(':' + n for n in names)})",
            {**ident, **names},
        )
        if taken:
            raise DuplicateKeyIds(sorted(r["key_id"] for r in taken))
        stored = _count(c, new.user_id, new.device_id)
        if stored + len(new.one_time_keys) > max_keys:
            raise TooManyKeys(stored, len(new.one_time_keys), max_keys)
        c.executemany(
            "INSERT INTO one_time_keys (user_id, device_id, key_id, key, created_at)"
            " VALUES (:u, :d, :key_id, :key, :now)",
            [{**ident, "key_id": kid, "key": key, "now": new.now} for kid, key in new.one_time_keys],
        )
    return UploadResult(_count(c, new.user_id, new.device_id), changed, replaced)


class DeviceKeys:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def upload(self, new: DeviceUpload, *, max_keys: int) -> UploadResult:
        """Create or update the device and add its one-time keys, all in one transaction.

        Raises DuplicateKeyIds or TooManyKeys (and stores nothing) when a key id is already
        stored for the device or the device would hold more than ``max_keys`` one-time keys.
        Key ids repeated within ``new.one_time_keys`` are the caller's to reject (the primary
        key would refuse them with IntegrityError).
        """
        return await self.engine.write(lambda c: _upload(c, new, max_keys))

    async def count(self, user_id: str, device_id: str) -> int | None:
        """Unclaimed one-time keys of the device; None when it has never uploaded keys."""

        def fn(c: Conn) -> int | None:
            if _device(c, user_id, device_id) is None:
                return None
            return _count(c, user_id, device_id)

        return await self.engine.read(fn)

    async def devices(self, user_id: str) -> list[Row] | None:
        """The user's devices by device id; None when there is no such user."""

        def fn(c: Conn) -> list[Row] | None:
            if not _user_exists(c, user_id):
                return None
            return c.fetchall(
                f"SELECT {_DEVICE_COLS} FROM user_devices WHERE user_id = :u ORDER BY device_id",
                {"u": user_id},
            )

        return await self.engine.read(fn)

    async def claim(self, user_id: str, device_id: str | None) -> list[Claimed] | None:
        """Take one one-time key from each of the user's devices (or from ``device_id`` only).

        None when there is no such user; an empty list when ``device_id`` names no device of
        theirs (or, without it, when they have no devices). Each taken key is deleted in this
        transaction, so no two claims ever return the same key.
        """

        def fn(c: Conn) -> list[Claimed] | None:
            if not _user_exists(c, user_id):
                return None
            # FOR SHARE: an upload changing a device's keys waits until this claim commits, so
            # the key popped below always belongs with the identity key returned beside it.
            if device_id is None:
                devices = c.fetchall(
                    f"SELECT {_DEVICE_COLS} FROM user_devices WHERE user_id = :u ORDER BY device_id"
                    + _lock(c, "SHARE"),
                    {"u": user_id},
                )
            else:
                one = _device(c, user_id, device_id, lock="SHARE")
                devices = [] if one is None else [one]
            pop = _POP[c.dialect]
            return [Claimed(d, c.fetchone(pop, {"u": user_id, "d": d["device_id"]})) for d in devices]

        return await self.engine.write(fn)
