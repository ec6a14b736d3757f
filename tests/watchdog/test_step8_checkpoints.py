"""Step 8: checkpoint store health (respx-faked orchestrator, its exposition)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import respx

from tests.watchdog.conftest import ORCH_BASE, trace_json
from watchdog.diagnostics import step8_checkpoints
from watchdog_sdk.clients.orchestrator import Trace
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]


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
