"""The OpenAPI document: it lists exactly the app's routes, its body models are the ones the routes
decode, it is valid OpenAPI 3.1, and the daemon serves it without authentication."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import trio
from openapi_spec_validator import validate
from quart import Quart

from tests.e2e.conftest import Daemon
from vox.api.openapi import OPENAPI_PATH, build_document
from vox.api.spec import doc_of
from vox.config import Config
from vox.transports.rest import create_app

_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def make_app(tmp_path: Path) -> Quart:
    # create_app reads only the configuration while it builds the app; no daemon is needed.
    return create_app(SimpleNamespace(config=Config(data_dir=tmp_path / "data")))  # type: ignore[arg-type]


def api_routes(app: Quart) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") or rule.rule in ("/healthz", "/metrics"):
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((_PARAM.sub(r"{\1}", rule.rule), method.lower()))
    return routes


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


def decoded_models(view: Any) -> list[Any]:
    """The models a view passes to ``json_body``, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(view)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "json_body":
            arg = node.args[0]
            assert isinstance(arg, ast.Name), ast.dump(arg)
            found.append(view.__globals__[arg.id])
    return found


def test_document_lists_exactly_the_app_routes(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    doc = build_document(app)
    routes = api_routes(app)
    assert len(routes) > 90
    assert documented_routes(doc) == routes
    assert ("/api/v1/openapi.json", "get") in routes
    assert ("/api/v1/guilds/{guild_id}/channels/{channel_id}", "get") not in routes


def test_an_undocumented_route_is_missing_from_the_document(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def stray() -> str:
        return "stray"

    app.add_url_rule("/api/v1/stray/<thing_id>", "stray", stray, methods=["POST"])
    doc = build_document(app)
    assert ("/api/v1/stray/{thing_id}", "post") in api_routes(app)
    assert documented_routes(doc) != api_routes(app)


def test_documented_bodies_are_the_decoded_ones(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    doc = build_document(app)
    with_body = 0
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/v1/") or rule.rule in ("/healthz", "/metrics")):
            continue
        view = app.view_functions[rule.endpoint]
        spec = doc_of(view)
        assert spec is not None, rule.rule
        decoded = decoded_models(view)
        assert decoded == ([spec.body] if spec.body is not None else []), rule.rule
        path = _PARAM.sub(r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][path][method.lower()]
            if spec.body is None:
                assert "application/json" not in operation.get("requestBody", {}).get("content", {})
                continue
            with_body += 1
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            component = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
            (expected,), _ = msgspec.json.schema_components([spec.body], ref_template="#/x/{name}")
            expected_name = expected["$ref"].rsplit("/", 1)[1]
            assert ref.endswith("/" + expected_name)
            assert set(component.get("properties", {})) == set(spec.body.__struct_encode_fields__)
    assert with_body > 30


def test_documented_answers_match_the_views(tmp_path: Path) -> None:
    """A view annotated to return a list is documented as an array, a dict as an object, and a
    bare Response as anything else (empty, bytes, text, redirect)."""
    app = make_app(tmp_path)
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        spec = doc_of(view)
        if spec is None:
            continue
        raw = str(view.__annotations__["return"])
        annotation = raw.removeprefix("tuple[")
        expected = {"list": "array", "dict": "object"}.get(annotation.split("[", 1)[0])
        if expected is None:
            assert annotation == "Response", (rule.rule, annotation)
            assert spec.returns not in ("array", "object") or rule.rule == "/api/v1/openapi.json", rule.rule
        else:
            assert spec.returns == expected, (rule.rule, annotation)
        # Only a view returning (body, status) can answer with more than one success status.
        assert raw.startswith("tuple[") or len(spec.ok) == 1, rule.rule


def test_document_is_valid_openapi_31(tmp_path: Path) -> None:
    doc = build_document(make_app(tmp_path))
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    upload = doc["paths"]["/api/v1/channels/{channel_id}/messages/upload"]["post"]["requestBody"]
    assert "multipart/form-data" in upload["content"]
    params = doc["paths"]["/api/v1/channels/{channel_id}/messages"]["get"]["parameters"]
    assert {p["name"] for p in params} == {"channel_id", "limit", "before", "after"}
    assert doc["paths"]["/api/v1/auth/login"]["post"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    # Success answers carry what the views' return annotations say.
    ok = doc["paths"]["/api/v1/channels/{channel_id}/permissions/@me"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    ok = doc["paths"]["/api/v1/guilds"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"type": "array", "items": {"type": "object"}}
    created = doc["paths"]["/api/v1/guilds"]["post"]["responses"]
    assert set(created) == {"201", "4XX"}
    assert created["4XX"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


async def test_daemon_serves_the_document_without_auth(daemon: Daemon) -> None:
    async with daemon.http() as client:
        response = await client.get(OPENAPI_PATH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        served = response.json()
        with trio.fail_after(30):
            await trio.to_thread.run_sync(validate, served)
        assert ("/api/v1/guilds", "post") in documented_routes(served)
        assert served["paths"][OPENAPI_PATH]["get"]["security"] == []
