"""The orchestrator's API continues the caller's W3C trace: a server span per authenticated request
(`orchestrator_core.tracing.trace_middleware`), read from the service's in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator_core.tracing import EXECUTION_SPAN
from tests.orchestrator.service_harness import (
    API,
    Gates,
    Harness,
    make_registry,
    make_settings,
    running_service,
)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
LIST_ROUTE = f"GET {API}/executions"


@pytest.fixture
async def orchestrator(_no_pending_tasks: None, database_url: str) -> AsyncIterator[Harness]:
    async with running_service(make_settings(database_url)) as orch:
        yield orch


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _named(orch: Harness, name: str) -> list[ReadableSpan]:
    return [span for span in orch.spans.get_finished_spans() if span.name == name]


async def test_a_request_with_a_traceparent_is_a_child_of_the_callers_span(orchestrator: Harness) -> None:
    header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    response = await orchestrator.api("GET", "/executions", headers=header)
    assert response.status_code == 200
    [span] = _named(orchestrator, LIST_ROUTE)
    assert span.kind is SpanKind.SERVER
    assert span.context is not None and span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (int(CALLER_TRACE, 16), int(CALLER_SPAN, 16))
    assert span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "http.route": f"{API}/executions",
        "http.response.status_code": 200,
    }


async def test_a_request_without_one_starts_a_trace(orchestrator: Harness) -> None:
    await orchestrator.api("GET", "/executions")
    await orchestrator.api("GET", "/executions", headers={"traceparent": "not-a-traceparent"})
    spans = _named(orchestrator, LIST_ROUTE)
    assert len(spans) == 2 and all(span.parent is None for span in spans)
    assert len({span.context.trace_id for span in spans if span.context is not None}) == 2


async def test_probes_scrapes_and_refused_requests_make_no_span(orchestrator: Harness) -> None:
    for path in ("/healthz", "/metrics"):
        assert (await orchestrator.client.get(path)).status_code == 200
    async with httpx.AsyncClient(base_url=orchestrator.base_url, timeout=10) as anonymous:
        assert (await anonymous.get(f"{API}/executions")).status_code == 401
    assert orchestrator.spans.get_finished_spans() == ()


async def test_a_refused_request_is_answered_on_its_span_and_not_marked_failed(orchestrator: Harness) -> None:
    response = await orchestrator.api("POST", "/executions/no-such-run/cancel", json={})
    assert response.status_code == 404
    [span] = _named(orchestrator, f"POST {API}/executions/{{execution_id}}/cancel")
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": f"{API}/executions/{{execution_id}}/cancel",
        "execution_id": "no-such-run",
        "http.response.status_code": 404,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_a_run_admitted_when_another_ends_is_not_taken_for_that_ones_request(
    _no_pending_tasks: None, database_url: str
) -> None:
    gates = Gates()
    settings = make_settings(database_url, max_concurrent_executions=1)
    async with running_service(settings, registry=make_registry(gates), start_loop=True) as orch:
        await orch.register({"dag_id": "first", "nodes": {"a": {"agent_id": "test.gate"}}})
        await orch.register({"dag_id": "second", "nodes": {"b": {"agent_id": "test.gate"}}})
        header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        first = await orch.api("POST", "/dags/first/execute", json={}, headers=header)
        await gates.wait_started(1)
        second = (await orch.execute("second"))["execution_id"]
        assert (await orch.service.engine.get_execution(second)).status == "queued"
        gates.open("a")
        gates.open("b")
        await orch.wait_status(second, "completed")
        await orch.wait_status(first.json()["execution_id"], "completed")
    runs = {
        (span.attributes or {})["dag_id"]: span for span in _named(orch, EXECUTION_SPAN) if span.attributes
    }
    [request] = _named(orch, f"POST {API}/dags/{{dag_id}}/execute")[:1]
    assert runs["first"].parent is not None and runs["first"].parent.span_id == _id(request)
    assert runs["second"].parent is None  # admitted by the first run's end, not by any request
