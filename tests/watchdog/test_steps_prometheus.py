"""The steps' PromQL against a real Prometheus scraping the orchestrator's metric names.

Proves the queries of steps 1, 3, 5, 7 and 8 are valid PromQL over the contract's metric names and
that their answers land in the findings (a real `prometheus` binary, tests/promstack.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import respx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tests.promstack import PrometheusProcess, prometheus_scraping
from tests.watchdog.orchestrators import execution_json, trace_json
from watchdog.diagnostics import (
    step1_execution,
    step3_bottleneck,
    step5_contention,
    step7_external,
    step8_checkpoints,
)
from watchdog_sdk.clients.orchestrator import Trace
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]
MakeCtx = Callable[..., DiagnosticContext]


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusProcess]:
    r = CollectorRegistry()
    duration = Gauge(
        "gl_orchestrator_dag_execution_duration_seconds",
        "d",
        ["execution_id", "dag_id", "status"],
        registry=r,
    )
    duration.labels("ex-1", "emissions", "running").set(1200)
    Gauge("gl_orchestrator_active_executions", "a", registry=r).set(50)
    Gauge("gl_orchestrator_max_concurrent_executions", "m", registry=r).set(50)
    Gauge("gl_orchestrator_queued_executions", "q", registry=r).set(6)
    Gauge("gl_db_pool_active_connections", "p", ["service"], registry=r).labels("orchestrator-service").set(
        20
    )
    pending = Gauge("gl_db_pool_pending_connections", "p", ["service"], registry=r)
    pending.labels("orchestrator-service").set(2)
    checkpoints = Counter("gl_orchestrator_checkpoint_operations", "c", ["operation", "status"], registry=r)
    checkpoints.labels("save", "error")
    checkpoints.labels("save", "ok").inc(5)
    node = Histogram(
        "gl_orchestrator_node_execution_duration_seconds",
        "n",
        ["node_id"],
        buckets=(1, 10, 30, 60, 120),
        registry=r,
    )
    agent = Histogram("gl_orchestrator_agent_call_duration_seconds", "c", ["agent_id", "outcome"], registry=r)
    node.labels("scope1").observe(30)
    agent.labels("emissions.scope1", "ok").observe(2)
    with prometheus_scraping(r) as prom:
        prom.wait_for_result('gl_orchestrator_checkpoint_operations_total{status="error"}')
        prom.wait_for_result("gl_orchestrator_node_execution_duration_seconds_count")
        checkpoints.labels("save", "error").inc(3)
        for _ in range(5):
            node.labels("scope1").observe(45)
            agent.labels("emissions.scope1", "ok").observe(8)
        prom.wait_for_result('increase(gl_orchestrator_checkpoint_operations_total{status="error"}[15m]) > 0')
        prom.wait_for_result("rate(gl_orchestrator_node_execution_duration_seconds_count[5m]) > 0")
        prom.wait_for_result("rate(gl_orchestrator_agent_call_duration_seconds_count[5m]) > 0")
        yield prom


@pytest.fixture
async def prom_client(prometheus: PrometheusProcess) -> AsyncIterator[PrometheusClient]:
    client = PrometheusClient(prometheus.url, timeout=5)
    yield client
    client.close()


def _state() -> DiagnosisState:
    state = DiagnosisState("ex-1", dag_id="emissions", stuck_node_id="scope1", agent_id="emissions.scope1")
    state.trace = Trace.model_validate(trace_json())
    return state


async def test_step1_reads_the_duration_gauge(
    orch: respx.MockRouter, make_ctx: MakeCtx, prom_client: PrometheusClient
) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json())
    orch.get("/executions").respond(json={"items": []})
    f = await step1_execution.run(make_ctx(prometheus=prom_client), DiagnosisState("ex-1"))
    assert f.evidence["prometheus_duration_seconds"] == 1200


async def test_step3_reads_the_node_p99(make_ctx: MakeCtx, prom_client: PrometheusClient) -> None:
    f = await step3_bottleneck.run(make_ctx(prometheus=prom_client), _state())
    assert "prometheus_error" not in f.evidence
    assert 25 <= f.evidence["typical_p99_seconds"] <= 60


async def test_step5_falls_back_to_prometheus_counts(
    orch: respx.MockRouter, make_ctx: MakeCtx, prom_client: PrometheusClient
) -> None:
    orch.get("/metrics").mock(side_effect=httpx.ConnectError("refused"))
    f = await step5_contention.run(make_ctx(prometheus=prom_client), _state())
    assert f.status is StepStatus.PROBLEM, f.summary
    assert f.evidence["source"] == "prometheus" and f.evidence["saturated"] is True
    assert (f.evidence["db_pool_active"], f.evidence["db_pool_pending"]) == (20, 2)
    assert "scope1" in f.evidence["p99_node_seconds"]


async def test_step7_reads_the_agent_call_latency(
    orch: respx.MockRouter, make_ctx: MakeCtx, prom_client: PrometheusClient
) -> None:
    orch.get("/executions/ex-1/logs").respond(json={"lines": []})
    f = await step7_external.run(make_ctx(prometheus=prom_client), _state())
    assert "prometheus_error" not in f.evidence and 5 <= f.evidence["agent_call_p99_seconds"] <= 10


async def test_step8_counts_save_errors_over_15_minutes(
    orch: respx.MockRouter, make_ctx: MakeCtx, prom_client: PrometheusClient
) -> None:
    orch.get("/checkpoints/ex-1").respond(
        json={
            "checkpoints": [
                {"node_id": "intake", "status": "completed", "created_at": "2026-03-01T11:41:00Z"},
                {"node_id": "scope2", "status": "completed", "created_at": "2026-03-01T11:42:00Z"},
            ]
        }
    )
    orch.get("/executions/ex-1/provenance").respond(json={"chain_valid": True})
    f = await step8_checkpoints.run(make_ctx(prometheus=prom_client), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["save_errors_15m"] > 0
    assert "checkpoint save error(s) in the last 15 minutes" in f.summary
