"""The watchdog's only way into the orchestrator: an httpx async client of its REST API.

Used by the diagnostic steps (executions, trace, logs, checkpoints, metrics, provenance, agents), the
sweeps and the condition (running executions), and the playbooks (cancel, resume, execute, DAG update,
limits, agent restart). Every call has a timeout (`httpx.Timeout`), sends the bearer token, and converts
httpx errors at this boundary:

- connect errors, timeouts, other transport errors, 502/503/504 → `OrchestratorUnavailable`
- 400/422 → `BadRequest`, 401/403 → `Unauthorized`, 404 → `NotFound`, 409 → `Conflict`,
  any other 4xx/5xx → `OrchestratorError` (with the server's `detail` and `error` code)
- a 2xx answer that is not the documented JSON → `OrchestratorError`

Answers are parsed into the pydantic models of `watchdog_sdk.clients.orchestrator_models` (re-exported
here; `extra="allow"`, so fields the orchestrator adds later pass through); DAG definitions stay plain
dicts (their model belongs to the orchestrator).

Listing executions (`GET /executions`) follows the paginated contract: server-side filters
(`status`, `dag_id`, `over_timeout`, `no_timeout`, `started_before`), `limit` and `cursor` in,
`{"items", "next_cursor", "total"}` out, oldest first. `list_executions` follows `next_cursor` to the
last page, so a caller sees every matching run; `list_executions_page` gives one page and `total`;
`list_executions_of` asks about known runs by id (`execution_id`), 200 UUIDs to a request. An
orchestrator older than that contract answers `{"items"}` only: it ignored the filters and the cursor,
so that answer is taken as it is (one page, `paged=False`), and callers check each item themselves
(over its timeout, age) rather than trusting the filter.

Every request carries the W3C trace context (`traceparent`) of the span it is made in
(`inject_trace_context`, an httpx request hook; `watchdog.tracing` makes the spans).

The stuck-run signals (issue 16): `running_nodes` reads every page of `GET /running-nodes` (every
running node of every running run, oldest started first, with its attempt, progress and normal
duration: one paged call for the sweep, not one per run), `node_durations` a DAG's per-node history
(`GET /dags/{dag_id}/node-durations`), and `ExecutionQuery` carries the stuck-state filters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ValidationError

from watchdog_sdk.clients.orchestrator_models import (
    MAX_EXECUTION_IDS,
    MAX_EXECUTION_IDS_CHARS,
    MAX_PAGE,
    MAX_PAGES,
    AgentInfo,
    AgentRestart,
    Checkpoint,
    CheckpointOperations,
    Checkpoints,
    DbPool,
    Execution,
    ExecutionPage,
    ExecutionQuery,
    FailureStreak,
    Limits,
    LogLine,
    MetricSample,
    NodeDurations,
    NodeTrace,
    NormalDuration,
    OrchestratorMetrics,
    Provenance,
    ResumeResult,
    RunningNode,
    RunningNodesPage,
    Trace,
    iso_instant,
)
from watchdog_sdk.constants import ORCHESTRATOR_API_PREFIX
from watchdog_sdk.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OrchestratorError,
    OrchestratorUnavailable,
    Unauthorized,
)

__all__ = [
    "MAX_EXECUTION_IDS",
    "MAX_EXECUTION_IDS_CHARS",
    "MAX_PAGE",
    "MAX_PAGES",
    "AgentInfo",
    "AgentRestart",
    "Checkpoint",
    "CheckpointOperations",
    "Checkpoints",
    "DbPool",
    "Execution",
    "ExecutionPage",
    "ExecutionQuery",
    "FailureStreak",
    "Limits",
    "LogLine",
    "MetricSample",
    "NodeDurations",
    "NodeTrace",
    "NormalDuration",
    "OrchestratorClient",
    "OrchestratorMetrics",
    "Provenance",
    "ResumeResult",
    "RunningNode",
    "RunningNodesPage",
    "Trace",
]

ModelT = TypeVar("ModelT", bound=BaseModel)
PageT = TypeVar("PageT")

_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


TRACE_CONTEXT = TraceContextTextMapPropagator()


async def inject_trace_context(request: httpx.Request) -> None:
    """The current span (the watchdog's diagnosis or remediation) as W3C `traceparent` on the request,
    so the orchestrator's work joins the watchdog's trace; nothing outside a span."""
    TRACE_CONTEXT.inject(request.headers)


class OrchestratorClient:
    """Async client of the orchestrator REST API (`/api/v1/orchestrator/...`).

    Use as an async context manager, or call `aclose()`. `transport` is for tests (respx or
    `httpx.MockTransport`); production uses the default transport.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "gl-watchdog"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url + ORCHESTRATOR_API_PREFIX,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            event_hooks={"request": [inject_trace_context]},
        )

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying connection pool."""
        await self._http.aclose()

    # -- transport and error mapping -------------------------------------------------------------

    async def _send(self, method: str, url: str, shown: str | None = None, **options: Any) -> httpx.Response:
        """One request (`url` relative to the API, or absolute); a 4xx/5xx answer, a timeout or an
        unreachable orchestrator raised as this client's errors, naming `method` and `shown` (the
        path; `url` when None)."""
        what = f"{method} {shown or url}"
        try:
            response = await self._http.request(method, url, **options)
        except httpx.TimeoutException as exc:
            raise OrchestratorUnavailable(
                f"orchestrator at {self.base_url} timed out after {self.timeout:g}s "
                f"({what}: {type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise OrchestratorUnavailable(
                f"orchestrator at {self.base_url} unreachable ({what}): {_reason(exc)}"
            ) from exc
        if response.status_code >= 400:
            raise _error_for(response)
        return response

    async def _request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        response = await self._send(method, path, params=clean_params or None, json=json)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise OrchestratorError(
                response.status_code, f"{method} {path} answered with a body that is not JSON"
            ) from exc

    async def _get_model(self, model: type[ModelT], method: str, path: str, **kwargs: Any) -> ModelT:
        data = await self._request(method, path, **kwargs)
        return _parse(model, data, f"{method} {path}")

    # -- executions -------------------------------------------------------------------------------

    async def list_executions_page(
        self, query: ExecutionQuery, *, limit: int | None = None, cursor: str | None = None
    ) -> ExecutionPage:
        """One page of `GET /executions` with the server-side filters of `query`, oldest first.

        Pass the page's `next_cursor` back as `cursor`, with the same query, for the next page.
        """
        params = {**query.params(), "limit": limit, "cursor": cursor}
        data = await self._request("GET", "/executions", params=params)
        items, next_cursor, total = _page_fields(data, "GET /executions")
        executions = [_parse(Execution, item, "GET /executions item") for item in items]
        if "next_cursor" not in data:  # an orchestrator before pagination: its one answer is all
            return ExecutionPage(executions, None, None, paged=False)
        return ExecutionPage(executions, next_cursor, total, paged=True)

    async def list_executions(
        self,
        status: str | None = "running",
        dag_id: str | None = None,
        *,
        over_timeout: bool | None = None,
        no_timeout: bool | None = None,
        started_before: datetime | None = None,
        page_size: int | None = None,
    ) -> list[Execution]:
        """Every execution matching the filters (see `ExecutionQuery`), oldest first: each page,
        following `next_cursor`.

        `page_size` is each page's `limit` (None: the orchestrator's default page; MAX_PAGE for the
        fewest round trips). Nothing is silently cut off: a cursor handed out twice, or more than
        MAX_PAGES pages, raise OrchestratorError. Against an orchestrator before pagination this is
        its one (unfiltered) answer; see the module docstring.
        """
        query = ExecutionQuery(status, dag_id, over_timeout, no_timeout, started_before)
        return await self.list_matching(query, page_size=page_size)

    async def list_matching(self, query: ExecutionQuery, *, page_size: int | None = None) -> list[Execution]:
        """Every execution matching `query`, oldest first (each page; see `list_executions`)."""

        async def page(cursor: str | None) -> tuple[list[Execution], str | None]:
            found = await self.list_executions_page(query, limit=page_size, cursor=cursor)
            return found.items, found.next_cursor

        return await _every_page("GET /executions", page)

    async def list_executions_of(
        self, execution_ids: Iterable[str], status: str | None = None, *, page_size: int | None = MAX_PAGE
    ) -> list[Execution]:
        """The executions among `execution_ids` of `status` (one or several, comma-separated; None:
        any), oldest first within each request: `GET /executions?execution_id=...`, one request for as
        many as MAX_EXECUTION_IDS ids that fit MAX_EXECUTION_IDS_CHARS (200 UUIDs), one per such batch
        beyond. A run the orchestrator does not know is left out. An orchestrator from before the
        filter refuses it (`BadRequest`); of the unfiltered answer of one from before pagination, only
        the runs asked about are kept."""
        wanted = list(dict.fromkeys(execution_ids))
        found: list[Execution] = []
        for batch in _id_batches(wanted):
            found += await self.list_matching(
                ExecutionQuery(status, execution_ids=batch), page_size=page_size
            )
        asked = set(wanted)
        return [execution for execution in found if execution.execution_id in asked]

    async def count_executions(self, query: ExecutionQuery) -> int | None:
        """How many executions match `query` (the listing's exact `total`); None from an orchestrator
        that does not count (before pagination)."""
        return (await self.list_executions_page(query, limit=1)).total

    async def get_execution(self, execution_id: str) -> Execution:
        """`GET /executions/{id}`."""
        return await self._get_model(Execution, "GET", f"/executions/{_seg(execution_id)}")

    async def get_trace(self, execution_id: str) -> Trace:
        """`GET /executions/{id}/trace`."""
        return await self._get_model(Trace, "GET", f"/executions/{_seg(execution_id)}/trace")

    async def running_nodes_page(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        dag_id: str | None = None,
        started_before: datetime | None = None,
    ) -> RunningNodesPage:
        """One page of `GET /running-nodes` (oldest started first); pass `next_cursor` back as `cursor`
        with the same filters for the next page."""
        params = {
            "limit": limit,
            "cursor": cursor,
            "dag_id": dag_id,
            "started_before": None if started_before is None else iso_instant(started_before),
        }
        data = await self._request("GET", "/running-nodes", params=params)
        items, next_cursor, total = _page_fields(data, "GET /running-nodes")
        nodes = [_parse(RunningNode, item, "GET /running-nodes item") for item in items]
        return RunningNodesPage(nodes, next_cursor, total)

    async def running_nodes(
        self,
        *,
        dag_id: str | None = None,
        started_before: datetime | None = None,
        page_size: int | None = MAX_PAGE,
    ) -> list[RunningNode]:
        """Every running node of every running run (filtered by `dag_id`, `started_before`), oldest
        started first: each page of `GET /running-nodes`, following `next_cursor`."""

        async def page(cursor: str | None) -> tuple[list[RunningNode], str | None]:
            found = await self.running_nodes_page(
                limit=page_size, cursor=cursor, dag_id=dag_id, started_before=started_before
            )
            return found.items, found.next_cursor

        return await _every_page("GET /running-nodes", page)

    async def node_durations(self, dag_id: str) -> list[NodeDurations]:
        """`GET /dags/{dag_id}/node-durations`: each node's (and agent's) history of completed runs."""
        what = "GET /dags/{dag_id}/node-durations"
        data = await self._request("GET", f"/dags/{_seg(dag_id)}/node-durations")
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if not isinstance(nodes, list):
            raise OrchestratorError(200, f"{what} answered without a 'nodes' list")
        return [_parse(NodeDurations, item, f"{what} item") for item in nodes]

    async def cancel(self, execution_id: str) -> Execution:
        """`POST /executions/{id}/cancel` (409 `Conflict` when the run already finished)."""
        return await self._get_model(Execution, "POST", f"/executions/{_seg(execution_id)}/cancel")

    async def resume(self, execution_id: str) -> ResumeResult:
        """`POST /executions/{id}/resume` (409 `Conflict` while the run is still running)."""
        return await self._get_model(ResumeResult, "POST", f"/executions/{_seg(execution_id)}/resume")

    async def get_provenance(self, execution_id: str) -> Provenance:
        """`GET /executions/{id}/provenance`."""
        return await self._get_model(Provenance, "GET", f"/executions/{_seg(execution_id)}/provenance")

    async def get_logs(
        self, execution_id: str, node_id: str | None = None, limit: int = 200
    ) -> list[LogLine]:
        """`GET /executions/{id}/logs?node_id=&limit=`: recent structured log lines of the run."""
        data = await self._request(
            "GET", f"/executions/{_seg(execution_id)}/logs", params={"node_id": node_id, "limit": limit}
        )
        lines = data.get("lines") if isinstance(data, dict) else None
        if not isinstance(lines, list):
            raise OrchestratorError(200, "GET /executions/{id}/logs answered without a 'lines' list")
        return [_parse(LogLine, line, "log line") for line in lines]

    async def get_checkpoints(self, execution_id: str) -> Checkpoints:
        """`GET /checkpoints/{id}`."""
        return await self._get_model(Checkpoints, "GET", f"/checkpoints/{_seg(execution_id)}")

    async def get_metrics(self) -> OrchestratorMetrics:
        """`GET /metrics` (JSON): active, maximum and queued executions, max parallel nodes."""
        return await self._get_model(OrchestratorMetrics, "GET", "/metrics")

    async def scrape_metrics(self) -> list[MetricSample]:
        """`GET /metrics` at the service root: the Prometheus exposition, parsed (no Prometheus needed).

        The fallback of diagnosis steps 5 and 8 for an orchestrator whose JSON metrics lack their
        figures. The page grows with the running runs (a series per run), so it is parsed in a thread,
        off the event loop.
        """
        response = await self._send(
            "GET", self.base_url + "/metrics", "/metrics", headers={"Accept": "text/plain"}
        )
        try:
            return await asyncio.to_thread(_parse_exposition, response.text)
        except ValueError as exc:
            raise OrchestratorError(
                response.status_code, f"GET /metrics: unparsable exposition: {exc}"
            ) from exc

    # -- DAGs -------------------------------------------------------------------------------------

    async def get_dag(self, dag_id: str) -> dict[str, Any]:
        """`GET /dags/{dag_id}`: the DAG definition."""
        return _as_dict(await self._request("GET", f"/dags/{_seg(dag_id)}"), "GET /dags/{dag_id}")

    async def register_dag(self, dag: dict[str, Any]) -> dict[str, Any]:
        """`POST /dags`: register a DAG definition; returns it as stored."""
        return _as_dict(await self._request("POST", "/dags", json=dag), "POST /dags")

    async def update_dag(self, dag_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """`PUT /dags/{dag_id}`: partial update (e.g. one node's timeout_policy); returns the new DAG."""
        return _as_dict(await self._request("PUT", f"/dags/{_seg(dag_id)}", json=patch), "PUT /dags/{dag_id}")

    async def execute(
        self,
        dag_id: str,
        input_data: Any = None,
        *,
        checkpoint_enabled: bool = True,
        deterministic_mode: bool = True,
    ) -> Execution:
        """`POST /dags/{dag_id}/execute`: start a new run; returns the (queued or running) execution."""
        body = {
            "input_data": input_data if input_data is not None else {},
            "execution_options": {
                "checkpoint_enabled": checkpoint_enabled,
                "deterministic_mode": deterministic_mode,
            },
        }
        return await self._get_model(Execution, "POST", f"/dags/{_seg(dag_id)}/execute", json=body)

    # -- admin and agents -------------------------------------------------------------------------

    async def get_limits(self) -> Limits:
        """`GET /admin/limits`."""
        return await self._get_model(Limits, "GET", "/admin/limits")

    async def set_limits(
        self, *, max_parallel_nodes: int | None = None, max_concurrent_executions: int | None = None
    ) -> Limits:
        """`PUT /admin/limits`: change limits live; returns the limits now in force."""
        body = {
            k: v
            for k, v in {
                "max_parallel_nodes": max_parallel_nodes,
                "max_concurrent_executions": max_concurrent_executions,
            }.items()
            if v is not None
        }
        if not body:
            raise ValueError("set_limits needs max_parallel_nodes and/or max_concurrent_executions")
        return await self._get_model(Limits, "PUT", "/admin/limits", json=body)

    async def list_agents(self) -> list[AgentInfo]:
        """`GET /agents`: known agents with their restart count and running nodes."""
        data = await self._request("GET", "/agents")
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise OrchestratorError(200, "GET /agents answered without an 'items' list")
        return [_parse(AgentInfo, item, "GET /agents item") for item in items]

    async def restart_agent(self, agent_id: str) -> AgentRestart:
        """`POST /admin/agents/{agent_id}/restart`: restart an in-process agent worker."""
        return await self._get_model(AgentRestart, "POST", f"/admin/agents/{_seg(agent_id)}/restart")


async def _every_page(
    what: str, fetch: Callable[[str | None], Awaitable[tuple[list[PageT], str | None]]]
) -> list[PageT]:
    """Follow `next_cursor` from the first page to the last; nothing is silently cut off: a cursor
    handed out twice, or more than MAX_PAGES pages, raise OrchestratorError."""
    found: list[PageT] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        items, next_cursor = await fetch(cursor)
        found.extend(items)
        if next_cursor is None:
            return found
        if next_cursor in seen:
            raise OrchestratorError(200, f"{what} handed out the same cursor twice")
        seen.add(next_cursor)
        cursor = next_cursor
    raise OrchestratorError(200, f"{what} did not end within {MAX_PAGES} pages")


def _id_batches(execution_ids: Sequence[str]) -> list[tuple[str, ...]]:
    """`execution_ids` in order, in batches of at most MAX_EXECUTION_IDS whose query value (URL-encoded,
    joined by `%2C`) is at most MAX_EXECUTION_IDS_CHARS long."""
    batches: list[list[str]] = []
    room = 0
    for execution_id in execution_ids:
        cost = len(quote(execution_id, safe="")) + 3  # with its separator (the last one has none)
        if not batches or len(batches[-1]) == MAX_EXECUTION_IDS or cost > room:
            batches.append([])
            room = MAX_EXECUTION_IDS_CHARS + 3
        batches[-1].append(execution_id)
        room -= cost
    return [tuple(batch) for batch in batches]


def _page_fields(data: Any, what: str) -> tuple[list[Any], str | None, int | None]:
    """The `items`, `next_cursor` and `total` of a paginated answer, each checked."""
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise OrchestratorError(200, f"{what} answered without an 'items' list")
    next_cursor = data.get("next_cursor")
    total = data.get("total")
    if next_cursor is not None and (not isinstance(next_cursor, str) or not next_cursor):
        raise OrchestratorError(200, f"{what} answered a next_cursor that is not a string")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise OrchestratorError(200, f"{what} answered a total that is not a count")
    return items, next_cursor, total


def _parse_exposition(text: str) -> list[MetricSample]:
    return [
        MetricSample(sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _reason(exc: BaseException) -> str:
    """An exception's message, or its type when it has none (httpx raises some without one)."""
    return str(exc) or type(exc).__name__


def _seg(value: str) -> str:
    """One URL path segment, percent-encoded (an id never changes the path's shape)."""
    if not value:
        raise ValueError("an id in a URL path must not be empty")
    return quote(value, safe="")


def _parse(model: type[ModelT], data: Any, what: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OrchestratorError(200, f"{what}: unexpected answer ({where}: {first['msg']})") from exc


def _as_dict(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise OrchestratorError(200, f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _error_for(response: httpx.Response) -> Exception:
    status = response.status_code
    detail = response.reason_phrase or "error"
    code: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("message") or body.get("error") or detail)
        code = str(body["error"]) if body.get("error") is not None else None
    elif response.text:
        detail = response.text[:500]
    if status in _UNAVAILABLE_STATUSES:
        return OrchestratorUnavailable(f"orchestrator answered {status}: {detail}")
    if status in (400, 422):
        return BadRequest(status, detail, code)
    if status in (401, 403):
        return Unauthorized(status, detail, code)
    if status == 404:
        return NotFound(status, detail, code)
    if status == 409:
        return Conflict(status, detail, code)
    return OrchestratorError(status, detail, code)
