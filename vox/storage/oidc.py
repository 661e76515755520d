"""Queries for OIDC providers and the accounts they sign in (protocol.md section 2, SSO).

Client secrets arrive here already sealed (AES-256-GCM, vox.services.secretbox); this module
never sees them in clear. Provider changes write their audit_log row in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vox.errors import Conflict, IntegrityError
from vox.storage.accounts import _USER_SELECT, now_ms
from vox.storage.admin import server_audit
from vox.storage.base import Conn, Engine, Row

__all__ = ["PROVIDER_COLUMNS", "NewOidcUser", "OidcStore"]

PROVIDER_COLUMNS = (
    "id, slug, display_name, icon_hint, issuer_url, client_id, client_secret_enc, scopes, enabled, created_at"
)
_EDITABLE = frozenset(
    {"slug", "display_name", "icon_hint", "issuer_url", "client_id", "client_secret_enc", "scopes", "enabled"}
)


@dataclass(frozen=True, slots=True)
class NewOidcUser:
    external_id: str
    # Tried in order; the first one free (case-insensitively) becomes the username.
    usernames: tuple[str, ...]
    display_name: str | None
    email: str | None


class OidcStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- providers --------------------------------------------------------------------------
    async def providers(self, *, enabled_only: bool) -> list[Row]:
        where = " WHERE enabled = TRUE" if enabled_only else ""
        return await self.engine.read(
            lambda c: c.fetchall(
                f"SELECT {PROVIDER_COLUMNS} FROM oidc_providers{where} ORDER BY display_name, slug"
            )
        )

    async def provider(self, key: str) -> Row | None:
        """By id or by slug (a slug is never 36 characters long, an id always is)."""
        column = "id" if len(key) == 36 else "slug"
        return await self.engine.read(
            lambda c: c.fetchone(
                f"SELECT {PROVIDER_COLUMNS} FROM oidc_providers WHERE {column} = :k", {"k": key}
            )
        )

    async def create_provider(self, actor_id: str, values: dict[str, Any], ip: str | None) -> Row:
        def fn(c: Conn) -> Row:
            row = {k: v for k, v in values.items() if k in _EDITABLE}
            row["id"] = str(uuid.uuid4())
            row["created_at"] = now_ms()
            columns = ", ".join(row)
            try:
                c.execute(
                    f"INSERT INTO oidc_providers ({columns}) VALUES ({', '.join(':' + k for k in row)})", row
                )
            except IntegrityError:
                raise Conflict("a provider with that slug already exists", field="slug") from None
            server_audit(c, actor_id, "oidc_provider_create", "oidc_provider", row["id"], _shown(row), ip)
            created = c.fetchone(f"SELECT {PROVIDER_COLUMNS} FROM oidc_providers WHERE id = :id", row)
            assert created is not None
            return created

        return await self.engine.write(fn)

    async def update_provider(
        self, actor_id: str, provider_id: str, changes: dict[str, Any], ip: str | None
    ) -> Row | None:
        def fn(c: Conn) -> Row | None:
            sets = {k: v for k, v in changes.items() if k in _EDITABLE}
            if c.fetchval("SELECT 1 FROM oidc_providers WHERE id = :id", {"id": provider_id}) is None:
                return None
            if sets:
                assignments = ", ".join(f"{k} = :{k}" for k in sets)
                try:
                    c.execute(
                        f"UPDATE oidc_providers SET {assignments} WHERE id = :id", {**sets, "id": provider_id}
                    )
                except IntegrityError:
                    raise Conflict("a provider with that slug already exists", field="slug") from None
            server_audit(c, actor_id, "oidc_provider_update", "oidc_provider", provider_id, _shown(sets), ip)
            return c.fetchone(
                f"SELECT {PROVIDER_COLUMNS} FROM oidc_providers WHERE id = :id", {"id": provider_id}
            )

        return await self.engine.write(fn)

    async def delete_provider(self, actor_id: str, provider_id: str, ip: str | None) -> Row | None:
        def fn(c: Conn) -> Row | None:
            row = c.fetchone(
                f"SELECT {PROVIDER_COLUMNS} FROM oidc_providers WHERE id = :id", {"id": provider_id}
            )
            if row is None:
                return None
            c.execute("DELETE FROM oidc_providers WHERE id = :id", {"id": provider_id})
            server_audit(
                c, actor_id, "oidc_provider_delete", "oidc_provider", provider_id, {"slug": row["slug"]}, ip
            )
            return row

        return await self.engine.write(fn)

    # -- accounts ---------------------------------------------------------------------------
    async def user_by_external_id(self, external_id: str) -> Row | None:
        return await self.engine.read(
            lambda c: c.fetchone(_USER_SELECT + " WHERE u.external_id = :x", {"x": external_id})
        )

    async def create_user(self, new: NewOidcUser) -> tuple[Row, bool] | None:
        """Create the account in one transaction (the first account becomes the system admin).

        Returns (user, is_admin); None when every candidate username is taken. A concurrent
        sign-in of the same new user makes this raise IntegrityError (the external id is
        unique): the caller then finds the account the other one created.
        """

        def fn(c: Conn) -> tuple[Row, bool] | None:
            if c.dialect == "postgres":
                c.execute("LOCK TABLE system_admins IN SHARE ROW EXCLUSIVE MODE")
            username = _first_free(c, new.usernames)
            if username is None:
                return None
            email = new.email
            if email is not None and c.fetchval(
                "SELECT 1 FROM users WHERE email_lower = :e", {"e": email.lower()}
            ):
                # Never link or steal: an address already on another account is simply not copied.
                email = None
            user_id = str(uuid.uuid4())
            now = now_ms()
            c.execute(
                "INSERT INTO users (id, username, username_lower, email, email_lower, display_name,"
                " password_hash, auth_method, external_id, created_at) VALUES (:id, :u, :ul, :e, :el, :dn,"
                " NULL, 'oidc', :x, :now)",
                {
                    "id": user_id,
                    "u": username,
                    "ul": username.lower(),
                    "e": email,
                    "el": email.lower() if email else None,
                    "dn": new.display_name,
                    "x": new.external_id,
                    "now": now,
                },
            )
            is_admin = c.fetchval("SELECT 1 FROM system_admins") is None
            if is_admin:
                c.execute(
                    "INSERT INTO system_admins (user_id, created_at) VALUES (:u, :now)",
                    {"u": user_id, "now": now},
                )
            user = c.fetchone(_USER_SELECT + " WHERE u.id = :id", {"id": user_id})
            assert user is not None
            return user, is_admin

        return await self.engine.write(fn)


def _first_free(c: Conn, candidates: Iterable[str]) -> str | None:
    for name in candidates:
        if c.fetchval("SELECT 1 FROM users WHERE username_lower = :u", {"u": name.lower()}) is None:
            return name
    return None


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    """What the audit log may record: never the sealed secret, only whether it changed."""
    shown = {k: v for k, v in values.items() if k not in {"client_secret_enc", "id", "created_at"}}
    if "client_secret_enc" in values:
        shown["client_secret"] = "changed"  # noqa: S105 (a marker, not the secret)
    return shown
