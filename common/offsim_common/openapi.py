"""OpenAPI specs generated with apispec from what the handlers declare, and Swagger UI.

A handler declares its contract with :func:`doc` (summary, body model, response models by
status); the models are the pydantic models the handler parses and answers with, so the spec
cannot drift from the code. Served at `/api/openapi.json`, with Swagger UI at `/api/docs`
(assets from the `swagger-ui-bundle` package: no CDN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from apispec import APISpec
from pydantic import BaseModel
from swagger_ui_bundle import swagger_ui_path

from .errors import ErrorBody
from .idempotency import KEY_PATTERN

SPEC = web.AppKey("openapi_spec", dict)
DOCS_PREFIX = "/api/docs"
_UNDOCUMENTED = {"/api/openapi.json", DOCS_PREFIX, f"{DOCS_PREFIX}/", "/metrics"}

ID_SCHEMA = {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1}
STRING_SCHEMA = {"type": "string"}
IDEMPOTENCY_KEY = {
    "Idempotency-Key": (
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": KEY_PATTERN},
        "a unique key per operation (IETF httpapi Idempotency-Key draft): a retry with the same "
        "key and body replays the first answer with no second effect; kept 24 hours, per "
        "credential",
    )
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
}

WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}
BEARER = "bearerAuth"

ERROR_DESCRIPTIONS = {
    400: "malformed JSON, or a missing or invalid field (named in `details`)",
    401: "no bearer token, or one that is not valid (`WWW-Authenticate: Bearer`)",
    403: "the token is not the owner's (of this user or SSD) nor the service credential",
    404: "unknown id",
    405: "method not allowed",
    409: "conflict with stored data, or a request with the same `Idempotency-Key` is still "
    "being processed",
    422: "the `Idempotency-Key` was already used for a different request",
    503: "the database does not answer: retry after the `Retry-After` header's seconds",
}


@dataclass(frozen=True)
class Doc:
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    query: dict[str, tuple[dict, str]] = field(default_factory=dict)
    path: dict[str, tuple[dict, str]] = field(default_factory=dict)
    headers: dict[str, tuple[dict, str]] = field(default_factory=dict)
    # Needs a bearer token (the owner's, or the service credential).
    auth: bool = False


def doc(summary: str, tag: str, **kwargs: Any) -> Callable:
    """Attach the operation's contract to a handler; :func:`build_spec` reads it.

    `query` / `path` map a parameter name to (JSON schema, description); `errors` lists error
    statuses answered with the common error body.
    """

    def attach(handler: Callable) -> Callable:
        handler.__openapi__ = Doc(summary, tag, **kwargs)
        return handler

    return attach


def _openapi30(schema: Any) -> Any:
    """pydantic emits JSON Schema 2020-12; OpenAPI 3.0 spells `X | None` as `nullable` and
    exclusive bounds as booleans."""
    if isinstance(schema, list):
        return [_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _openapi30(value) for key, value in schema.items()}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(bound), int | float) and not isinstance(schema[bound], bool):
            schema[limit], schema[bound] = schema[bound], True
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del schema["anyOf"]
        if len(rest) == 1 and "$ref" in rest[0]:
            schema["allOf"] = rest
        elif len(rest) == 1:
            schema.update(rest[0])
        else:
            schema["anyOf"] = rest
        schema["nullable"] = True
    return schema


class _Components:
    def __init__(self, spec: APISpec) -> None:
        self.spec = spec
        self.known: set[str] = set()

    def ref(self, model: type[BaseModel]) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        self._add(model.__name__, schema)
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def _add(self, name: str, schema: dict) -> None:
        if name not in self.known:
            self.known.add(name)
            self.spec.components.schema(name, _openapi30(schema))


def _route_path(resource: web.AbstractResource) -> str | None:
    info = resource.get_info()
    return info.get("path") or info.get("formatter")


def documented_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route a client can call, but the docs' own."""
    routes = []
    for route in app.router.routes():
        path = _route_path(route.resource)
        if route.method in ("HEAD", "*") or path is None or path in _UNDOCUMENTED:
            continue
        if path.startswith(f"{DOCS_PREFIX}/"):
            continue
        routes.append((route.method, path))
    return routes


def build_spec(app: web.Application, title: str, version: str, description: str) -> dict:
    spec = APISpec(title=title, version=version, openapi_version="3.0.3",
                   info={"description": description})  # fmt: skip
    spec.components.security_scheme(
        BEARER,
        {
            "type": "http",
            "scheme": "bearer",
            "description": "a user's token (from POST /api/register) or the service credential "
            "(OFFSIM_SERVICE_TOKEN)",
        },
    )
    components = _Components(spec)
    error = components.ref(ErrorBody)
    operations: dict[str, dict[str, Any]] = {}
    callable_routes = set(documented_routes(app))
    for route in app.router.routes():
        path = _route_path(route.resource)
        if path is None or (route.method, path) not in callable_routes:
            continue
        meta: Doc | None = getattr(route.handler, "__openapi__", None)
        if meta is None:
            continue
        operation: dict[str, Any] = {"summary": meta.summary, "tags": [meta.tag], "responses": {}}
        if meta.auth:
            operation["security"] = [{BEARER: []}]
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema, "description": text}
            for name, (schema, text) in meta.path.items()
        ] + [
            {"name": name, "in": "query", "required": False, "schema": schema,
             "description": text}
            for name, (schema, text) in meta.query.items()
        ] + [
            {"name": name, "in": "header", "required": False, "schema": schema,
             "description": text}
            for name, (schema, text) in meta.headers.items()
        ]  # fmt: skip
        if parameters:
            operation["parameters"] = parameters
        if meta.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": components.ref(meta.body)}},
            }
        for status, model in meta.responses.items():
            response: dict[str, Any] = {"description": (model and model.__doc__) or "OK"}
            if model is not None:
                response["content"] = {"application/json": {"schema": components.ref(model)}}
            operation["responses"][str(status)] = response
        for status in meta.errors:
            operation["responses"][str(status)] = {
                "description": ERROR_DESCRIPTIONS[status],
                "content": {"application/json": {"schema": error}},
                **({"headers": RETRY_AFTER} if status == 503 else {}),
                **({"headers": WWW_AUTHENTICATE} if status == 401 else {}),
            }
        operations.setdefault(path, {})[route.method.lower()] = operation
    for path, ops in operations.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


def setup_openapi(app: web.Application, title: str, version: str, description: str) -> None:
    """Serve the spec and Swagger UI. Call after every route is added."""

    async def build(app: web.Application) -> None:
        app[SPEC] = build_spec(app, title, version, description)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(request.app[SPEC])

    async def docs_page(request: web.Request) -> web.Response:
        return web.Response(text=_SWAGGER_PAGE.format(title=title), content_type="text/html")

    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get(DOCS_PREFIX, docs_page)
    app.router.add_static(f"{DOCS_PREFIX}/static", swagger_ui_path)
    app.on_startup.append(build)


_SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/api/openapi.json", dom_id: "#swagger-ui",
  persistAuthorization: true}});</script>
</body></html>
"""
