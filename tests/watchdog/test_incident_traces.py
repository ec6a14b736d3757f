"""Which trace an incident's spans join (`watchdog.tracing.IncidentTracer`): the delivery's that opened
it, else its first span's; never the span that happens to be current in the task running it."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gl_common.tracing import build_tracer_provider
from tests.watchdog.orchestrators import ORCH_BASE
from watchdog.diagnostics.runner import STEP_SPAN, diagnose
from watchdog.tracing import DIAGNOSIS_SPAN, INTAKE_SPAN, REMEDIATION_SPAN, SERVICE_NAME, IncidentTracer
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext, DiagnosticStep
from watchdog_sdk.step_helpers import finding


def _tracer(remembered: int = 10) -> tuple[IncidentTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(None, exporter=exporter, service_name=SERVICE_NAME)
    return IncidentTracer(provider, remembered=remembered), exporter


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def _ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def test_an_incident_without_a_delivery_is_traced_from_its_first_span() -> None:
    tracer, exporter = _tracer()
    with tracer.span(DIAGNOSIS_SPAN, 7, "exec-7", job="diagnosis"):
        pass
    with tracer.span(REMEDIATION_SPAN, 7, "exec-7", job="remediation"):
        pass
    spans = _by_name(exporter)
    diagnosis, remediation = spans[DIAGNOSIS_SPAN], spans[REMEDIATION_SPAN]
    assert diagnosis.parent is None
    assert remediation.parent is not None
    assert (_ids(remediation)[0], remediation.parent.span_id) == _ids(diagnosis)


def test_a_span_current_in_the_task_is_not_taken_for_the_incidents_parent() -> None:
    tracer, exporter = _tracer()
    with tracer.intake_span("gl-watchdog", 1) as intake:
        tracer.remember(1, intake.get_span_context())
        # a worker started here inherits this span; incident 2 (a sweep's) must not join it
        with tracer.span(DIAGNOSIS_SPAN, 2, "exec-2"):
            pass
        with tracer.span(REMEDIATION_SPAN, 1, "exec-1"):
            pass
    spans = _by_name(exporter)
    assert spans[DIAGNOSIS_SPAN].parent is None
    assert _ids(spans[DIAGNOSIS_SPAN])[0] != _ids(spans[INTAKE_SPAN])[0]
    remediation = spans[REMEDIATION_SPAN]
    assert remediation.parent is not None and remediation.parent.span_id == _ids(spans[INTAKE_SPAN])[1]


def test_only_the_latest_incidents_are_remembered() -> None:
    tracer, exporter = _tracer(remembered=2)
    for incident_id in (1, 2, 3):
        with tracer.span(DIAGNOSIS_SPAN, incident_id):
            pass
    exporter.clear()
    for incident_id in (1, 3):
        with tracer.span(REMEDIATION_SPAN, incident_id):
            pass
    forgotten, kept = exporter.get_finished_spans()
    assert forgotten.parent is None  # incident 1, forgotten: a new trace
    assert kept.parent is not None  # incident 3: its diagnosis's trace


async def test_each_diagnostic_step_is_a_child_span_of_the_diagnosis() -> None:
    tracer, exporter = _tracer()

    def step(number: int, status: StepStatus) -> DiagnosticStep:
        async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
            return finding(number, f"s{number}", status, "said")

        return DiagnosticStep(number, f"s{number}", run)

    async with OrchestratorClient(ORCH_BASE, "t") as client:  # asked nothing by these steps
        ctx = DiagnosticContext(clients=Clients(orchestrator=client), tracer=tracer.tracer)
        with tracer.span(DIAGNOSIS_SPAN, 9, "exec-9"):
            await diagnose(ctx, "exec-9", steps=[step(1, StepStatus.OK), step(4, StepStatus.PROBLEM)])
    steps = [span for span in exporter.get_finished_spans() if span.name == STEP_SPAN]
    diagnosis = _by_name(exporter)[DIAGNOSIS_SPAN]
    assert sorted(dict(span.attributes or {}).items() for span in steps) == sorted(
        [
            {"step": 1, "name": "s1", "status": "ok"}.items(),
            {"step": 4, "name": "s4", "status": "problem"}.items(),
        ]
    )
    assert all(span.parent is not None and span.parent.span_id == _ids(diagnosis)[1] for span in steps)
