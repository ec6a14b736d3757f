"""The orchestrator's REST API (aiohttp): the routes the runbook's commands call.

Where it sits: `cli.py serve` builds the app with `build_app(service)` and runs it; tests run it on
loopback. Handlers read through `service.engine` and write through `service` (admission, locks). The
route table `ROUTES` (each handler declares its route) is the single source of the routes and of the
OpenAPI document (`openapi.py`).

Middlewares, outermost first:

- errors: every failure is JSON `{"error": <code>, "detail": <message>}` — 400 malformed JSON, invalid
  DAG (`detail` names the field; `field` also given) or bad parameter, 401, 404 unknown route or id, 405,
  409 wrong state, 413 body over `max_body_bytes`, 415 wrong content type, 503 store/locks down or
  shutting down. Unexpected exceptions are logged with their traceback server-side and answered 500
  without one.
- auth: `Authorization: Bearer <token>` on every route except `/healthz`, `/readyz` and `/metrics`;
  tokens from `api_tokens` and/or `api_token_file` (re-read when the file changes, e.g. a rotated
  Kubernetes secret), checked by `gl_common.auth` (constant-time), never logged. 401 carries
  `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gl_common import auth
from gl_common.auth import bearer_token
from orchestrator_core.api_models import ExecuteRequest, LimitsRequest, int_param, validate
from orchestrator_core.dag import MAX_DOCUMENT_DEPTH, check_document_shape, load_document
from orchestrator_core.errors import (
    BadRequest,
    ConfigError,
    DagValidationError,
    OrchestratorError,
    ServiceUnavailable,
    short_reason,
)
from orchestrator_core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from orchestrator_core.openapi import Route, RouteTable, build_openapi
from orchestrator_core.records import EXECUTION_STATUSES, ExecutionOptions
from orchestrator_core.service import OrchestratorService
from orchestrator_core.settings import (
    OrchestratorSettings,
)

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/orchestrator"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
MAX_LOG_LINES = 5000

SERVICE_KEY = web.AppKey("service", OrchestratorService)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiProblem(Exception):
    """An HTTP-level refusal raised inside handlers/middlewares (not a domain error)."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


def error_response(status: int, error: str, detail: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="gl-orchestrator"'} if status == 401 else None
    return web.json_response({"error": error, "detail": detail, **extra}, status=status, headers=headers)


# -- auth -------------------------------------------------------------------------------------------


class TokenSource(auth.TokenSource):
    """Accepted bearer tokens (`gl_common.auth`): `api_tokens` plus the lines of `api_token_file`."""

    @classmethod
    def from_settings(cls, settings: OrchestratorSettings) -> TokenSource:
        static = [token.get_secret_value() for token in settings.api_tokens]
        source = cls(static, settings.api_token_file)
        source.tokens()  # fail at start-up when the file is unreadable
        return source

    def tokens(self) -> list[str]:
        try:
            return super().tokens()
        except auth.TokenFileError as exc:
            raise ConfigError(f"api_token_file: {exc}") from exc


def _auth_middleware(tokens: TokenSource) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or not request.path.startswith(API_PREFIX):
            return await handler(request)
        presented = bearer_token(request.headers.get("Authorization", ""))
        if presented is None:
            raise ApiProblem(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
        try:
            accepted = tokens.accepts(presented)
        except ConfigError as exc:
            log.error("token source unavailable: %s", exc)
            raise ApiProblem(503, "auth_unavailable", "the server cannot read its API tokens") from exc
        if not accepted:
            raise ApiProblem(401, "unauthorized", "invalid bearer token")
        return await handler(request)

    return auth


# -- errors -----------------------------------------------------------------------------------------

_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiProblem as problem:
        return error_response(problem.status, problem.error, problem.detail, **problem.extra)
    except DagValidationError as exc:
        problems = [{"field": field, "message": message} for field, message in exc.problems]
        return error_response(400, exc.code, str(exc), field=exc.field, problems=problems)
    except BadRequest as exc:
        return error_response(400, exc.code, str(exc), field=exc.field)
    except OrchestratorError as exc:
        if exc.http_status >= 500:
            level = logging.WARNING if isinstance(exc, ServiceUnavailable) else logging.ERROR
            ids = dict(request.match_info)  # execution_id / dag_id / agent_id, for the runbook's grep
            log.log(level, "request %s %s failed: %s", request.method, request.path, exc, extra=ids)
            return error_response(exc.http_status, exc.code, short_reason(exc))
        return error_response(exc.http_status, exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(
            413, "payload_too_large", f"request body over the limit ({exc.text or ''})".strip()
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(exc.status, "http_error")
        detail = exc.reason
        if exc.status == 404:
            detail = f"no route {request.method} {request.path}"
        elif exc.status == 405:
            detail = f"method {request.method} not allowed on {request.path}"
        return error_response(exc.status, code, detail)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the orchestrator logs")


# -- request helpers --------------------------------------------------------------------------------


async def _body_bytes(request: web.Request, *, allow_yaml: bool = False) -> tuple[bytes, str]:
    """The raw body and its format ("json"/"yaml"); an empty body is b"". 415 on a wrong type."""
    body = await request.read()  # raises 413 past client_max_size
    if not body.strip():
        return b"", "json"
    ctype = request.content_type.lower()
    if ctype in JSON_TYPES:
        return body, "json"
    if allow_yaml and ctype in YAML_TYPES:
        return body, "yaml"
    accepted = "application/json" + (" or application/yaml" if allow_yaml else "")
    raise ApiProblem(
        415, "unsupported_media_type", f"Content-Type must be {accepted}, not {ctype or 'missing'}"
    )


async def _json_body(request: web.Request, *, required: bool = True) -> Any:
    body, _ = await _body_bytes(request)
    if not body:
        if required:
            raise ApiProblem(400, "malformed_json", "a JSON request body is required")
        return {}
    return _parse_json(body)


def _parse_json(body: bytes) -> Any:
    """The JSON value of a request body; 400 when malformed or deeper/larger than a document may be."""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiProblem(
            400, "bad_request", f"request body nested deeper than {MAX_DOCUMENT_DEPTH} levels"
        ) from None
    try:
        check_document_shape(value)
    except DagValidationError as exc:
        raise ApiProblem(400, "bad_request", f"request body {exc}") from None
    return value


def _service(request: web.Request) -> OrchestratorService:
    return request.app[SERVICE_KEY]


# -- handlers (each declares its route: method, path under API_PREFIX, summary, schemas) -----------

ROUTE_TABLE = RouteTable(API_PREFIX)


@ROUTE_TABLE.route(
    "GET /executions",
    "List executions (filter by status, dag_id)",
    response="ExecutionList",
    query=("status", "dag_id", "limit"),
)
async def list_executions(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in EXECUTION_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(EXECUTION_STATUSES)}", field="status")
    dag_id = request.query.get("dag_id") or None
    limit = int_param(request.query, "limit", 500, 1, 5000)
    records = await _service(request).engine.list_executions(status=status, dag_id=dag_id, limit=limit)
    return web.json_response({"items": [record.to_json() for record in records]})


@ROUTE_TABLE.route("GET /executions/{execution_id}", "One execution", response="Execution")
async def get_execution(request: web.Request) -> web.Response:
    record = await _service(request).engine.get_execution(request.match_info["execution_id"])
    return web.json_response(record.to_json())


def _fill_durations(trace: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Every node gets a numeric `duration_ms`: elapsed so far while running, 0 before it started.

    The runbook formats it with `{duration:.0f}` for every node, so `null` would crash step 2.
    """
    for node in trace.get("node_traces", {}).values():
        if node.get("duration_ms") is not None:
            continue
        started = node.get("started_at")
        if node.get("status") == "running" and started:
            begun = datetime.fromisoformat(started.replace("Z", "+00:00"))
            node["duration_ms"] = max(0.0, (now - begun).total_seconds() * 1000)
        else:
            node["duration_ms"] = 0.0
    return trace


@ROUTE_TABLE.route(
    "GET /executions/{execution_id}/trace", "Node-level trace of an execution", response="Trace"
)
async def get_trace(request: web.Request) -> web.Response:
    trace = await _service(request).engine.get_trace(request.match_info["execution_id"])
    return web.json_response(_fill_durations(trace.to_json(), datetime.now(UTC)))


@ROUTE_TABLE.route(
    "POST /executions/{execution_id}/cancel",
    "Cancel a queued or running execution (checkpoints kept)",
    response="Execution",
)
async def cancel_execution(request: web.Request) -> web.Response:
    await _json_body(request, required=False)
    record = await _service(request).cancel(request.match_info["execution_id"])
    return web.json_response(record.to_json())


@ROUTE_TABLE.route(
    "POST /executions/{execution_id}/resume",
    "Resume a stopped execution from its checkpoints",
    response="ResumeResult",
)
async def resume_execution(request: web.Request) -> web.Response:
    await _json_body(request, required=False)
    result = await _service(request).resume(request.match_info["execution_id"])
    return web.json_response(result.to_json(), status=202 if result.status == "queued" else 200)


@ROUTE_TABLE.route(
    "GET /executions/{execution_id}/provenance",
    "Provenance hash chain and its verification",
    response="Provenance",
)
async def get_provenance(request: web.Request) -> web.Response:
    report = await _service(request).engine.get_provenance(request.match_info["execution_id"])
    return web.json_response(report.to_json())


@ROUTE_TABLE.route(
    "GET /executions/{execution_id}/logs",
    "Recent structured log lines of a run",
    response="LogLines",
    query=("node_id", "limit"),
)
async def get_logs(request: web.Request) -> web.Response:
    service = _service(request)
    execution_id = request.match_info["execution_id"]
    limit = int_param(request.query, "limit", 200, 1, MAX_LOG_LINES)
    node_id = request.query.get("node_id") or None
    await service.engine.get_execution(execution_id)  # 404 for an unknown id
    lines = service.run_log.lines(execution_id, node_id=node_id, limit=limit)
    return web.json_response({"execution_id": execution_id, "lines": lines})


@ROUTE_TABLE.route("GET /checkpoints/{execution_id}", "Checkpoints of an execution", response="Checkpoints")
async def get_checkpoints(request: web.Request) -> web.Response:
    service = _service(request)
    execution_id = request.match_info["execution_id"]
    await service.engine.get_execution(execution_id)
    checkpoints = await service.engine.list_checkpoints(execution_id)
    return web.json_response(
        {"execution_id": execution_id, "checkpoints": [checkpoint.to_json() for checkpoint in checkpoints]}
    )


@ROUTE_TABLE.route("POST /dags", "Register a DAG definition", ok_status=201, body="Dag", response="Dag")
async def register_dag(request: web.Request) -> web.Response:
    body, fmt = await _body_bytes(request, allow_yaml=True)
    if not body:
        raise ApiProblem(400, "malformed_json", "a DAG definition is required in the request body")
    if fmt == "json":
        _parse_json(body)
    document = load_document(body, "yaml" if fmt == "yaml" else "json")  # duplicate keys -> 400
    if not isinstance(document, dict):
        raise DagValidationError([("", f"a DAG must be an object, not {type(document).__name__}")])
    dag = await _service(request).engine.register_dag(document)
    return web.json_response(dag.to_document(), status=201)


@ROUTE_TABLE.route("GET /dags/{dag_id}", "Latest version of a DAG", response="Dag")
async def get_dag(request: web.Request) -> web.Response:
    dag = await _service(request).engine.get_dag(request.match_info["dag_id"])
    return web.json_response(dag.to_document())


@ROUTE_TABLE.route(
    "PUT /dags/{dag_id}", "Partial update (deep merge), version bumped", body="DagPatch", response="Dag"
)
async def update_dag(request: web.Request) -> web.Response:
    patch = await _json_body(request)
    if not isinstance(patch, dict) or not patch:
        raise BadRequest("the partial update must be a non-empty JSON object", field="")
    engine = _service(request).engine
    dag_id = request.match_info["dag_id"]
    nodes = patch.get("nodes")
    if isinstance(nodes, dict):
        current = await engine.get_dag(dag_id)  # 404 first for an unknown DAG
        # A mistyped node id in the runbook's Option 6 would otherwise read "agent_id: Field required".
        typos = [
            node_id
            for node_id, node in nodes.items()
            if node_id not in current.nodes and isinstance(node, dict) and "agent_id" not in node
        ]
        if typos:
            known = ", ".join(sorted(current.nodes))
            raise DagValidationError(
                [
                    (f"nodes.{node_id}", f"DAG {dag_id} has no node {node_id!r} (its nodes: {known})")
                    for node_id in typos
                ]
            )
    dag = await engine.update_dag(dag_id, patch)
    return web.json_response(dag.to_document())


@ROUTE_TABLE.route(
    "POST /dags/{dag_id}/execute",
    "Queue a run of the DAG",
    ok_status=202,
    body="ExecuteRequest",
    response="Execution",
)
async def execute_dag(request: web.Request) -> web.Response:
    body = validate(ExecuteRequest, await _json_body(request, required=False))
    options = ExecutionOptions.from_json(
        body.execution_options.model_dump() if body.execution_options else None
    )
    record = await _service(request).submit(request.match_info["dag_id"], body.input_data, options)
    return web.json_response(record.to_json(), status=202)


@ROUTE_TABLE.route("GET /metrics", "Admission figures", response="Limits")
@ROUTE_TABLE.route("GET /admin/limits", "Current limits", response="Limits")
async def get_limits(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).limits_json())


@ROUTE_TABLE.route(
    "PUT /admin/limits", "Change limits live on every replica", body="LimitsRequest", response="Limits"
)
async def put_limits(request: web.Request) -> web.Response:
    body = validate(LimitsRequest, await _json_body(request))
    if body.max_parallel_nodes is None and body.max_concurrent_executions is None:
        raise BadRequest("give max_parallel_nodes and/or max_concurrent_executions", field="")
    limits = await _service(request).set_limits(
        max_parallel_nodes=body.max_parallel_nodes, max_concurrent_executions=body.max_concurrent_executions
    )
    return web.json_response(limits)


@ROUTE_TABLE.route(
    "DELETE /admin/limits",
    "Drop the live limits: every replica goes back to its configured limits",
    response="Limits",
)
async def delete_limits(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).clear_limits())


@ROUTE_TABLE.route("GET /agents", "Registered agents", response="AgentList")
async def list_agents(request: web.Request) -> web.Response:
    return web.json_response({"items": _service(request).registry.describe()})


@ROUTE_TABLE.route(
    "POST /admin/agents/{agent_id}/restart", "Restart an in-process agent worker", response="AgentRestart"
)
async def restart_agent(request: web.Request) -> web.Response:
    await _json_body(request, required=False)
    service = _service(request)
    result = service.registry.restart(request.match_info["agent_id"])
    for execution_id, node_id in result.interrupted:
        service.run_log.warning(
            "agent restarted under a running attempt",
            execution_id=execution_id,
            node_id=node_id,
            agent_id=result.agent_id,
        )
    return web.json_response(result.to_json())


@ROUTE_TABLE.route("GET /openapi.json", "This OpenAPI document")
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


@ROUTE_TABLE.route("GET /healthz", "Liveness", auth=False, prefixed=False)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "replica_id": _service(request).replica_id})


@ROUTE_TABLE.route("GET /readyz", "Readiness: store and lock backend reachable", auth=False, prefixed=False)
async def readyz(request: web.Request) -> web.Response:
    checks = await _service(request).readiness()
    if all(value == "ok" for value in checks.values()):
        return web.json_response({"status": "ready", "checks": checks})
    failing = ", ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
    return error_response(503, "not_ready", failing, checks=checks)


@ROUTE_TABLE.route("GET /metrics", "Prometheus exposition", auth=False, prefixed=False)
async def prometheus_metrics(request: web.Request) -> web.Response:
    body = _service(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


# -- route table ------------------------------------------------------------------------------------


# In the order the routes were declared above (the OpenAPI document lists them so).
ROUTES: tuple[Route, ...] = ROUTE_TABLE.routes()

OPENAPI_KEY = web.AppKey("openapi", dict)


def build_app(service: OrchestratorService, tokens: TokenSource | None = None) -> web.Application:
    """The aiohttp application for one service instance."""
    tokens = tokens or TokenSource.from_settings(service.settings)
    app = web.Application(
        middlewares=[_error_middleware, _auth_middleware(tokens)],
        client_max_size=service.settings.max_body_bytes,
    )
    app[SERVICE_KEY] = service
    app[OPENAPI_KEY] = build_openapi(ROUTES)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    return app
