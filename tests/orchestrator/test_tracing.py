"""OpenTelemetry spans per execution and per node attempt (SDK in-memory exporter)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from orchestrator_core.events import ExecutionEvent, NodeAttemptEvent
from orchestrator_core.tracing import RunTracer, TracingObserver, build_tracer_provider
from tests.conftest import free_port

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_execution_and_node_attempt_spans_carry_runbook_attributes() -> None:
    exporter = InMemorySpanExporter()
    tracer = RunTracer(build_tracer_provider(None, exporter=exporter))
    observer = TracingObserver(tracer)
    observer.execution_started(ExecutionEvent("e1", "dag-a", 1, "running", T0, started_at=T0))
    observer.node_attempt_started(NodeAttemptEvent("e1", "dag-a", "n1", "agent.x", 1, T0))
    observer.node_attempt_finished(
        NodeAttemptEvent("e1", "dag-a", "n1", "agent.x", 1, T0, "failed", 0.1, "boom")
    )
    observer.node_attempt_started(NodeAttemptEvent("e1", "dag-a", "n1", "agent.x", 2, T0))
    observer.node_attempt_finished(NodeAttemptEvent("e1", "dag-a", "n1", "agent.x", 2, T0, "completed", 0.1))
    observer.execution_finished(ExecutionEvent("e1", "dag-a", 1, "completed", T0, started_at=T0))
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["dag.node", "dag.node", "dag.execution"]
    execution = spans[-1]
    assert execution.resource.attributes["service.name"] == "orchestrator-service"
    assert execution.attributes == {"execution_id": "e1", "dag_id": "dag-a", "status": "completed"}
    first, second = spans[0], spans[1]
    assert dict(first.attributes or {}) == {
        "execution_id": "e1",
        "dag_id": "dag-a",
        "node_id": "n1",
        "agent_id": "agent.x",
        "attempt": 1,
        "status": "failed",
    }
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes is not None and second.attributes["attempt"] == 2
    assert first.parent is not None and first.parent.span_id == execution.context.span_id
    assert first.context.trace_id == execution.context.trace_id


def test_shutdown_ends_open_spans_as_interrupted() -> None:
    exporter = InMemorySpanExporter()
    tracer = RunTracer(build_tracer_provider(None, exporter=exporter))
    tracer.execution_started("e1", "dag-a")
    tracer.node_started("e1", "n1", "builtin.hang", 1)
    tracer.shutdown()
    spans = exporter.get_finished_spans()
    assert {span.name for span in spans} == {"dag.node", "dag.execution"}
    execution = next(span for span in spans if span.name == "dag.execution")
    assert execution.attributes is not None and execution.attributes["status"] == "interrupted"


def test_no_exporter_without_endpoint_and_otlp_with_one() -> None:
    plain = build_tracer_provider(None)
    assert not plain._active_span_processor._span_processors
    exported = build_tracer_provider("http://127.0.0.1:4318")
    processors = exported._active_span_processor._span_processors
    assert len(processors) == 1 and isinstance(processors[0], BatchSpanProcessor)
    exported.shutdown()
    plain.shutdown()


async def test_spans_are_exported_over_otlp_http_when_endpoint_set() -> None:
    bodies: list[tuple[str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        bodies.append((request.headers.get("Content-Type", ""), await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        provider = build_tracer_provider(f"http://127.0.0.1:{port}")
        tracer = RunTracer(provider)
        tracer.execution_started("exec-otlp", "dag-a")
        tracer.execution_ended("exec-otlp", "completed")
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        await asyncio.to_thread(provider.shutdown)
    finally:
        await runner.cleanup()
    assert bodies, "no OTLP export request"
    content_type, body = bodies[0]
    assert content_type == "application/x-protobuf"
    assert b"exec-otlp" in body and b"orchestrator-service" in body
