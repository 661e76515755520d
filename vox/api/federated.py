"""Federated users, DMs' key claims, vouchers and guest sign-in (docs/federation.md, protocol.md
"Federation").

Two kinds of callers: peer servers (``GET /federation/users/{name}``, ``POST
/federation/keys/claim``: signed requests, checked by ``signed_request`` before anything is
decoded) and clients (profile lookup, vouchers: bearer tokens; guest sign-in: the voucher is the
credential). With no ``server_name`` every route answers 404 ``federation_disabled``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint

from vox.api import ctx
from vox.api.bodies import decode, json_body
from vox.api.federation import signed_request
from vox.api.guard import client_info, identity, limit_by_ip
from vox.api.spec import documented
from vox.errors import FederationDisabled
from vox.services.federated import Federated

bp = Blueprint("federated", __name__, url_prefix="/api/v1")


class VoucherRequest(msgspec.Struct):
    audience: Annotated[str, msgspec.Meta(min_length=1, max_length=260)]


class FederatedSignIn(msgspec.Struct):
    voucher: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


def federated() -> Federated:
    service = ctx().federated
    if service is None:
        raise FederationDisabled("this server does not federate (no server_name configured)")
    return service


# -- called by peer servers ---------------------------------------------------------------------
@bp.get("/federation/users/<name>")
@documented("A user of this server, for a peer server (signed server-to-server request)", auth=False)
async def serve_profile(name: str) -> dict[str, Any]:
    await signed_request()
    return await federated().directory.serve_profile(name)


@bp.post("/federation/keys/claim")
@documented("Claim E2EE keys of a user of this server for a peer server (signed request)", auth=False)
async def serve_claim() -> dict[str, Any]:
    origin, raw = await signed_request()
    return await federated().keys.serve_claim(origin, decode(raw, dict[str, Any]))


@bp.post("/federation/keys/query")
@documented("The E2EE devices of a user of this server, for a peer server (signed request)", auth=False)
async def serve_devices() -> dict[str, Any]:
    _, raw = await signed_request()
    return await federated().keys.serve_devices(decode(raw, dict[str, Any]))


@bp.post("/federation/typing")
@documented("A peer's user is typing in a DM with a user of this server (signed request)", auth=False)
async def serve_typing() -> dict[str, Any]:
    origin, raw = await signed_request()
    return await federated().typing.receive(origin, decode(raw, dict[str, Any]))


# -- called by clients --------------------------------------------------------------------------
@bp.get("/federation/profiles/<address>")
@documented("Look up a user of another server by name@domain (their home server answers)")
async def lookup_profile(address: str) -> dict[str, Any]:
    await identity()
    return await federated().profile(address)


@bp.post("/federation/vouchers")
@documented(
    "A short-lived, single-use voucher that signs me in as a guest on another server", body=VoucherRequest
)
async def voucher() -> dict[str, Any]:
    who = await identity()
    body = await json_body(VoucherRequest)
    return await federated().guests.voucher(who.user_id, body.audience)


@bp.post("/auth/federated")
@documented(
    "Sign in as a guest of this server with a voucher from my home server", body=FederatedSignIn, auth=False
)
async def sign_in_with_voucher() -> dict[str, Any]:
    await limit_by_ip("auth")
    body = await json_body(FederatedSignIn)
    return await federated().guests.sign_in(body.voucher, client_info())
