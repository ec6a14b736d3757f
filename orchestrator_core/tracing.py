"""OpenTelemetry spans for executions and node attempts.

Where it sits: `service.OrchestratorService` owns one `RunTracer` and feeds it the engine's observer
events: one span per execution run (`dag.execution`) and one child span per node attempt
(`dag.node`). Attributes are the ones the runbook's step 7 searches for in Tempo:
`execution_id`, `dag_id`, `node_id`, `agent_id`, `attempt`; resource `service.name` is
`orchestrator-service`.

Export: an OTLP/HTTP exporter (batching) only when `otlp_endpoint` is configured; otherwise the
service does not feed the tracer at all (no spans are made). Tests pass their own exporter (the
SDK's `InMemorySpanExporter`), which is attached with a simple (synchronous) processor. The tracer
provider belongs to the service instance; this module never touches the global provider.

Continuing the caller's trace: `trace_middleware` (installed by `api.build_app`, inside auth) runs
every authenticated API request in a server span (`POST /api/v1/orchestrator/executions/
{execution_id}/cancel`, ...) that is a child of the W3C `traceparent` the caller sent (the watchdog
sends its playbook action's); without one, the span starts a trace. The one run a request starts
(resume, execute) has its `dag.execution` span as the request span's child; a run admitted from the
queue when another ends, or taken over from another replica, starts its own trace (`_Request`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gl_common.tracing import build_tracer_provider as build_provider
from orchestrator_core.events import EngineObserver, ExecutionEvent, NodeAttemptEvent

SERVICE_NAME = "orchestrator-service"
EXECUTION_SPAN = "dag.execution"
NODE_SPAN = "dag.node"


def build_tracer_provider(
    otlp_endpoint: str | None, *, exporter: SpanExporter | None = None, service_name: str = SERVICE_NAME
) -> TracerProvider:
    """The orchestrator's provider (`gl_common.tracing.build_tracer_provider`, named orchestrator-service)."""
    return build_provider(otlp_endpoint, exporter=exporter, service_name=service_name)


_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class _Request:
    """The request whose work runs in this task and in the tasks and callbacks it creates (which copy
    the context, and with it this one object): the parent of the one run it starts. That run claims
    it, so that what its copies start later (the admission of the next queued run when the run
    ends) is not taken for the request's."""

    span: SpanContext
    claimed: bool = False


_STARTED_BY: ContextVar[_Request | None] = ContextVar("orchestrator_request", default=None)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Open:
    execution: Span
    dag_id: str
    nodes: dict[tuple[str, int], Span] = field(default_factory=dict)


class RunTracer:
    """Opens and closes execution and node-attempt spans, keyed by ids from engine events."""

    def __init__(self, provider: TracerProvider, *, enabled: bool = True) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("orchestrator_core")
        self._open: dict[str, _Open] = {}
        self.enabled = enabled  # False: spans go nowhere, so requests make none

    @contextmanager
    def request_span(
        self, name: str, headers: Mapping[str, str], attributes: dict[str, str]
    ) -> Iterator[Span | None]:
        """A server span, child of the caller's W3C trace context in `headers`, current while the
        block runs; None (no span) when tracing is off."""
        if not self.enabled:
            yield None
            return
        parent = _PROPAGATOR.extract(headers)
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = _STARTED_BY.set(_Request(span.get_span_context()))
            try:
                yield span
            finally:
                _STARTED_BY.reset(token)

    def execution_started(self, execution_id: str, dag_id: str) -> None:
        if execution_id in self._open:
            return
        span = self._tracer.start_span(
            EXECUTION_SPAN,
            context=_claim_request(),
            attributes={"execution_id": execution_id, "dag_id": dag_id},
        )
        self._open[execution_id] = _Open(span, dag_id)

    def execution_ended(self, execution_id: str, status: str, error: str | None = None) -> None:
        record = self._open.pop(execution_id, None)
        if record is None:
            return
        for span in record.nodes.values():  # nodes still open when the run stops (cancel, shutdown)
            span.set_attribute("status", "cancelled")
            span.end()
        record.execution.set_attribute("status", status)
        if status in ("failed", "interrupted"):
            record.execution.set_status(Status(StatusCode.ERROR, error or status))
        elif status == "completed":
            record.execution.set_status(Status(StatusCode.OK))
        record.execution.end()

    def node_started(self, execution_id: str, node_id: str, agent_id: str, attempt: int) -> None:
        record = self._open.get(execution_id)
        if record is None:
            return
        span = self._tracer.start_span(
            NODE_SPAN,
            context=set_span_in_context(record.execution),
            attributes={
                "execution_id": execution_id,
                "dag_id": record.dag_id,
                "node_id": node_id,
                "agent_id": agent_id,
                "attempt": attempt,
            },
        )
        record.nodes[(node_id, attempt)] = span

    def node_ended(
        self, execution_id: str, node_id: str, attempt: int, status: str, error: str | None = None
    ) -> None:
        record = self._open.get(execution_id)
        if record is None:
            return
        span = record.nodes.pop((node_id, attempt), None)
        if span is None:
            return
        span.set_attribute("status", status)
        if status == "completed":
            span.set_status(Status(StatusCode.OK))
        elif status in ("failed", "timed_out"):
            span.set_status(Status(StatusCode.ERROR, error or status))
        span.end()

    def shutdown(self) -> None:
        """End what is still open and flush exporters (bounded by the exporters' own timeouts)."""
        for execution_id in list(self._open):
            self.execution_ended(execution_id, "interrupted", "service stopped")
        self._provider.shutdown()


def _claim_request() -> Context:
    """The parent of a run whose task starts now: the request that started it, once; else none."""
    request = _STARTED_BY.get()
    if request is None or request.claimed:
        return Context()
    request.claimed = True
    return set_span_in_context(NonRecordingSpan(request.span))


class TracingObserver(EngineObserver):
    """Feeds engine events into a `RunTracer`."""

    def __init__(self, tracer: RunTracer) -> None:
        self.tracer = tracer

    def execution_started(self, event: ExecutionEvent) -> None:
        self.tracer.execution_started(event.execution_id, event.dag_id)

    def execution_finished(self, event: ExecutionEvent) -> None:
        self.tracer.execution_ended(event.execution_id, event.status, event.error)

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        self.tracer.node_started(event.execution_id, event.node_id, event.agent_id, event.attempt)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        self.tracer.node_ended(
            event.execution_id, event.node_id, event.attempt, event.outcome or "", event.error
        )


def trace_middleware(tracer: RunTracer, api_prefix: str) -> Middleware:
    """Runs each request under `api_prefix` in `tracer.request_span` (probes and scrapes: no span)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tracer.enabled or not request.path.startswith(api_prefix):
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        attributes: dict[str, str] = {
            "http.request.method": request.method,
            "http.route": route,
            **request.match_info,
        }
        with tracer.request_span(f"{request.method} {route}", request.headers, attributes) as span:
            try:
                response = await handler(request)
            except Exception as exc:
                _answered(span, _status_of(exc))
                raise
            _answered(span, response.status)
            return response

    return middleware


def _status_of(exc: Exception) -> int:
    """The status the error middleware answers `exc` with: an HTTP error's or an orchestrator error's
    own, 500 for anything else."""
    for name in ("status", "http_status"):
        status = getattr(exc, name, None)
        if isinstance(status, int):
            return status
    return 500


def _answered(span: Span | None, status: int) -> None:
    """The answer's status on the request's span; failed only for a 5xx (a 404 or a 409 is the
    caller's, as OpenTelemetry's HTTP conventions have it)."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
