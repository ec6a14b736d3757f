"""OpenTelemetry spans of the watchdog's work on an incident: intake, diagnosis, planning, remediation.

Built by the composition root (`watchdog.assembly`) over `gl_common.tracing.build_tracer_provider`
(resource `service.name: gl-watchdog`; OTLP/HTTP export only when `otlp_endpoint` is set, otherwise
no spans are recorded at all) and handed to the intake, the diagnosis jobs and the remediation:

    watchdog.intake        one per webhook delivery (`watchdog.intake`), kind SERVER
    ├── watchdog.diagnosis     the diagnosis of an incident the delivery opened (`watchdog.diagnosis`)
    │   └── watchdog.diagnosis.step   each step (`watchdog.diagnostics.runner.run_step`)
    ├── watchdog.plan          the playbook's dry run (`watchdog.remediation.dry_run`)
    └── watchdog.remediation   each attempt: re-check, apply, verify, close (`watchdog.remediation`)
        └── watchdog.action    each playbook step (`watchdog_sdk.playbook.run_step`), `playbook` and
                               `action` attributes; its orchestrator calls carry it as `traceparent`

One incident, one trace: the intake remembers the span context of the delivery that opened an
incident (`remember`), and every incident span (`span`) is a child of it, whichever task runs it (the
diagnosis workers and the responder run later, in other tasks). An incident opened without a delivery
(a sweep, a run by hand) starts its trace with its first span, remembered the same way. The memory is
this process's only (bounded, the oldest forgotten first): after a restart, or on another replica,
an incident's next span starts a new trace; its `incident_id` attribute still finds them all.

Attributes: `incident_id`, `execution_id` (when known), `job`. The span is the current one while the
work runs, so:

- every call to the orchestrator made meanwhile carries it as W3C `traceparent`
  (`watchdog_sdk.clients.orchestrator`'s request hook), and the orchestrator's spans of a cancel or
  resume continue the same trace (`orchestrator_core.tracing.RunTracer.request_span`);
- every log line written meanwhile carries `trace_id`, `incident_id` and `execution_id`
  (`watchdog.logs.incident_context`, entered here with the span).

The provider belongs to the service instance; this module never touches the global provider.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Tracer

from gl_common.tracing import build_tracer_provider
from watchdog.logs import incident_context

SERVICE_NAME: Final = "gl-watchdog"
INTAKE_SPAN: Final = "watchdog.intake"
DIAGNOSIS_SPAN: Final = "watchdog.diagnosis"
PLAN_SPAN: Final = "watchdog.plan"
REMEDIATION_SPAN: Final = "watchdog.remediation"
# Incidents whose trace this process remembers; an incident forgotten starts a new trace.
REMEMBERED_INCIDENTS: Final = 10_000


class IncidentTracer:
    """Spans of incidents; without a provider, no spans (only the log context)."""

    def __init__(
        self, provider: TracerProvider | None = None, *, remembered: int = REMEMBERED_INCIDENTS
    ) -> None:
        self._provider = provider
        self.tracer: Tracer = provider.get_tracer("watchdog") if provider is not None else trace.NoOpTracer()
        self._origins: OrderedDict[int, SpanContext] = OrderedDict()
        self._remembered = remembered

    @classmethod
    def from_settings(cls, otlp_endpoint: str | None, exporter: SpanExporter | None = None) -> IncidentTracer:
        """Spans exported to `otlp_endpoint` and/or `exporter`; none when neither is given."""
        if not otlp_endpoint and exporter is None:
            return cls()
        return cls(build_tracer_provider(otlp_endpoint, exporter=exporter, service_name=SERVICE_NAME))

    @contextmanager
    def intake_span(self, receiver: str, alerts: int) -> Iterator[Span]:
        """The span of one webhook delivery, current while the block runs (without a provider, none:
        a no-op span would still cost each delivery a context switch in and out)."""
        if self._provider is None:
            yield trace.INVALID_SPAN
            return
        attributes: dict[str, str | int] = {"receiver": receiver, "alerts": alerts}
        with self.tracer.start_as_current_span(
            INTAKE_SPAN, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span

    def remember(self, incident_id: int, origin: SpanContext | None) -> None:
        """`origin` (the delivery's span) becomes the parent of the incident's spans in this process."""
        if origin is None or not origin.is_valid:
            return
        self._origins[incident_id] = origin
        self._origins.move_to_end(incident_id)
        while len(self._origins) > self._remembered:
            self._origins.popitem(last=False)

    @contextmanager
    def span(
        self, name: str, incident_id: int, execution_id: str | None = None, *, job: str | None = None
    ) -> Iterator[Span]:
        """A span for work on one incident, in the incident's trace (see the module docstring), current
        (and in the log context) while the block runs; an exception leaving the block marks it failed."""
        attributes: dict[str, str | int] = {"incident_id": incident_id}
        if execution_id is not None:
            attributes["execution_id"] = execution_id
        if job is not None:
            attributes["job"] = job
        with (
            incident_context(incident_id, execution_id),
            self.tracer.start_as_current_span(
                name, context=self._parent(incident_id), attributes=attributes
            ) as span,
        ):
            if incident_id not in self._origins:
                self.remember(incident_id, span.get_span_context())
            yield span

    def _parent(self, incident_id: int) -> Context:
        """The incident's remembered origin; otherwise an empty context (a new trace), never the span
        that happens to be current in the task (a worker's task may have inherited another's)."""
        origin = self._origins.get(incident_id)
        if origin is None:
            return Context()
        self._origins.move_to_end(incident_id)
        return trace.set_span_in_context(NonRecordingSpan(origin))

    def shutdown(self) -> None:
        """Flush and stop the exporters (bounded by their own timeouts)."""
        if self._provider is not None:
            self._provider.shutdown()
