"""Step 5: contention — execution counts, queue, DB pool (respx-faked orchestrator, its exposition)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import respx

from tests.watchdog.orchestrators import ORCH_BASE
from watchdog.diagnostics import step5_contention
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]


def _exposition(active: float, pending: float) -> str:
    return (
        "# HELP gl_db_pool_active_connections Active DB connections\n"
        "# TYPE gl_db_pool_active_connections gauge\n"
        f'gl_db_pool_active_connections{{service="orchestrator-service"}} {active}\n'
        "# HELP gl_db_pool_pending_connections Waiting for a DB connection\n"
        "# TYPE gl_db_pool_pending_connections gauge\n"
        f'gl_db_pool_pending_connections{{service="orchestrator-service"}} {pending}\n'
    )


def _metrics(orch: respx.MockRouter, active: int, maximum: int, queued: int) -> None:
    orch.get("/metrics").respond(
        json={
            "active_executions": active,
            "max_concurrent_executions": maximum,
            "queued_executions": queued,
            "max_parallel_nodes": 10,
        }
    )


async def test_saturated_with_a_queue_is_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _metrics(orch, 50, 50, 7)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(10, 0))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and f.evidence["saturated"] is True
    assert "50/50 executions active, 7 queued" in f.summary and f.evidence["db_pool_active"] == 10


async def test_db_pool_waiters_are_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _metrics(orch, 3, 50, 0)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(20, 4))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and f.evidence["db_pool_pending"] == 4
    assert "4 DB connection request(s) waiting" in f.summary


async def test_light_load_is_ok(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _metrics(orch, 3, 50, 0)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(2, 0))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK and f.evidence["saturated"] is False and f.evidence["source"] == "api"


async def test_full_but_no_queue_is_ok(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _metrics(orch, 50, 50, 0)
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(2, 0))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK


async def test_unreachable_orchestrator_is_unknown(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/metrics").mock(side_effect=httpx.ConnectError("refused"))
    orch.get(ORCH_BASE + "/metrics").mock(side_effect=httpx.ConnectError("refused"))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN and "exposition_error" in f.evidence


async def test_metrics_error_status_is_an_error(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/metrics").respond(500, json={"error": "internal", "detail": "boom"})
    orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(2, 0))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.ERROR and "boom" in f.summary


async def test_the_pool_figures_come_from_the_json_metrics_not_the_exposition(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    orch.get("/metrics").respond(
        json={
            "active_executions": 3,
            "max_concurrent_executions": 50,
            "queued_executions": 0,
            "max_parallel_nodes": 10,
            "db_pool": {"active": 15, "pending": 6},
            "checkpoint_operations": [],
        }
    )
    exposition = orch.get(ORCH_BASE + "/metrics").respond(text=_exposition(99, 99))
    f = await step5_contention.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and "6 DB connection request(s) waiting" in f.summary
    assert (f.evidence["db_pool_active"], f.evidence["db_pool_pending"]) == (15, 6)
    assert not exposition.called
