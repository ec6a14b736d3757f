"""Step 8: checkpoint store health (respx-faked orchestrator: its JSON metrics, with the checkpoint
figures or, like an orchestrator older than them, without — then its exposition)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import free_port
from tests.watchdog.orchestrators import ORCH_BASE, trace_json
from watchdog.diagnostics import step8_checkpoints
from watchdog.diagnostics.runner import likely_cause
from watchdog_sdk.clients.orchestrator import Trace
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]
# The JSON metrics of an orchestrator older than `checkpoint_operations`: the step reads the exposition.
OLD_JSON_METRICS = {"active_executions": 1, "max_concurrent_executions": 50, "queued_executions": 0}


@pytest.fixture(autouse=True)
def _json_metrics_without_checkpoint_figures(orch: respx.MockRouter) -> None:
    orch.get("/metrics").respond(json=OLD_JSON_METRICS)


def _state() -> DiagnosisState:
    state = DiagnosisState("ex-1")
    state.trace = Trace.model_validate(trace_json())  # intake and scope2 completed
    return state


def _exposition(save_errors: float) -> str:
    return (
        "# HELP gl_orchestrator_checkpoint_operations_total Checkpoint operations\n"
        "# TYPE gl_orchestrator_checkpoint_operations_total counter\n"
        f'gl_orchestrator_checkpoint_operations_total{{operation="save",status="ok"}} 12\n'
        f'gl_orchestrator_checkpoint_operations_total{{operation="save",status="error"}} {save_errors}\n'
        f'gl_orchestrator_checkpoint_operations_total{{operation="load",status="error"}} 5\n'
    )


def _checkpoints(orch: respx.MockRouter, nodes: list[str], status: str = "completed") -> None:
    orch.get("/executions/ex-1/logs").respond(json={"lines": []})  # the run logged no save failure
    orch.get("/checkpoints/ex-1").respond(
        json={
            "execution_id": "ex-1",
            "checkpoints": [
                {"node_id": n, "status": status, "created_at": "2026-03-01T11:41:00Z"} for n in nodes
            ],
        }
    )


def _provenance(orch: respx.MockRouter, valid: bool = True) -> None:
    orch.get("/executions/ex-1/provenance").respond(
        json={
            "execution_id": "ex-1",
            "chain_valid": valid,
            "chain": [],
            "problems": [] if valid else ["seq 2"],
        }
    )


async def test_healthy_store_is_ok(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _checkpoints(orch, ["intake", "scope2"])
    _provenance(orch)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(0))
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.OK, f.summary
    assert f.evidence["checkpoint_count"] == 2 and f.evidence["completed_without_checkpoint"] == []
    assert f.evidence["save_errors_total"] == 0 and f.evidence["chain_valid"] is True


async def test_save_errors_and_missing_checkpoint_are_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _checkpoints(orch, ["intake"])
    _provenance(orch)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(3))
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM
    assert f.evidence["save_errors_total"] == 3  # load errors are not counted
    assert f.evidence["completed_without_checkpoint"] == ["scope2"]
    assert "3 checkpoint save error(s)" in f.summary and "scope2" in f.summary


async def test_broken_provenance_chain_is_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _checkpoints(orch, ["intake", "scope2"])
    _provenance(orch, valid=False)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(0))
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["provenance_problems"] == ["seq 2"]


async def test_failed_checkpoint_status_is_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _checkpoints(orch, ["intake", "scope2"], status="error")
    _provenance(orch)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(0))
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["failed_checkpoints"] == ["intake", "scope2"]


async def test_checkpoint_read_error_is_an_error(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/checkpoints/ex-1").respond(500, json={"error": "internal", "detail": "store down"})
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.ERROR and "store down" in f.summary


async def test_unreachable_orchestrator_is_unknown(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/checkpoints/ex-1").mock(side_effect=httpx.ConnectError("refused"))
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.status is StepStatus.UNKNOWN


# -- checkpoint errors -----------------------------------------------------------------------------------
# Step 8 without Prometheus: a checkpoint save error is this run's when its own log says so in the
# last 15 minutes. The orchestrator's counter total since start (one failed save hours ago, of another
# run) must not make every later stuck run a `checkpoint_store` case.


EXPOSITION = 'gl_orchestrator_checkpoint_operations_total{operation="save",status="error"} 7\n'


SAVE_FAILED = "checkpoint save failed for 1 node(s) (attempt 3), retrying in 0.40s: database is locked"


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


async def test_the_checkpoint_figures_come_from_the_json_metrics_not_the_exposition(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _checkpoints(orch, ["intake", "scope2"])
    _provenance(orch)
    figures = {
        **OLD_JSON_METRICS,
        "db_pool": None,
        "checkpoint_operations": [
            {"operation": "save", "status": "ok", "count": 12},
            {"operation": "save", "status": "error", "count": 4},
            {"operation": "load", "status": "error", "count": 5},
        ],
    }
    orch.get("/metrics").respond(json=figures)
    exposition = orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(99))
    f = await step8_checkpoints.run(make_ctx(), _state())
    assert f.evidence["save_errors_total"] == 4 and not exposition.called
