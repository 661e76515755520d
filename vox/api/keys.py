"""/api/v1/keys/*: end-to-end encryption keys (protocol.md section 5)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from quart import Blueprint, request

from vox.api import ctx
from vox.api.bodies import json_body
from vox.api.guard import identity
from vox.api.spec import Query, documented
from vox.errors import ValidationError
from vox.services.keys import MAX_KEY_LENGTH, MAX_KEYS_PER_UPLOAD, MAX_SIGNATURE_LENGTH

bp = Blueprint("keys", __name__, url_prefix="/api/v1/keys")

# Lengths only: the service checks the alphabets and base64 (and repeats these bounds).
DeviceId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
Signature = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SIGNATURE_LENGTH)]


class SignedPrekey(msgspec.Struct):
    key: Key
    signature: Signature


class OneTimeKey(msgspec.Struct):
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    key: Key


class UploadBody(msgspec.Struct):
    device_id: DeviceId
    identity_key: Key
    signing_key: Key
    signed_prekey: SignedPrekey | None = None
    one_time_keys: Annotated[list[OneTimeKey], msgspec.Meta(max_length=MAX_KEYS_PER_UPLOAD)] = []


class ClaimBody(msgspec.Struct):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    device_id: DeviceId | None = None


@bp.post("/upload")
@documented("Upload device and one-time keys", body=UploadBody)
async def upload() -> dict[str, int]:
    who = await identity()
    body = await json_body(UploadBody)
    spk = body.signed_prekey
    return await ctx().keys.upload(
        who.user_id,
        device_id=body.device_id,
        identity_key=body.identity_key,
        signing_key=body.signing_key,
        signed_prekey=None if spk is None else (spk.key, spk.signature),
        one_time_keys=[(k.key_id, k.key) for k in body.one_time_keys],
    )


@bp.get("/count")
@documented(
    "Unclaimed one-time keys of one of my devices", query=(Query("device_id", "The device.", required=True),)
)
async def count() -> dict[str, int]:
    who = await identity()
    device_id = request.args.get("device_id")
    if device_id is None:
        raise ValidationError("device_id is required", {"device_id": "required"})
    return await ctx().keys.count(who.user_id, device_id)


@bp.post("/claim")
@documented("Claim one-time keys of other devices", body=ClaimBody)
async def claim() -> dict[str, Any]:
    who = await identity()
    body = await json_body(ClaimBody)
    return await ctx().keys.claim(who.user_id, body.user_id, body.device_id)


@bp.get("/<user_id>")
@documented("Device keys of a user")
async def devices(user_id: str) -> dict[str, Any]:
    await identity()
    return await ctx().keys.devices(user_id)
