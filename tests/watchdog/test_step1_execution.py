"""Step 1: the execution, its duration against its timeout (respx-faked orchestrator)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
import respx

from tests.conftest import free_port
from tests.watchdog.orchestrators import NOW, execution_json
from tests.watchdog.paged_orchestrator import PagedOrchestrator
from watchdog.diagnostics import step1_execution
from watchdog.diagnostics.runner import likely_cause
from watchdog.settings import WatchdogSettings
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


async def test_other_stuck_runs_are_asked_for_not_listed_among_ten_thousand(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    fake = PagedOrchestrator(lambda: NOW)
    for i in range(10_000):
        fake.add(f"fine-{i:05d}", started_at=NOW - timedelta(seconds=i % 600), timeout=3600)
    for i in range(30):
        fake.add(f"stuck-{i:02d}", started_at=NOW - timedelta(hours=2, minutes=30 - i), timeout=600)
    fake.add("ex-1", started_at=NOW - timedelta(hours=3), timeout=300)  # the one diagnosed, the oldest
    orch.get("/executions/ex-1").respond(json=execution_json(started_at="2026-03-01T09:00:00Z"))
    orch.get("/executions").mock(side_effect=fake.handler)
    f = await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM
    assert f.evidence["other_stuck"] == [f"stuck-{i:02d}" for i in range(20)]  # the oldest twenty
    assert f.evidence["other_stuck_count"] == 30 and f.evidence["running_executions"] == 10_031
    assert [q.get("limit") for q in fake.requests] == ["21", "1"]  # a page of 21 and a count


async def test_a_run_with_no_timeout_past_the_maximum_age_is_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    orch.get("/executions/ex-1").respond(
        json=execution_json(timeout_seconds=None, started_at="2026-02-27T12:00:00Z")
    )
    orch.get("/executions").respond(json={"items": [], "next_cursor": None, "total": 0})
    settings = WatchdogSettings(orchestrator_url="http://orch.test:8080", max_run_age_seconds=86_400)
    f = await step1_execution.run(make_ctx(settings), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM
    assert f.evidence["over_max_age"] is True and f.evidence["max_run_age_seconds"] == 86_400
    assert "with no timeout, past the maximum age of 86400s" in f.summary
    assert likely_cause([f]) == ("over_max_age", [f"step 1 (execution): {f.summary}"])
