"""Routes declared once, with pydantic models: the router, request validation and the OpenAPI document.

Where it sits: a service's API module declares each handler on a `RouteTable` with the models of
its path parameters, query string, body and answer (`orchestrator_core.api`, `watchdog.api`,
`watchdog.web`); `RouteTable.install(app)` registers them on the aiohttp router, each wrapped so that the
request is validated (`gl_common.http`) before the handler runs, and `build_document(table, ...)`
makes the OpenAPI 3.1 document from the same routes and models. So the document cannot drift from
the router or from what the server accepts (a test of each service compares the document with the
app's registered routes).

    table = RouteTable("/api/v1/things", path_params={"thing_id": ThingId})

    @table.route("GET /things/{thing_id}", "One thing", query=ThingQuery, response=Thing)
    async def get_thing(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        query = inputs.query(ThingQuery)          # already validated
        ...

A path parameter, query string or JSON body that its model refuses is a 400 naming the field (a
table may answer a body's refusal with another status, e.g. 422), and the handler never runs. A route
whose body is not JSON (e.g. YAML accepted too, or a form) declares `raw_body=True`: the document
still describes it, and the handler reads and validates it.

Auth is the service's middleware's, which asks `route_of(request)` what the matched route declares:
`auth` (a bearer token) and/or `alt_auth` (other credentials the handler checks itself, e.g. a signed
link token; the document lists them as alternative security schemes).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema

from gl_common.http import (
    JSON_TYPE,
    ApiError,
    bad_request,
    parse_json,
    query_values,
    read_body,
    validate,
    validation_error,
)

ModelT = TypeVar("ModelT", bound=BaseModel)
OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")


class ErrorBody(BaseModel):
    """Every error answer: a short code, a message, and the request field at fault when there is one
    (services may add more, e.g. the problems of an invalid document)."""

    model_config = {"extra": "allow"}

    error: str
    detail: str
    field: str | None = None


@dataclass(frozen=True)
class Inputs:
    """What a route's models made of one request: path parameters, query and body, all validated."""

    path: Mapping[str, str]
    query_model: BaseModel | None = None
    body_model: BaseModel | None = None

    def query(self, model: type[ModelT]) -> ModelT:
        return _as(self.query_model, model, "query")

    def body(self, model: type[ModelT]) -> ModelT:
        return _as(self.body_model, model, "body")


def _as(value: BaseModel | None, model: type[ModelT], part: str) -> ModelT:
    if not isinstance(value, model):
        raise TypeError(f"the route declares no {part} model {model.__name__}")  # a bug of the route
    return value


RouteHandler = Callable[[web.Request, Inputs], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Answer:
    """A documented answer besides the route's success status (`model` None: the error shape, or a
    string of `content_type` when that is not JSON, e.g. an HTML page)."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str = JSON_TYPE


@dataclass(frozen=True)
class Route:
    """One route: the router registers `endpoint` (validation, then `handler`); the document
    describes the rest."""

    method: str
    path: str
    handler: RouteHandler
    summary: str
    auth: bool = True
    ok_status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = False
    body_types: tuple[str, ...] = (JSON_TYPE,)
    raw_body: bool = False  # the handler reads and validates the body itself
    response: type[BaseModel] | None = None
    response_type: str = JSON_TYPE  # another type (e.g. text/plain) is documented as a string
    errors: tuple[int, ...] = ()
    answers: Mapping[int, Answer] = field(default_factory=dict)
    path_params: Mapping[str, TypeAdapter[Any]] = field(default_factory=dict)
    alt_auth: tuple[str, ...] = ()  # security schemes accepted instead of the bearer token
    body_invalid: tuple[int, str] = (400, "bad_request")  # status and code of a refused body

    @property
    def operation_id(self) -> str:
        return f"{self.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', self.path).strip('_')}"

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        """Validate the request against the route's models, then run the handler."""
        path = {
            name: _path_value(adapter, name, request.match_info[name])
            for name, adapter in self.path_params.items()
        }
        query_model = None
        if self.query is not None:
            query_model = validate(
                self.query, query_values(request.query, _list_fields(self.query)), where="query"
            )
        elif request.query:
            name = next(iter(request.query))
            raise bad_request(f"{name}: is not a known parameter (this route takes none)", name)
        body_model = None
        if self.body is not None and not self.raw_body:
            raw, _ = await read_body(request, self.body_types)
            if not raw and self.body_required:
                raise ApiError(400, "malformed_json", "a JSON request body is required", field="")
            status, error = self.body_invalid
            body_model = validate(self.body, parse_json(raw) if raw else {}, status=status, error=error)
        return await self.handler(request, Inputs(path, query_model, body_model))


def route_of(request: web.Request) -> Route | None:
    """The declared route that `request` matched (None: no route, or a 404/405 of the router)."""
    owner = getattr(request.match_info.handler, "__self__", None)
    return owner if isinstance(owner, Route) else None


def _path_value(adapter: TypeAdapter[Any], name: str, value: str) -> str:
    try:
        return str(adapter.validate_python(value))
    except ValidationError as exc:
        problem = validation_error(exc, name)
        raise bad_request(f"{name}: {problem.detail.split(': ', 1)[-1]}", name) from None


def _list_fields(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation) if typing.get_origin(annotation) is not list else (annotation,)
        if any(typing.get_origin(arg) is list for arg in args):
            names.append(name)
    return names


class RouteTable:
    """Routes declared next to their handlers with `@table.route("GET /path", summary, ...)`, in
    declaration order. Paths are under `prefix` unless `prefixed=False` (health, a metrics page).
    `path_params` gives the type (with its format and length limits) of every path parameter name;
    `body_invalid` the status and code of a refused body on every route of the table."""

    def __init__(
        self,
        prefix: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        body_invalid: tuple[int, str] = (400, "bad_request"),
    ) -> None:
        self.prefix = prefix
        self._param_types = {name: TypeAdapter(kind) for name, kind in (path_params or {}).items()}
        self._body_invalid = body_invalid
        self._routes: list[Route] = []

    def route(
        self, operation: str, summary: str, *, prefixed: bool = True, **options: Any
    ) -> Callable[[RouteHandler], RouteHandler]:
        method, path = operation.split(" ", 1)
        full = self.prefix + path if prefixed else path
        names = _PATH_PARAM.findall(full)
        unknown = [name for name in names if name not in self._param_types]
        if unknown:
            raise ValueError(f"{operation}: no type declared for path parameter(s) {unknown}")
        params = {name: self._param_types[name] for name in names}
        options.setdefault("body_invalid", self._body_invalid)

        def declare(handler: RouteHandler) -> RouteHandler:
            self._routes.append(Route(method, full, handler, summary, path_params=params, **options))
            return handler

        return declare

    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)

    def install(self, app: web.Application) -> None:
        for route in self._routes:
            app.router.add_route(route.method, route.path, route.endpoint)


# -- serving the document ---------------------------------------------------------------------------

OPENAPI_KEY: Final = web.AppKey("openapi", dict[str, Any])


class Document(BaseModel):
    """An OpenAPI document."""

    model_config = ConfigDict(extra="allow")

    openapi: str


def serve_document(table: RouteTable) -> None:
    """Declare `GET <prefix>/openapi.json` on `table` (bearer token required): the document the app
    keeps under `OPENAPI_KEY`, which its builder sets from `build_document(...)`."""

    @table.route("GET /openapi.json", "This OpenAPI document", response=Document)
    async def openapi_document(request: web.Request, inputs: Inputs) -> web.Response:
        return web.json_response(request.app[OPENAPI_KEY])


# -- the document -----------------------------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "invalid request: the `field` of the answer names the parameter or body field at fault",
    401: "missing or invalid bearer token",
    403: "the credential was read and refused (e.g. an invalid link token)",
    404: "no such resource",
    409: "not allowed in the resource's current state",
    413: "request body over the size limit",
    415: "unsupported Content-Type",
    422: "invalid request body: the `field` of the answer names the body field at fault",
    429: "too many requests: retry after the `Retry-After` seconds",
    503: "a backend (database, lock backend) is unavailable, or the service is shutting down",
}
BEARER_SCHEME = {"bearerAuth": {"type": "http", "scheme": "bearer"}}


def build_document(
    routes: Iterable[Route],
    *,
    title: str,
    version: str,
    description: str,
    security_schemes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`: one operation per route, schemas from their models.
    `security_schemes` describes the routes' `alt_auth` schemes (the bearer scheme is built in)."""
    routes = tuple(routes)
    wanted: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.response is not None:
            wanted.append((route.response, "serialization"))
        wanted += [(a.model, "serialization") for a in route.answers.values() if a.model is not None]
    refs, definitions = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])  # type: ignore[index]

    error = {"application/json": {"schema": ref(ErrorBody, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {"summary": route.summary, "operationId": route.operation_id}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _simplify(adapter.json_schema())}
            for name, adapter in route.path_params.items()
        ]
        if route.query is not None:
            parameters += _query_parameters(route.query, schemas)
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            schema = ref(route.body, "validation")
            operation["requestBody"] = {
                "required": route.body_required,
                "content": {ctype: {"schema": schema} for ctype in route.body_types},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if route.response_type != JSON_TYPE:
            ok["content"] = {route.response_type: {"schema": {"type": "string"}}}
        elif route.response is not None:
            ok["content"] = {JSON_TYPE: {"schema": ref(route.response, "serialization")}}
        responses: dict[str, Any] = {str(route.ok_status): ok}
        for status, answer in route.answers.items():
            model = answer.model
            if answer.content_type != JSON_TYPE:
                content = {answer.content_type: {"schema": {"type": "string"}}}
            else:
                content = error if model is None else {JSON_TYPE: {"schema": ref(model, "serialization")}}
            responses[str(status)] = {"description": answer.description, "content": content}
        statuses = set(route.errors) | ({400} if parameters or route.body else set())
        if route.body is not None:
            statuses.add(route.body_invalid[0])
        if route.auth:
            statuses.add(401)
        for status in sorted(statuses):
            description = _ERROR_DESCRIPTIONS.get(status, "error")
            responses.setdefault(str(status), {"description": description, "content": error})
        responses["default"] = {"description": "any other error (JSON error shape)", "content": error}
        operation["responses"] = responses
        schemes = (["bearerAuth"] if route.auth else []) + list(route.alt_auth)
        operation["security"] = [{scheme: []} for scheme in schemes]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "securitySchemes": {**BEARER_SCHEME, **(security_schemes or {})},
            "schemas": {name: _simplify(schema) for name, schema in sorted(schemas.items())},
        },
        "security": [{"bearerAuth": []}],
    }


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(_simplify(prop))
        description = prop.pop("description", None) or model.model_fields[name].description
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        if prop.get("type") == "array":
            parameter["style"], parameter["explode"] = "form", True
        parameters.append(parameter)
    return parameters


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without null (a query parameter is given or left out)."""
    out = {key: value for key, value in schema.items() if not (key == "default" and value is None)}
    kinds = out.get("type")
    if isinstance(kinds, list) and "null" in kinds:
        rest = [kind for kind in kinds if kind != "null"]
        out["type"] = rest[0] if len(rest) == 1 else rest
    return out


def _simplify(schema: Any) -> Any:
    """Pydantic's JSON Schema, made plainer for readers and tools: `anyOf: [X, {"type": "null"}]`
    with a simple X becomes X with `"type": [<X's type>, "null"]`."""
    if isinstance(schema, list):
        return [_simplify(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _simplify(value) for key, value in schema.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = options[0] if options[1] == {"type": "null"} else options[1]
        if isinstance(other.get("type"), str):
            merged = {key: value for key, value in out.items() if key != "anyOf"}
            merged.update(other)
            merged["type"] = [other["type"], "null"]
            return merged
    return out
