"""The watchdog's JSON log lines and its spans, and the trace context it hands the orchestrator.

Spans are read from the SDK's in-memory exporter; the orchestrator is faked at the HTTP level (respx),
where the `traceparent` header it receives is checked against the span the watchdog exported.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import respx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id
from pydantic import SecretStr

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, RecordingRemediate, make_diagnosis
from tests.watchdog.orchestrators import ORCH_API, ORCH_BASE, execution_json
from tests.watchdog.recording_playbook import RecordingPlaybook, RestartAgentParams
from tests.watchdog.responder_stack import responder_over
from watchdog import logs
from watchdog.assembly import Watchdog, build_watchdog
from watchdog.settings import Mode, WatchdogSettings
from watchdog.store import WatchdogStore
from watchdog.tracing import DIAGNOSIS_SPAN, REMEDIATION_SPAN, IncidentTracer
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.outcomes import ApplyResult
from watchdog_sdk.playbook import PlaybookContext


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer; the previous set-up restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("INFO", "json", stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _trace_of(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def test_log_lines_in_an_incident_span_are_json_with_the_incident_and_the_trace(
    log_stream: io.StringIO,
) -> None:
    exporter = InMemorySpanExporter()
    tracer = IncidentTracer.from_settings(None, exporter)
    logging.getLogger("watchdog.test").info("outside any incident")
    with tracer.span(DIAGNOSIS_SPAN, 42, "exec-7", job="diagnosis"):
        logging.getLogger("watchdog.test").warning("step %s failed", 4, extra={"token": SecretStr("s3cr3t")})
    tracer.shutdown()
    outside, inside = _lines(log_stream)
    assert outside["message"] == "outside any incident" and "incident_id" not in outside
    assert "trace_id" not in outside
    [span] = exporter.get_finished_spans()
    trace_id, span_id = _trace_of(span)
    assert inside["message"] == "step 4 failed" and inside["level"] == "WARNING"
    assert inside["logger"] == "watchdog.test"
    assert (inside["incident_id"], inside["execution_id"]) == (42, "exec-7")
    assert (inside["trace_id"], inside["span_id"]) == (trace_id, span_id)
    assert inside["token"] == "**********" and "s3cr3t" not in log_stream.getvalue()
    assert span.name == DIAGNOSIS_SPAN
    assert dict(span.attributes or {}) == {"incident_id": 42, "execution_id": "exec-7", "job": "diagnosis"}


def test_text_format_writes_plain_lines(log_stream: io.StringIO) -> None:
    text = io.StringIO()
    logs.configure("INFO", "text", text)
    logging.getLogger("watchdog.test").info("plain")
    assert text.getvalue().rstrip().endswith("INFO watchdog.test: plain")


async def test_no_traceparent_outside_a_span() -> None:
    with respx.mock(base_url=ORCH_API) as orch:
        route = orch.get("/executions/ex-1").respond(200, json=execution_json("ex-1"))
        async with OrchestratorClient(ORCH_BASE, "t") as client:
            await client.get_execution("ex-1")
    assert "traceparent" not in route.calls[0].request.headers


class OrchestratorDiagnose:
    """A diagnosis that asks the orchestrator about the run, as diagnostic step 1 does."""

    def __init__(self, client: OrchestratorClient) -> None:
        self.client = client

    async def __call__(self, execution_id: str) -> Diagnosis:
        await self.client.get_execution(execution_id)
        logging.getLogger("watchdog.test").info("asked the orchestrator")
        return make_diagnosis(execution_id)


@pytest.fixture
async def traced(
    _no_pending_tasks: None, database_url: str
) -> AsyncIterator[tuple[Watchdog, InMemorySpanExporter, OrchestratorClient]]:
    exporter = InMemorySpanExporter()
    client = OrchestratorClient(ORCH_BASE, "t", timeout=2)
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
    )
    wd = await build_watchdog(
        settings,
        diagnose=OrchestratorDiagnose(client),
        on_diagnosed=RecordingRemediate(),
        span_exporter=exporter,
    )
    try:
        yield wd, exporter, client
    finally:
        await wd.aclose()
        await client.aclose()


async def test_the_orchestrator_receives_the_trace_context_of_the_diagnosis(
    traced: tuple[Watchdog, InMemorySpanExporter, OrchestratorClient], log_stream: io.StringIO
) -> None:
    wd, exporter, _ = traced
    with respx.mock(base_url=ORCH_API) as orch:
        route = orch.get("/executions/exec-1").respond(200, json=execution_json("exec-1"))
        opened = await wd.incidents.open_or_join("exec-1", dag_id="d", source="sweep", detection_source="api")
        assert await wd.diagnosis.diagnose_incident(opened.incident.id) is not None
    [span] = [s for s in exporter.get_finished_spans() if s.name == DIAGNOSIS_SPAN]
    trace_id, span_id = _trace_of(span)
    version, sent_trace, parent, flags = route.calls[0].request.headers["traceparent"].split("-")
    assert (version, sent_trace, parent) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled
    assert span.resource.attributes["service.name"] == "gl-watchdog"
    assert (span.attributes or {})["incident_id"] == opened.incident.id
    [line] = [line for line in _lines(log_stream) if line["message"] == "asked the orchestrator"]
    assert (line["incident_id"], line["execution_id"], line["trace_id"]) == (
        opened.incident.id,
        "exec-1",
        trace_id,
    )


class OrchestratorPlaybook(RecordingPlaybook):
    """The recording playbook, asking the orchestrator about the run before it acts (as cancel does)."""

    async def apply(self, ctx: PlaybookContext, params: RestartAgentParams) -> ApplyResult:
        await ctx.orchestrator.get_execution(ctx.execution_id)
        return await super().apply(ctx, params)


async def test_a_remediation_is_one_span_whose_context_reaches_the_orchestrator(
    database_url: str, clock: FakeClock
) -> None:
    exporter = InMemorySpanExporter()
    store = await WatchdogStore.open(database_url, clock=clock)
    tracer = IncidentTracer.from_settings(None, exporter)
    try:
        async with OrchestratorClient(ORCH_BASE, "t", timeout=2) as client:
            responder = responder_over(
                store, clock, client, mode=Mode.AUTO, playbook=OrchestratorPlaybook(), tracer=tracer
            )
            opened = await responder.incidents.open_or_join(
                "exec-1", dag_id="d", source="sweep", detection_source="api"
            )
            with respx.mock(base_url=ORCH_API) as orch:
                route = orch.get("/executions/exec-1").respond(200, json=execution_json("exec-1"))
                diagnosis = make_diagnosis("exec-1", agent="calc", cause="agent_unresponsive")
                outcome = await responder.handle_diagnosed(opened.incident.id, diagnosis)
    finally:
        await store.close()
    assert outcome.status == "resolved"
    [span] = [s for s in exporter.get_finished_spans() if s.name == REMEDIATION_SPAN]
    trace_id, span_id = _trace_of(span)
    assert dict(span.attributes or {}) == {
        "incident_id": opened.incident.id,
        "execution_id": "exec-1",
        "job": "remediation",
    }
    assert route.calls and all(
        call.request.headers["traceparent"].split("-")[1:3] == [trace_id, span_id] for call in route.calls
    )
