"""Step 1: the execution, its duration against its timeout (respx-faked orchestrator)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import respx

from tests.conftest import free_port
from tests.watchdog.orchestrators import execution_json
from watchdog.diagnostics import step1_execution
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]


async def test_over_timeout_is_a_problem_and_names_other_stuck_runs(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json())
    orch.get("/executions").respond(
        json={
            "items": [
                execution_json(),
                execution_json("ex-2", started_at="2026-03-01T11:50:00Z", timeout_seconds=60),
                execution_json("ex-3", started_at="2026-03-01T11:59:00Z", timeout_seconds=600),
            ]
        }
    )
    state = DiagnosisState("ex-1")
    f = await step1_execution.run(make_ctx(), state)
    assert f.status is StepStatus.PROBLEM
    assert f.evidence["duration_seconds"] == 1200 and f.evidence["over_timeout_seconds"] == 900
    assert f.evidence["status"] == "running" and f.evidence["dag_id"] == "emissions"
    assert f.evidence["other_stuck"] == ["ex-2"] and f.evidence["running_executions"] == 3
    assert "900s over its 300s timeout" in f.summary
    assert state.execution is not None and state.dag_id == "emissions"


async def test_within_timeout_is_ok(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json(timeout_seconds=3600))
    orch.get("/executions").respond(json={"items": []})
    f = await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK and "within its 3600s timeout" in f.summary


async def test_finished_run_is_ok_and_reports_status(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json(status="completed"))
    orch.get("/executions").respond(json={"items": []})
    f = await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK and f.evidence["status"] == "completed"


async def test_no_timeout_set_is_unknown(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json(timeout_seconds=None))
    orch.get("/executions").respond(json={"items": []})
    f = await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN


async def test_unknown_execution_is_an_error(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/nope").respond(404, json={"error": "not_found", "detail": "no execution nope"})
    state = DiagnosisState("nope")
    f = await step1_execution.run(make_ctx(), state)
    assert f.status is StepStatus.ERROR and f.evidence["reason"] == "not_found"
    assert "no execution nope" in f.summary and state.execution is None


async def test_unreachable_orchestrator_is_unknown(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1").mock(side_effect=httpx.ConnectError("refused"))
    f = await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN and "unreachable" in f.summary


async def test_server_error_is_an_error(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1").respond(500, json={"error": "internal", "detail": "db down"})
    f = await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.ERROR and "db down" in f.summary


async def test_prometheus_down_is_noted_not_fatal(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json())
    orch.get("/executions").respond(json={"items": []})
    orch.route(host="127.0.0.1").pass_through()
    prometheus = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        f = await step1_execution.run(make_ctx(prometheus=prometheus), DiagnosisState("ex-1"))
    finally:
        prometheus.close()
    assert f.status is StepStatus.PROBLEM and "unreachable" in f.evidence["prometheus_error"]
