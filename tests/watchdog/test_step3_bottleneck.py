"""Step 3: the bottleneck node and its time against its own timeout."""

from __future__ import annotations

from collections.abc import Callable

import respx

from tests.watchdog.orchestrators import node_json, trace_json
from watchdog.diagnostics import step3_bottleneck
from watchdog_sdk.clients.orchestrator import Trace
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]


def _state(trace: dict[str, object]) -> DiagnosisState:
    state = DiagnosisState("ex-1", dag_id="emissions")
    state.trace = Trace.model_validate(trace)
    return state


async def test_longest_running_node_past_its_timeout(make_ctx: MakeCtx) -> None:
    trace = trace_json()
    trace["node_traces"]["scope2"] = node_json(
        "running", "emissions.scope2", started_at="2026-03-01T11:55:00Z", attempt_count=1
    )
    trace["node_traces"]["scope1"]["attempt_count"] = 2
    state = _state(trace)
    f = await step3_bottleneck.run(make_ctx(), state)
    assert f.status is StepStatus.PROBLEM
    assert (f.evidence["node_id"], f.evidence["agent_id"]) == ("scope1", "emissions.scope1")
    assert f.evidence["running_seconds"] == 1140 and f.evidence["node_timeout_seconds"] == 120
    assert f.evidence["within_own_timeout"] is False and f.evidence["timeout_ratio"] == 9.5
    assert f.evidence["attempt_count"] == 2 and f.evidence["input_hash"] == "sha256:abc"
    assert [c["node_id"] for c in f.evidence["candidates"]] == ["scope1", "scope2"]
    assert (state.stuck_node_id, state.agent_id) == ("scope1", "emissions.scope1")


async def test_node_within_its_timeout(make_ctx: MakeCtx) -> None:
    trace = trace_json()
    trace["node_traces"]["scope1"]["timeout_seconds"] = 3600
    f = await step3_bottleneck.run(make_ctx(), _state(trace))
    assert f.evidence["within_own_timeout"] is True and "within its own 3600s timeout" in f.summary


async def test_node_timeout_read_from_the_dag_when_trace_lacks_it(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    trace = trace_json()
    trace["node_traces"]["scope1"]["timeout_seconds"] = None
    orch.get("/dags/emissions").respond(
        json={"dag_id": "emissions", "nodes": {"scope1": {"timeout_policy": {"timeout_seconds": 2000}}}}
    )
    f = await step3_bottleneck.run(make_ctx(), _state(trace))
    assert f.evidence["node_timeout_seconds"] == 2000 and f.evidence["within_own_timeout"] is True


async def test_dag_read_failure_is_noted(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    trace = trace_json()
    trace["node_traces"]["scope1"]["timeout_seconds"] = None
    orch.get("/dags/emissions").respond(404, json={"error": "not_found", "detail": "no dag"})
    f = await step3_bottleneck.run(make_ctx(), _state(trace))
    assert f.status is StepStatus.PROBLEM and "no dag" in f.evidence["dag_error"]
    assert f.evidence["within_own_timeout"] is None


async def test_failed_node_blocking_the_level(make_ctx: MakeCtx) -> None:
    trace = trace_json()
    trace["node_traces"]["scope1"] = node_json("failed", "emissions.scope1", error="boom")
    f = await step3_bottleneck.run(make_ctx(), _state(trace))
    assert f.evidence["node_id"] == "scope1" and f.evidence["node_status"] == "failed"
    assert "the level cannot finish" in f.summary


async def test_nothing_holding_the_run_is_ok(make_ctx: MakeCtx) -> None:
    trace = trace_json(status="completed")
    for node in trace["node_traces"].values():
        node["status"] = "completed"
    state = _state(trace)
    f = await step3_bottleneck.run(make_ctx(), state)
    assert f.status is StepStatus.OK and state.stuck_node_id is None


async def test_without_trace_is_unknown(make_ctx: MakeCtx) -> None:
    f = await step3_bottleneck.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN
