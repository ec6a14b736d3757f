"""OpenTelemetry spans of the watchdog's work on an incident: its diagnosis and its remediation.

Built by the composition root (`watchdog.assembly`) over `gl_common.tracing.build_tracer_provider`
(resource `service.name: gl-watchdog`; OTLP/HTTP export only when `otlp_endpoint` is set, otherwise
no spans are recorded at all) and handed to the diagnosis jobs (`watchdog.diagnosis`, span
`watchdog.diagnosis`) and the remediation state machine (`watchdog.remediation`, span
`watchdog.remediation` around each attempt: re-check, apply, verify, close and its notification).
Attributes: `incident_id`, `execution_id` (when known), `job`. The span is the current one while the
work runs, so:

- every call to the orchestrator made meanwhile carries it as W3C `traceparent`
  (`watchdog_sdk.clients.orchestrator`'s request hook), and the orchestrator's own spans of a cancel
  or resume can join the same trace;
- every log line written meanwhile carries `trace_id`, `incident_id` and `execution_id`
  (`watchdog.logs.incident_context`, entered here with the span).

The provider belongs to the service instance; this module never touches the global provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span

from gl_common.tracing import build_tracer_provider
from watchdog.logs import incident_context

SERVICE_NAME: Final = "gl-watchdog"
DIAGNOSIS_SPAN: Final = "watchdog.diagnosis"
REMEDIATION_SPAN: Final = "watchdog.remediation"


class IncidentTracer:
    """Spans of incidents; without a provider, no spans (only the log context)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("watchdog") if provider is not None else trace.NoOpTracer()

    @classmethod
    def from_settings(cls, otlp_endpoint: str | None, exporter: SpanExporter | None = None) -> IncidentTracer:
        """Spans exported to `otlp_endpoint` and/or `exporter`; none when neither is given."""
        if not otlp_endpoint and exporter is None:
            return cls()
        return cls(build_tracer_provider(otlp_endpoint, exporter=exporter, service_name=SERVICE_NAME))

    @contextmanager
    def span(
        self, name: str, incident_id: int, execution_id: str | None = None, *, job: str | None = None
    ) -> Iterator[Span]:
        """A span for work on one incident, current (and in the log context) while the block runs;
        an exception leaving the block marks it failed."""
        attributes: dict[str, str | int] = {"incident_id": incident_id}
        if execution_id is not None:
            attributes["execution_id"] = execution_id
        if job is not None:
            attributes["job"] = job
        with (
            incident_context(incident_id, execution_id),
            self._tracer.start_as_current_span(name, attributes=attributes) as span,
        ):
            yield span

    def shutdown(self) -> None:
        """Flush and stop the exporters (bounded by their own timeouts)."""
        if self._provider is not None:
            self._provider.shutdown()
