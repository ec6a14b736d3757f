"""Step 8 without Prometheus: a checkpoint save error is this run's when its own log says so in the
last 15 minutes. The orchestrator's counter total since start (one failed save hours ago, of another
run) must not make every later stuck run a `checkpoint_store` case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import respx

from tests.conftest import free_port
from tests.watchdog.conftest import ORCH_BASE, trace_json
from watchdog.diagnostics import step8_checkpoints
from watchdog.diagnostics.runner import likely_cause
from watchdog_sdk.clients.orchestrator import Trace
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]
EXPOSITION = 'gl_orchestrator_checkpoint_operations_total{operation="save",status="error"} 7\n'
SAVE_FAILED = "checkpoint save failed for 1 node(s) (attempt 3), retrying in 0.40s: database is locked"


def _state() -> DiagnosisState:
    state = DiagnosisState("ex-1")
    state.trace = Trace.model_validate(trace_json())  # intake and scope2 completed
    return state


def _routes(orch: respx.MockRouter, lines: list[dict[str, Any]] | None, logs_status: int = 200) -> None:
    orch.get("/checkpoints/ex-1").respond(
        json={
            "checkpoints": [
                {"node_id": n, "status": "completed", "created_at": "2026-03-01T11:41:00Z"}
                for n in ("intake", "scope2")
            ]
        }
    )
    orch.get("/executions/ex-1/provenance").respond(json={"chain_valid": True})
    orch.get(ORCH_BASE + "/metrics").respond(text=EXPOSITION)
    if logs_status == 200:
        orch.get("/executions/ex-1/logs").respond(json={"lines": lines or []})
    else:
        orch.get("/executions/ex-1/logs").respond(logs_status, json={"error": "x", "detail": "no logs"})


def _cause(step8: Finding) -> str:
    findings = [
        Finding(
            step=1,
            name="execution",
            status=StepStatus.PROBLEM,
            summary="over",
            evidence={"status": "running"},
        ),
        step8,
    ]
    return likely_cause(findings)[0]


async def test_an_old_total_of_other_runs_is_not_this_runs_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    old = {
        "ts": "2026-03-01T11:00:00Z",
        "level": "ERROR",
        "message": SAVE_FAILED,
    }  # an hour ago (clock: 12:00)
    _routes(orch, [old])
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.OK, f.summary
    assert f.evidence["save_errors_15m"] == 0 and f.evidence["save_errors_total"] == 7
    assert _cause(f) == "unknown"


async def test_this_runs_recent_save_failures_are_the_cause(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    lines = [
        {"ts": f"2026-03-01T11:5{i}:00Z", "level": "ERROR", "message": SAVE_FAILED, "execution_id": "ex-1"}
        for i in range(3)
    ]
    _routes(orch, lines)
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM
    assert f.summary.startswith("3 checkpoint save error(s) of this run in the last 15 minutes")
    assert f.evidence["save_errors_source"] == "run_logs" and len(f.evidence["save_error_lines"]) == 3
    assert _cause(f) == "checkpoint_store"


async def test_unreadable_run_logs_fall_back_to_the_total(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _routes(orch, None, logs_status=500)
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert (
        f.status is StepStatus.PROBLEM
        and "7 checkpoint save error(s) since the orchestrator started" in f.summary
    )
    assert "no logs" in f.evidence["run_logs_error"]
    assert _cause(f) == "checkpoint_store"


async def test_prometheus_down_falls_back_to_the_runs_log(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    lines = [{"ts": "2026-03-01T11:58:00Z", "level": "ERROR", "message": SAVE_FAILED}]
    _routes(orch, lines)
    dead = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        f = await step8_checkpoints.run(make_ctx(prometheus=dead), _state())
    finally:
        dead.close()
    assert f.status is StepStatus.PROBLEM and "unreachable" in f.evidence["prometheus_error"]
    assert f.evidence["save_errors_15m"] == 1 and f.evidence["save_errors_source"] == "run_logs"
    assert _cause(f) == "checkpoint_store"
