"""The orchestrator's REST API (aiohttp): the routes the runbook's commands and the watchdog call.

Where it sits: `cli.py serve` builds the app with `build_app(service)` and runs it; tests run it on
loopback. Handlers read through `service.engine` and write through `service` (admission, locks). Each
handler declares its route on `ROUTE_TABLE` (a `gl_common.openapi.RouteTable`) with the models of
`api_models.py`: the table registers the routes, validates every request against those models before
the handler runs, and builds the OpenAPI document served at `GET /api/v1/orchestrator/openapi.json`.

Middlewares, outermost first:

- errors (`gl_common.http.error_middleware`): every failure is JSON `{"error": <code>, "detail":
  <message>}` — 400 malformed JSON, invalid DAG (`detail` names the field; `field` and `problems`
  also given) or a bad id, parameter or body field (`field` names it), 401, 404 unknown route or id,
  405 (with `Allow`), 409 wrong state, 413 body over `max_body_bytes`, 415 wrong content type, 503
  store/locks down or shutting down. Unexpected exceptions are logged with their traceback
  server-side and answered 500 without one.
- auth (`gl_common.auth.bearer_auth`, shared with the watchdog): `Authorization: Bearer <token>` on
  every route except `/healthz`, `/readyz` and `/metrics`, checked before anything else (no
  validation, no lookup before it); tokens from `api_tokens` and/or `api_token_file` (re-read when the
  file changes, e.g. a rotated Kubernetes secret), compared in constant time, never logged. 401
  carries `WWW-Authenticate: Bearer`; 503 `auth_unavailable` when the token file cannot be read.
- tracing (`orchestrator_core.tracing.trace_middleware`): each authenticated request runs in a span
  continuing the caller's W3C `traceparent` (when spans are exported at all).

Lists: `GET /executions` is paginated (keyset, `next_cursor`, exact `total`); every other list is
bounded — agents by the registry fixed at start-up, a run's log lines by `limit` and the ring buffer,
its checkpoints, trace and chain by its DAG's nodes (a DAG document is bounded by `max_body_bytes`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gl_common.auth import TokenSource, bearer_auth
from gl_common.clock import utc_now
from gl_common.http import (
    JSON_TYPE,
    ApiError,
    error_middleware,
    json_model_response,
    parse_json,
    read_body,
)
from gl_common.openapi import OPENAPI_KEY, Answer, Inputs, Route, RouteTable, build_document, serve_document
from orchestrator_core import api_signals
from orchestrator_core.api_models import (
    PATH_PARAMS,
    AgentList,
    AgentRestart,
    Checkpoints,
    DagPatch,
    EmptyBody,
    ExecuteRequest,
    Execution,
    ExecutionListQuery,
    ExecutionPage,
    Health,
    Limits,
    LimitsRequest,
    LogLines,
    LogsQuery,
    Metrics,
    NotReady,
    Provenance,
    Ready,
    ResumeOut,
    Trace,
    decode_cursor,
    encode_cursor,
)
from orchestrator_core.api_signals import SERVICE_KEY, gone_owners, owner_liveness, trace_signals
from orchestrator_core.dag import MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_VALUES, DagDefinition, load_document
from orchestrator_core.errors import (
    BadRequest,
    DagValidationError,
    OrchestratorError,
    ServiceUnavailable,
    short_reason,
)
from orchestrator_core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from orchestrator_core.records import ExecutionOptions, ExecutionRecord
from orchestrator_core.service import OrchestratorService
from orchestrator_core.tracing import trace_middleware

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/orchestrator"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
API_TITLE = "gl-orchestrator"
API_VERSION = "1"


# -- errors -----------------------------------------------------------------------------------------


def _translate(request: web.Request, exc: Exception) -> ApiError | None:
    """The orchestrator's exceptions as HTTP answers (`gl_common.http.error_middleware`)."""
    if isinstance(exc, DagValidationError):
        problems = [{"field": field, "message": message} for field, message in exc.problems]
        return ApiError(400, exc.code, str(exc), field=exc.field, problems=problems)
    if isinstance(exc, BadRequest):
        return ApiError(400, exc.code, str(exc), field=exc.field)
    if not isinstance(exc, OrchestratorError):
        return None
    if exc.http_status >= 500:
        level = logging.WARNING if isinstance(exc, ServiceUnavailable) else logging.ERROR
        ids = dict(request.match_info)  # execution_id / dag_id / agent_id, for the runbook's grep
        log.log(level, "request %s %s failed: %s", request.method, request.path, exc, extra=ids)
        return ApiError(exc.http_status, exc.code, short_reason(exc))
    return ApiError(exc.http_status, exc.code, str(exc))


# -- helpers ----------------------------------------------------------------------------------------


def _service(request: web.Request) -> OrchestratorService:
    return request.app[SERVICE_KEY]


def _respond(model: type[BaseModel], data: Any, status: int = 200) -> web.Response:
    """An answer shaped by its documented model."""
    return json_model_response(model.model_validate(data), status)


def _execution(
    record: ExecutionRecord, default_timeout: float | None, alive: dict[str | None, bool | None] | None = None
) -> dict[str, Any]:
    """The API's execution object: `timeout_seconds` is the effective timeout (the DAG's, else the
    default `default_execution_timeout_seconds`), `timeout_is_default` says which; `owner_alive`
    from `alive` (the owners' heartbeats) for a running run."""
    data = record.to_json()
    if record.timeout_seconds is None:
        data["timeout_seconds"] = default_timeout
    data["timeout_is_default"] = record.timeout_seconds is None and default_timeout is not None
    data["owner_alive"] = (alive or {}).get(record.owner) if record.status == "running" else None
    return data


async def _liveness(request: web.Request, records: list[ExecutionRecord]) -> dict[str | None, bool | None]:
    """The heartbeats of the running runs' owners among `records`."""
    return await owner_liveness(_service(request), {r.owner for r in records if r.status == "running"})


def _default_timeout(request: web.Request) -> float | None:
    return _service(request).settings.default_execution_timeout_seconds


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


# -- handlers (each declares its route: method, path under API_PREFIX, summary, models) ------------

ROUTE_TABLE = RouteTable(API_PREFIX, path_params=PATH_PARAMS)
_READ = (404, 503)
_ACT = (404, 409, 413, 415, 503)


@ROUTE_TABLE.route(
    "GET /executions",
    "List executions: server-side filters, oldest first, keyset pages with an exact total",
    query=ExecutionListQuery,
    response=ExecutionPage,
    errors=(503,),
)
async def list_executions(request: web.Request, inputs: Inputs) -> web.Response:
    query = inputs.query(ExecutionListQuery)
    after = decode_cursor(query)
    default = _default_timeout(request)
    service = _service(request)
    owners = None if query.owner_gone is None else await gone_owners(service, query.owner_gone)
    page = await service.engine.page_executions(
        query.to_filter(default, owners), after=after, limit=query.limit
    )
    alive = await _liveness(request, page.records)
    return _respond(
        ExecutionPage,
        {
            "items": [_execution(record, default, alive) for record in page.records],
            "next_cursor": encode_cursor(page.next, query) if page.next is not None else None,
            "total": page.total,
        },
    )


@ROUTE_TABLE.route("GET /executions/{execution_id}", "One execution", response=Execution, errors=_READ)
async def get_execution(request: web.Request, inputs: Inputs) -> web.Response:
    record = await _service(request).engine.get_execution(inputs.path["execution_id"])
    alive = await _liveness(request, [record])
    return _respond(Execution, _execution(record, _default_timeout(request), alive))


@ROUTE_TABLE.route(
    "GET /executions/{execution_id}/trace", "Node-level trace of an execution", response=Trace, errors=_READ
)
async def get_trace(request: web.Request, inputs: Inputs) -> web.Response:
    service = _service(request)
    trace = await service.engine.get_trace(inputs.path["execution_id"])
    return _respond(Trace, await trace_signals(service, _fill_durations(trace.to_json(), utc_now())))


@ROUTE_TABLE.route(
    "POST /executions/{execution_id}/cancel",
    "Cancel a queued or running execution (checkpoints kept)",
    body=EmptyBody,
    response=Execution,
    errors=_ACT,
)
async def cancel_execution(request: web.Request, inputs: Inputs) -> web.Response:
    record = await _service(request).cancel(inputs.path["execution_id"])
    return _respond(Execution, _execution(record, _default_timeout(request)))


@ROUTE_TABLE.route(
    "POST /executions/{execution_id}/resume",
    "Resume a stopped execution from its checkpoints",
    body=EmptyBody,
    response=ResumeOut,
    errors=_ACT,
    answers={
        202: Answer(
            "queued: this replica runs max_concurrent_executions already; the run resumes from its "
            "checkpoints when admitted",
            ResumeOut,
        )
    },
)
async def resume_execution(request: web.Request, inputs: Inputs) -> web.Response:
    result = await _service(request).resume(inputs.path["execution_id"])
    return _respond(ResumeOut, result.to_json(), status=202 if result.status == "queued" else 200)


@ROUTE_TABLE.route(
    "GET /executions/{execution_id}/provenance",
    "Provenance hash chain and its verification",
    response=Provenance,
    errors=_READ,
)
async def get_provenance(request: web.Request, inputs: Inputs) -> web.Response:
    report = await _service(request).engine.get_provenance(inputs.path["execution_id"])
    return _respond(Provenance, report.to_json())


@ROUTE_TABLE.route(
    "GET /executions/{execution_id}/logs",
    "Recent structured log lines of a run (the last `limit` of those held)",
    query=LogsQuery,
    response=LogLines,
    errors=_READ,
)
async def get_logs(request: web.Request, inputs: Inputs) -> web.Response:
    service = _service(request)
    execution_id = inputs.path["execution_id"]
    query = inputs.query(LogsQuery)
    await service.engine.get_execution(execution_id)  # 404 for an unknown id
    held = service.run_log.lines(execution_id, node_id=query.node_id, limit=2**31)
    lines = held[-query.limit :]
    return _respond(LogLines, {"execution_id": execution_id, "lines": lines, "total": len(held)})


@ROUTE_TABLE.route(
    "GET /checkpoints/{execution_id}", "Checkpoints of an execution", response=Checkpoints, errors=_READ
)
async def get_checkpoints(request: web.Request, inputs: Inputs) -> web.Response:
    service = _service(request)
    execution_id = inputs.path["execution_id"]
    await service.engine.get_execution(execution_id)
    checkpoints = await service.engine.list_checkpoints(execution_id)
    return _respond(
        Checkpoints,
        {"execution_id": execution_id, "checkpoints": [checkpoint.to_json() for checkpoint in checkpoints]},
    )


@ROUTE_TABLE.route(
    "POST /dags",
    "Register a DAG definition (JSON or YAML)",
    ok_status=201,
    body=DagDefinition,
    body_required=True,
    body_types=(JSON_TYPE, *YAML_TYPES),
    raw_body=True,
    response=DagDefinition,
    errors=(413, 415, 503),
)
async def register_dag(request: web.Request, inputs: Inputs) -> web.Response:
    body, ctype = await read_body(request, (JSON_TYPE, *YAML_TYPES))
    if not body:
        raise ApiError(400, "malformed_json", "a DAG definition is required in the request body", field="")
    if ctype == JSON_TYPE:
        parse_json(body, max_depth=MAX_DOCUMENT_DEPTH, max_values=MAX_DOCUMENT_VALUES)
    # Duplicate keys, depth, size, unstorable strings (YAML too) -> 400 naming the problem.
    document = load_document(body, "json" if ctype == JSON_TYPE else "yaml")
    if not isinstance(document, dict):
        raise DagValidationError([("", f"a DAG must be an object, not {type(document).__name__}")])
    dag = await _service(request).engine.register_dag(document)
    return web.json_response(dag.to_document(), status=201)


@ROUTE_TABLE.route("GET /dags/{dag_id}", "Latest version of a DAG", response=DagDefinition, errors=_READ)
async def get_dag(request: web.Request, inputs: Inputs) -> web.Response:
    dag = await _service(request).engine.get_dag(inputs.path["dag_id"])
    return web.json_response(dag.to_document())


@ROUTE_TABLE.route(
    "PUT /dags/{dag_id}",
    "Partial update (deep merge), version bumped",
    body=DagPatch,
    body_required=True,
    response=DagDefinition,
    errors=(404, 413, 415, 503),
)
async def update_dag(request: web.Request, inputs: Inputs) -> web.Response:
    patch = inputs.body(DagPatch).to_patch()
    engine = _service(request).engine
    dag_id = inputs.path["dag_id"]
    nodes = patch.get("nodes")
    if nodes:
        current = await engine.get_dag(dag_id)  # 404 first for an unknown DAG
        # A mistyped node id in the runbook's Option 6 would otherwise read "agent_id: Field required".
        typos = [
            node_id
            for node_id, node in nodes.items()
            if node_id not in current.nodes and "agent_id" not in node
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
    body=ExecuteRequest,
    response=Execution,
    errors=(404, 413, 415, 503),
)
async def execute_dag(request: web.Request, inputs: Inputs) -> web.Response:
    body = inputs.body(ExecuteRequest)
    options = ExecutionOptions.from_json(
        body.execution_options.model_dump() if body.execution_options else None
    )
    record = await _service(request).submit(inputs.path["dag_id"], body.input_data, options)
    return _respond(Execution, _execution(record, _default_timeout(request)), status=202)


@ROUTE_TABLE.route(
    "GET /metrics",
    "Admission figures, limits, the database pool and checkpoint operations (runbook steps 5 and 8)",
    response=Metrics,
    errors=(503,),
)
async def get_metrics(request: web.Request, inputs: Inputs) -> web.Response:
    service = _service(request)
    figures = await service.limits_json()
    pool = service.engine.pool_stats()
    figures["db_pool"] = None if pool is None else {"active": pool.checked_out, "pending": pool.pending}
    figures["checkpoint_operations"] = [
        {"operation": operation, "status": status, "count": count}
        for operation, status, count in service.metrics.checkpoint_counts()
    ]
    return _respond(Metrics, figures)


@ROUTE_TABLE.route("GET /admin/limits", "Current limits", response=Limits, errors=(503,))
async def get_limits(request: web.Request, inputs: Inputs) -> web.Response:
    return _respond(Limits, await _service(request).limits_json())


@ROUTE_TABLE.route(
    "PUT /admin/limits",
    "Change limits live on every replica",
    body=LimitsRequest,
    body_required=True,
    response=Limits,
    errors=(413, 415, 503),
)
async def put_limits(request: web.Request, inputs: Inputs) -> web.Response:
    body = inputs.body(LimitsRequest)
    limits = await _service(request).set_limits(
        max_parallel_nodes=body.max_parallel_nodes, max_concurrent_executions=body.max_concurrent_executions
    )
    return _respond(Limits, limits)


@ROUTE_TABLE.route(
    "DELETE /admin/limits",
    "Drop the live limits: every replica goes back to its configured limits",
    response=Limits,
    errors=(503,),
)
async def delete_limits(request: web.Request, inputs: Inputs) -> web.Response:
    return _respond(Limits, await _service(request).clear_limits())


@ROUTE_TABLE.route(
    "GET /agents", "Registered agents (all of them: the set is fixed at start-up)", response=AgentList
)
async def list_agents(request: web.Request, inputs: Inputs) -> web.Response:
    return _respond(AgentList, {"items": _service(request).registry.describe()})


@ROUTE_TABLE.route(
    "POST /admin/agents/{agent_id}/restart",
    "Restart an in-process agent worker",
    body=EmptyBody,
    response=AgentRestart,
    errors=(404, 413, 415),
)
async def restart_agent(request: web.Request, inputs: Inputs) -> web.Response:
    service = _service(request)
    result = service.registry.restart(inputs.path["agent_id"])
    for execution_id, node_id in result.interrupted:
        service.run_log.warning(
            "agent restarted under a running attempt",
            execution_id=execution_id,
            node_id=node_id,
            agent_id=result.agent_id,
        )
    return _respond(AgentRestart, result.to_json())


api_signals.declare(ROUTE_TABLE)  # progress, node durations, running nodes (issue 16)
serve_document(ROUTE_TABLE)


@ROUTE_TABLE.route("GET /healthz", "Liveness", auth=False, prefixed=False, response=Health)
async def healthz(request: web.Request, inputs: Inputs) -> web.Response:
    return _respond(Health, {"status": "ok", "replica_id": _service(request).replica_id})


@ROUTE_TABLE.route(
    "GET /readyz",
    "Readiness: store and lock backend reachable",
    auth=False,
    prefixed=False,
    response=Ready,
    answers={503: Answer("not ready: `checks` names the dependency that is not", NotReady)},
)
async def readyz(request: web.Request, inputs: Inputs) -> web.Response:
    checks = await _service(request).readiness()
    if all(value == "ok" for value in checks.values()):
        return _respond(Ready, {"status": "ready", "checks": checks})
    failing = ", ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
    return _respond(NotReady, {"error": "not_ready", "detail": failing, "checks": checks}, status=503)


@ROUTE_TABLE.route(
    "GET /metrics", "Prometheus exposition", auth=False, prefixed=False, response_type="text/plain"
)
async def prometheus_metrics(request: web.Request, inputs: Inputs) -> web.Response:
    body = _service(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


# -- the app ----------------------------------------------------------------------------------------


# In the order the routes were declared above (the OpenAPI document lists them so).
ROUTES: tuple[Route, ...] = ROUTE_TABLE.routes()


def build_openapi() -> dict[str, Any]:
    """The OpenAPI document of the orchestrator API (served at `GET /api/v1/orchestrator/openapi.json`)."""
    return build_document(
        ROUTES,
        title=API_TITLE,
        version=API_VERSION,
        description="The orchestrator REST API used by the stuck-DAG runbook and the watchdog.",
    )


def build_app(service: OrchestratorService, tokens: TokenSource | None = None) -> web.Application:
    """The aiohttp application for one service instance (`tokens`: the settings' by default)."""
    tokens = tokens or service.settings.token_source()
    app = web.Application(
        middlewares=[
            error_middleware(_translate, internal_detail="internal error; see the orchestrator logs"),
            bearer_auth(tokens, api_prefix=API_PREFIX, service="orchestrator", realm="gl-orchestrator"),
            trace_middleware(service.tracer, API_PREFIX),
        ],
        client_max_size=service.settings.max_body_bytes,
    )
    app[SERVICE_KEY] = service
    app[OPENAPI_KEY] = build_openapi()
    ROUTE_TABLE.install(app)
    return app
