"""/api/v1/federation/*: the server-to-server routes (docs/federation.md).

Every route here but ``GET /key`` is called by peer servers, not clients: ``signed_request``
checks the caller's signature (and the policy, rate limit and replay rules) over the raw body
before anything is decoded, and ``sign_reply`` signs every answer to such a request (the
features' federation routes in other blueprints included). With no ``server_name`` configured,
every route answers 404 ``federation_disabled``.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from vox.api import ctx
from vox.api.bodies import decode
from vox.api.spec import documented
from vox.errors import FederationAuthError, FederationDisabled, PayloadTooLarge
from vox.protocol import federation as proto
from vox.services.federation import Federation

PREFIX = "/api/v1/federation/"

bp = Blueprint("federation", __name__, url_prefix=PREFIX.rstrip("/"))


def federation() -> Federation:
    """The Federation service; 404 ``federation_disabled`` when this server does not federate."""
    service = ctx().federation
    if service is None:
        raise FederationDisabled("this server does not federate (no server_name configured)")
    return service


def _path_with_query() -> str:
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


async def signed_request() -> tuple[str, bytes]:
    """Verify the calling server's signature; return its domain and the raw body it signed."""
    service = federation()
    limit = ctx().config.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    raw = await request.get_data(cache=True)
    assert isinstance(raw, bytes)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    origin = await service.verify_inbound(
        request.headers,
        method=request.method,
        path=_path_with_query(),
        body=raw,
        client=request.remote_addr or "",
    )
    return origin, raw


@bp.after_app_request
async def sign_reply(response: Response) -> Response:
    """Sign every answer to a signed federation request (this blueprint's and the features'), so
    the caller knows the answer, errors included, came from this server and belongs to its
    request."""
    service = ctx().federation
    if service is None or not request.path.startswith(PREFIX):
        return response
    try:
        requester = proto.request_origin(request.headers)
        signature = proto.request_signature(request.headers)
    except FederationAuthError:
        return response  # not a server-to-server request: nothing to bind the reply to
    body = await response.get_data(as_text=False)
    response.headers.update(
        proto.sign_response(
            service.key,
            origin=service.server_name,
            destination=requester,
            status=response.status_code,
            body=body,
            request_signature=signature,
        )
    )
    return response


@bp.get("/key")
@documented("This server's federation identity and public key", auth=False)
async def key() -> dict[str, str]:
    return federation().key_document()


@bp.post("/inbox")
@documented(
    "Deliver outbox entries from a peer server, one or a batch (signed server-to-server request)",
    auth=False,
)
async def inbox() -> dict[str, Any]:
    origin, raw = await signed_request()
    # Decoded loosely: the service names the fields a well-signed but malformed envelope lacks.
    return await federation().receive(origin, decode(raw, dict[str, Any]))
