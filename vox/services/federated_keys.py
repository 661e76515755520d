"""E2EE keys of users of other servers (docs/federation.md, "Key claims across servers").

A claim (``POST /api/v1/keys/claim``) or a device list (``GET /api/v1/keys/{user_id}``) for a
remote user, named by their local id or their ``name@domain`` address, is asked of their home
server (``POST /api/v1/federation/keys/claim`` and ``/keys/query``, signed), which answers from
its own key store: one-time keys are consumed there, so two servers never hand out the same one.
The answer is checked for shape before it is passed on.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from vox.errors import NotFound, PeerError, ValidationError
from vox.services.federation import Federation
from vox.services.keys import KeyService
from vox.services.permissions import valid_id
from vox.services.remote_users import is_address, parse_address
from vox.storage.remote_users import RemoteUsers

__all__ = ["CLAIM_PATH", "QUERY_PATH", "FederatedKeys"]

CLAIM_PATH = "/api/v1/federation/keys/claim"
QUERY_PATH = "/api/v1/federation/keys/query"

Short = Annotated[str, msgspec.Meta(max_length=64)]
Key = Annotated[str, msgspec.Meta(max_length=1024)]


class KeyRequest(msgspec.Struct):
    user: Short
    device_id: Short | None = None
    # The claiming user's id on the peer: the peer's claims are rate limited per claimer.
    claimer: Short = ""


class OneTimeKey(msgspec.Struct):
    key_id: Short
    key: Key


class SignedPrekey(msgspec.Struct):
    key: Key
    signature: Key


class Device(msgspec.Struct):
    device_id: Short
    identity_key: Key
    signing_key: Key


class ClaimedDevice(Device):
    signed_prekey: SignedPrekey | None = None
    one_time_key: OneTimeKey | None = None


class ClaimAnswer(msgspec.Struct):
    devices: Annotated[list[ClaimedDevice], msgspec.Meta(max_length=1000)]


class DevicesAnswer(msgspec.Struct):
    devices: Annotated[list[Device], msgspec.Meta(max_length=1000)]


class FederatedKeys:
    def __init__(self, federation: Federation, users: RemoteUsers, keys: KeyService) -> None:
        self.federation = federation
        self.users = users
        self.keys = keys

    async def _home(self, user_id: str) -> tuple[str, str] | str | None:
        """(name, domain) of a remote user; the local id for an address of this server; None
        for anything else (a local id, or no id at all: the local rules answer those)."""
        if is_address(user_id):
            name, domain = parse_address(user_id)
            if domain != self.federation.server_name:
                return name, domain
            local = await self.users.local_user(name)
            if local is None:
                raise NotFound("user not found")
            return str(local["id"])
        if not valid_id(user_id):
            return None
        row = await self.users.identity(user_id)
        if row is None or row["home_domain"] is None:
            return None
        return str(row["username"]).rpartition("@")[0], str(row["home_domain"])

    async def _ask(self, domain: str, path: str, body: dict[str, Any]) -> Any:
        try:
            return await self.federation.request(domain, "POST", path, body)
        except PeerError as exc:
            if exc.peer_status == 404:
                raise NotFound("user or device not found on their home server") from None
            raise

    async def claim(self, claimer_id: str, user_id: str, device_id: str | None) -> dict[str, Any] | None:
        home = await self._home(user_id)
        if home is None:
            return None
        if isinstance(home, str):
            return await self.keys.claim(claimer_id, home, device_id)
        name, domain = home
        raw = await self._ask(
            domain, CLAIM_PATH, {"user": name, "device_id": device_id, "claimer": claimer_id}
        )
        try:
            answer = msgspec.convert(raw, type=ClaimAnswer)
        except msgspec.ValidationError:
            raise PeerError(200, "garbage", "home server answered a key claim with garbage") from None
        result: dict[str, Any] = msgspec.to_builtins(answer)
        return result

    async def devices(self, user_id: str) -> dict[str, list[dict[str, Any]]] | None:
        home = await self._home(user_id)
        if home is None:
            return None
        if isinstance(home, str):
            return await self.keys.devices(home)
        name, domain = home
        raw = await self._ask(domain, QUERY_PATH, {"user": name})
        try:
            answer = msgspec.convert(raw, type=DevicesAnswer)
        except msgspec.ValidationError:
            raise PeerError(200, "garbage", "home server answered a key query with garbage") from None
        result: dict[str, list[dict[str, Any]]] = msgspec.to_builtins(answer)
        return result

    # -- answering peers ----------------------------------------------------------------------
    async def _local(self, raw: Any) -> tuple[KeyRequest, str]:
        try:
            body = msgspec.convert(raw, type=KeyRequest)
        except msgspec.ValidationError as exc:
            raise ValidationError("invalid key request", {"body": str(exc)}) from None
        user = await self.users.local_user(body.user)
        if user is None or bool(user["disabled"]):
            raise NotFound("user not found")
        return body, str(user["id"])

    async def serve_claim(self, origin: str, raw: Any) -> dict[str, Any]:
        """A peer claims keys of one of our users for one of theirs."""
        body, user_id = await self._local(raw)
        # Charged per claimer of the peer (the peer already charged them at home); the peer's
        # own request rate bounds how many claimers it can make up.
        return await self.keys.claim(f"peer:{origin}:{body.claimer}", user_id, body.device_id)

    async def serve_devices(self, raw: Any) -> dict[str, list[dict[str, Any]]]:
        """A peer lists the devices of one of our users (keys are public)."""
        _, user_id = await self._local(raw)
        return await self.keys.devices(user_id)
