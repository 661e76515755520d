"""The OpenAPI 3.1 document of the REST API, built from the app's own routes, served at
/api/v1/openapi.json.

Paths, methods and path parameters come from the URL map; bodies, queries, uploads and success
answers from each view's ``@documented`` declaration (vox.api.spec); JSON Schemas of bodies from
the msgspec structs the routes decode. The document is built once when the app is created and kept
on the app, so it always describes exactly the routes that app serves.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from importlib import metadata
from typing import Any

import msgspec
from quart import Blueprint, Quart, Response, current_app
from werkzeug.routing import Rule

from vox.api.spec import RouteDoc, Upload, doc_of, documented
from vox.protocol.gateway import PROTOCOL_VERSION

bp = Blueprint("openapi", __name__)

OPENAPI_PATH = "/api/v1/openapi.json"
EXTENSION = "vox.openapi"
# Operational routes outside /api/v1/ that clients and monitors call; the web client's pages and
# files are not part of the API.
EXTRA_PATHS = ("/healthz", "/metrics")
_IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
_REF = "#/components/schemas/{name}"
_CONVERTER = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
}

# protocol.md section 1: every 4xx/5xx body. ``code`` is snake_case; some errors add fields.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                "retry_after_ms": {"type": "integer", "minimum": 0},
                "missing_permission": {"type": "string"},
            },
        }
    },
}


def is_documented_path(rule: str) -> bool:
    return rule.startswith("/api/v1/") or rule in EXTRA_PATHS


def openapi_path(rule: str) -> str:
    """``/guilds/<guild_id>`` -> ``/guilds/{guild_id}``."""
    return _CONVERTER.sub(lambda m: "{" + m.group("name") + "}", rule)


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    params = []
    for match in _CONVERTER.finditer(rule):
        schema = _CONVERTER_SCHEMAS.get(match.group("converter") or "", {"type": "string"})
        params.append({"name": match.group("name"), "in": "path", "required": True, "schema": schema})
    return params


def _has_required_fields(model: type[msgspec.Struct]) -> bool:
    return len(model.__struct_defaults__) < len(model.__struct_fields__)


def _upload_schema(upload: Upload) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {
        name: {"type": "array", "items": binary} if upload.many_files else binary for name in upload.files
    }
    properties.update({name: {"type": "string"} for name in upload.fields})
    return {"type": "object", "properties": properties, "required": list(upload.required)}


def answer_schema(view: Callable[..., Any], returns: str) -> dict[str, Any]:
    """The JSON Schema of a view's JSON answer, from its return annotation (the body part of a
    ``(body, status)`` tuple): ``dict[str, int]`` is an object of integers, ``list[dict[...]]`` an
    array of objects. Where the annotation says less than ``returns`` (or msgspec cannot render
    it), just the documented JSON type."""
    try:
        hint = typing.get_type_hints(view).get("return")
    except (NameError, TypeError):
        hint = None
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    try:
        schema: dict[str, Any] = msgspec.json.schema(hint)
    except TypeError:
        return {"type": returns}
    if schema.get("type") != returns or "$defs" in schema:
        return {"type": returns}
    return schema


def _success(doc: RouteDoc, status: int, view: Callable[..., Any]) -> dict[str, Any]:
    if status == 503:  # only /healthz documents one: the same report, saying what is down
        return {"description": "Degraded: a backend is not answering", "content": _json({"type": "object"})}
    if doc.returns == "none":
        return {"description": "Done"}
    if doc.returns == "redirect":
        return {
            "description": "Redirect",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        }
    if doc.returns == "binary":
        return {"description": "The stored bytes", "content": {"*/*": {"schema": {}}}}
    if doc.returns == "text":
        return {"description": "Text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {"description": "OK", "content": _json(answer_schema(view, doc.returns))}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(
    rule: Rule, method: str, doc: RouteDoc, refs: dict[type, dict[str, Any]], view: Callable[..., Any]
) -> dict[str, Any]:
    methods = set(rule.methods or ()) - _IGNORED_METHODS
    op: dict[str, Any] = {
        # The endpoint ("guilds.create_guild") names the view; schemathesis filters use it.
        "operationId": rule.endpoint if len(methods) == 1 else f"{rule.endpoint}.{method.lower()}",
        "summary": doc.summary,
        "tags": [rule.endpoint.split(".", 1)[0]],
    }
    params = _path_parameters(rule.rule)
    for q in doc.query:
        schema: dict[str, Any] = {"type": q.kind}
        if q.minimum is not None:
            schema["minimum"] = q.minimum
        if q.maximum is not None:
            schema["maximum"] = q.maximum
        params.append(
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": schema,
            }
        )
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = {
            "required": _has_required_fields(doc.body),
            "content": _json(refs[doc.body]),
        }
    elif doc.upload is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": _upload_schema(doc.upload)}},
        }
    if not doc.auth:
        op["security"] = []
    responses = {str(status): _success(doc, status, view) for status in doc.ok}
    responses["4XX"] = {
        "description": "Refused (protocol.md section 1)",
        "content": _json({"$ref": "#/components/schemas/Error"}),
    }
    op["responses"] = responses
    return op


def build_document(app: Quart) -> dict[str, Any]:
    """The document for every documented route of ``app`` (undocumented ones are left out)."""
    routes = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        doc = doc_of(app.view_functions[rule.endpoint])
        if is_documented_path(rule.rule) and doc is not None:
            routes.append((rule, doc))
    # One pass over every body model so that msgspec names each schema once (and qualifies names
    # two models would share).
    models = list(dict.fromkeys(doc.body for _, doc in routes if doc.body is not None))
    bodies, schemas = msgspec.json.schema_components(models, ref_template=_REF)
    refs = dict(zip(models, bodies, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for rule, doc in routes:
        item = paths.setdefault(openapi_path(rule.rule), {})
        for method in sorted(set(rule.methods or ()) - _IGNORED_METHODS):
            item[method.lower()] = _operation(rule, method, doc, refs, app.view_functions[rule.endpoint])
    schemas["Error"] = ERROR_SCHEMA
    try:
        version = metadata.version("vox")
    except metadata.PackageNotFoundError:
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vox REST API",
            "version": version,
            "description": f"Vox wire protocol v{PROTOCOL_VERSION}: the REST routes (protocol.md).",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }


def install(app: Quart) -> None:
    """Build the document once, after every blueprint is registered, and keep it on the app."""
    app.extensions[EXTENSION] = msgspec.json.encode(build_document(app))


@bp.get(OPENAPI_PATH)
@documented("This OpenAPI document", auth=False)
async def openapi_document() -> Response:
    body: bytes = current_app.extensions[EXTENSION]
    return Response(body, content_type="application/json")
