"""Vouchers and guest sign-in (docs/federation.md, "Federated DMs, guests and presence").

A local user asks their home server for a voucher addressed to another server; that server
checks it (issuer key, audience, lifetime, single use: ``Federation.redeem_voucher``) and opens
a session for the guest identity ``name@issuer``, a remote-user row with no password. The guest
then uses the REST API, the gateway and voice of that server like a member (joining guilds with
invites), but is never a system admin there: ``AdminStore.is_admin`` ignores remote identities,
so every admin route answers 403 to them whatever the ``system_admins`` table says.
"""

from __future__ import annotations

from typing import Any

from vox.errors import Forbidden, ValidationError
from vox.protocol.federation import VOUCHER_TTL_MS, is_valid_domain
from vox.services.auth import AuthService, ClientInfo
from vox.services.federation import Federation
from vox.services.remote_users import ProfileBody, RemoteDirectory
from vox.storage.remote_users import RemoteUsers

__all__ = ["GuestService"]


class GuestService:
    def __init__(
        self, federation: Federation, directory: RemoteDirectory, users: RemoteUsers, auth: AuthService
    ) -> None:
        self.federation = federation
        self.directory = directory
        self.users = users
        self.auth = auth

    async def voucher(self, user_id: str, audience: str) -> dict[str, Any]:
        """A voucher for one of this server's users, for the server ``audience``."""
        audience = audience.lower()
        if not is_valid_domain(audience):
            raise ValidationError("audience is not a server name", {"audience": "a domain name"})
        if audience == self.federation.server_name:
            raise ValidationError("a voucher is for another server", {"audience": "this server"})
        me = await self.users.identity(user_id)
        if me is None or me["home_domain"] is not None:
            # A guest here is vouched for by their own home server, never by this one.
            raise Forbidden("only users of this server can get vouchers from it")
        voucher = self.federation.issue_voucher(
            subject=str(me["id"]), name=str(me["username"]), audience=audience
        )
        return {
            "voucher": voucher,
            "audience": audience,
            "address": f"{me['username']}@{self.federation.server_name}",
            "expires_in": VOUCHER_TTL_MS // 1000,
        }

    async def sign_in(self, voucher: str, client: ClientInfo) -> dict[str, Any]:
        """Tokens (as login returns them) for the guest a valid, unused voucher names."""
        claims = await self.federation.redeem_voucher(voucher)
        identity = ProfileBody(id=claims.subject, username=claims.name)
        row = await self.directory.remember(claims.issuer, identity, complete=False)
        if row is None:
            raise ValidationError("the voucher names no valid user", {"voucher": "bad user name"})
        if bool(row["disabled"]):
            raise Forbidden("this account is disabled")
        tokens = await self.auth.open_session(str(row["id"]), client)
        tokens["username"] = row["username"]
        tokens["guest"] = True
        return tokens
