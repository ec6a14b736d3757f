"""Step 2: the execution trace (respx-faked orchestrator)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import respx

from tests.watchdog.orchestrators import node_json, trace_json
from watchdog.diagnostics import step2_trace
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]


async def test_running_node_at_a_level_is_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/trace").respond(json=trace_json())
    state = DiagnosisState("ex-1")
    f = await step2_trace.run(make_ctx(), state)
    assert f.status is StepStatus.PROBLEM
    assert f.evidence["running_nodes"] == ["scope1"]
    assert f.evidence["last_completed_node"] == "scope2"  # completed last, by completed_at
    assert f.evidence["stalled_level"] == 1 and f.evidence["stalled_level_nodes"] == ["scope1", "scope2"]
    assert f.evidence["pending_nodes"] == ["report"]
    assert f.summary == "stalled at level 1 after scope2: running scope1"
    assert state.trace is not None and state.dag_id == "emissions"


async def test_failed_node_in_a_running_run_is_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    trace = trace_json()
    trace["node_traces"]["scope1"] = node_json("failed", "emissions.scope1", error="ValueError: bad factor")
    orch.get("/executions/ex-1/trace").respond(json=trace)
    f = await step2_trace.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and f.evidence["failed_nodes"] == {
        "scope1": "ValueError: bad factor"
    }


async def test_nothing_running_but_pending_is_a_problem(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    trace = trace_json()
    trace["node_traces"]["scope1"] = node_json("completed", "emissions.scope1")
    orch.get("/executions/ex-1/trace").respond(json=trace)
    f = await step2_trace.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and "no node running, 1 pending" in f.summary
    assert f.evidence["stalled_level"] == 2


async def test_finished_run_is_ok(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    trace = trace_json(status="completed")
    for node in trace["node_traces"].values():
        node["status"] = "completed"
    orch.get("/executions/ex-1/trace").respond(json=trace)
    f = await step2_trace.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK and f.evidence["stalled_level"] is None


async def test_trace_error_status_is_an_error(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/trace").respond(500, json={"error": "internal", "detail": "boom"})
    state = DiagnosisState("ex-1")
    f = await step2_trace.run(make_ctx(), state)
    assert f.status is StepStatus.ERROR and state.trace is None


async def test_trace_timeout_is_unknown(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/trace").mock(side_effect=httpx.ReadTimeout("slow"))
    f = await step2_trace.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN and "timed out" in f.summary
