"""What the OpenAPI document says about a route, attached to its view function by ``@documented``.

The decorator is the one place a route's request body model, query parameters, upload form and
success answers are declared for the document (vox.api.openapi); the routes decode with the same
model they name here, and tests/e2e/test_openapi.py checks that they do. A route under /api/v1/
without it is left out of the document, which that test reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

View = TypeVar("View", bound=Callable[..., Any])

# What a successful answer carries: a JSON object or array, nothing (204), raw bytes of any type
# (attachments, images), Prometheus text, or a redirect.
Returns = Literal["object", "array", "none", "binary", "text", "redirect"]

_ATTRIBUTE = "__vox_route_doc__"


@dataclass(frozen=True, slots=True)
class Query:
    """One query-string parameter; integers carry their accepted range."""

    name: str
    description: str
    kind: Literal["string", "integer"] = "string"
    minimum: int | None = None
    maximum: int | None = None
    required: bool = False


@dataclass(frozen=True, slots=True)
class Upload:
    """A multipart/form-data body: file parts and text fields (all optional unless listed)."""

    files: tuple[str, ...]
    fields: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    many_files: bool = False


@dataclass(frozen=True, slots=True)
class RouteDoc:
    summary: str
    body: type[msgspec.Struct] | None
    auth: bool
    query: tuple[Query, ...]
    upload: Upload | None
    ok: tuple[int, ...]
    returns: Returns


def documented(
    summary: str,
    *,
    body: type[msgspec.Struct] | None = None,
    auth: bool = True,
    query: tuple[Query, ...] = (),
    upload: Upload | None = None,
    ok: int | tuple[int, ...] = 200,
    returns: Returns = "object",
) -> Callable[[View], View]:
    """Declare a route for the OpenAPI document; put it below the blueprint's route decorator."""
    doc = RouteDoc(
        summary=summary,
        body=body,
        auth=auth,
        query=query,
        upload=upload,
        ok=(ok,) if isinstance(ok, int) else ok,
        returns=returns,
    )

    def attach(view: View) -> View:
        setattr(view, _ATTRIBUTE, doc)
        return view

    return attach


def doc_of(view: Callable[..., Any]) -> RouteDoc | None:
    doc = getattr(view, _ATTRIBUTE, None)
    return doc if isinstance(doc, RouteDoc) else None


def limit(default: int, maximum: int) -> Query:
    return Query("limit", f"Page size, 1..{maximum} (default {default}).", "integer", 1, maximum)


BEFORE = Query("before", "Only items older than this id.")
AFTER = Query("after", "Only items after this id.")
