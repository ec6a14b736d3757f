"""The diagnosis of a stuck run the timeout cannot see (issue 16): step 1 judges the run's own stuck
states, step 3 shows the node's normal duration next to its current one and judges the stall with the
sweep's rule, and the likely cause names the state (ranked against the runbook's causes). The
orchestrator is faked with respx at the tests' fixed time (12:00)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import respx
from pydantic import ValidationError

from tests.watchdog.orchestrators import execution_json, node_json, trace_json
from watchdog.diagnostics import step1_execution, step3_bottleneck
from watchdog.diagnostics.runner import likely_cause
from watchdog.settings import WatchdogSettings
from watchdog_sdk.clients.orchestrator import Trace
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.stall import StallSettings
from watchdog_sdk.step_helpers import finding
from watchdog_sdk.stuck import StuckSettings

MakeCtx = Callable[..., DiagnosticContext]
NORMAL = {"count": 40, "p50_seconds": 60.0, "p95_seconds": 90.0, "p99_seconds": 110.0}
EMPTY_PAGE = {"items": [], "next_cursor": None, "total": 0}


def _stalled_trace(**node: Any) -> DiagnosisState:
    """scope1 running since 11:41 (19 minutes at 12:00), a node that normally takes a minute."""
    trace = trace_json()
    trace["node_traces"]["scope1"] = node_json(
        "running",
        "emissions.scope1",
        started_at="2026-03-01T11:41:00Z",
        **{"timeout_seconds": 3600, "normal_duration": NORMAL, **node},
    )
    state = DiagnosisState("ex-1", dag_id="emissions")
    state.trace = Trace.model_validate(trace)
    return state


async def test_step3_shows_the_normal_duration_next_to_the_current_one_and_calls_the_stall(
    make_ctx: MakeCtx,
) -> None:
    f = await step3_bottleneck.run(make_ctx(), _stalled_trace())
    assert f.summary.startswith(
        "node scope1 (agent emissions.scope1, attempt 1) running for 1140s "
        "(normally p50 1m 00s, p95 1m 30s, 40 runs), within its own 3600s timeout; "
        "node scope1 (agent emissions.scope1) stalling: running 19m 00s, 12.7 x its normal p95"
    )
    assert f.evidence["normal_duration"] == NORMAL and f.evidence["stall_reason"] == "stalled"
    assert f.evidence["threshold_seconds"] == 300 and f.evidence["progress_reports"] == 0
    assert [s["cause"] for s in f.evidence["stuck_states"]] == ["node_stalling"]


async def test_step3_calls_a_node_with_recent_progress_slow_not_hung(make_ctx: MakeCtx) -> None:
    state = _stalled_trace(last_progress_at="2026-03-01T11:58:00Z", progress_reports=7, progress_fraction=0.4)
    f = await step3_bottleneck.run(make_ctx(), state)
    assert f.evidence["stall_reason"] == "progressing" and f.evidence["stuck_states"] == []
    assert f.evidence["seconds_since_progress"] == 120 and f.evidence["progress_fraction"] == 0.4
    assert "stalling" not in f.summary


async def test_step3_says_when_a_node_has_no_history_to_compare_with(make_ctx: MakeCtx) -> None:
    f = await step3_bottleneck.run(make_ctx(), _stalled_trace(normal_duration=None))
    assert "(no completed runs of this node to compare with)" in f.summary
    assert f.evidence["stall_reason"] == "no_history" and f.evidence["stuck_states"] == []


async def test_step3_judges_with_the_configured_thresholds(make_ctx: MakeCtx) -> None:
    patient = WatchdogSettings(stuck_runs=StuckSettings(stall=StallSettings(floor_seconds=3600)))
    f = await step3_bottleneck.run(make_ctx(patient), _stalled_trace())
    assert f.evidence["stall_reason"] == "within_threshold" and f.evidence["threshold_seconds"] == 3600


async def _step1(orch: respx.MockRouter, make_ctx: MakeCtx, **execution: Any) -> Finding:
    """Step 1 over an execution record with `execution`'s fields (no other stuck run listed)."""
    orch.get("/executions/ex-1").respond(json=execution_json(**execution))
    orch.get("/executions").respond(json=EMPTY_PAGE)
    return await step1_execution.run(make_ctx(), DiagnosisState("ex-1"))


async def test_step1_calls_a_run_queued_past_the_bound_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    f = await _step1(orch, make_ctx, status="queued", started_at=None, queued_at="2026-03-01T11:00:00Z")
    assert f.status is StepStatus.PROBLEM
    assert f.summary == (
        "execution ex-1 of DAG emissions is queued; queued for 1h 00m, longer than 30m 00s: admission is "
        "starved (the concurrency limit is full, or too low)"
    )
    [state] = f.evidence["stuck_states"]
    assert (state["cause"], state["severity"], state["queued_seconds"]) == (
        "queued_too_long",
        "warning",
        3600,
    )


async def test_step1_leaves_a_run_queued_within_the_bound_alone(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    f = await _step1(orch, make_ctx, status="queued", started_at=None, queued_at="2026-03-01T11:50:00Z")
    assert f.status is StepStatus.OK and f.evidence["stuck_states"] == []


async def test_step1_names_every_stuck_state_the_run_is_in(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    f = await _step1(orch, make_ctx, owner_alive=False, cancel_requested_at="2026-03-01T11:00:00Z")
    assert [s["cause"] for s in f.evidence["stuck_states"]] == ["cancel_not_completing", "owner_gone"]
    assert f.summary.endswith("(also: owner_gone)") and f.evidence["owner_alive"] is False


# -- the likely cause ---------------------------------------------------------------------------------


def _f(step: int, status: StepStatus = StepStatus.OK, /, **evidence: Any) -> Finding:
    return finding(step, f"s{step}", status, f"summary {step}", **evidence)


def _states(*causes: str) -> list[dict[str, str]]:
    return [{"cause": cause, "severity": "warning", "summary": cause} for cause in causes]


def _findings(
    s1: Finding | None = None, s3: Finding | None = None, s4: Finding | None = None
) -> list[Finding]:
    return [
        s1 or _f(1, StepStatus.PROBLEM, status="running", stuck_states=[]),
        _f(2, StepStatus.PROBLEM),
        s3 or _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=True, stuck_states=[]),
        s4 or _f(4, StepStatus.UNKNOWN),
        _f(5),
        _f(6, StepStatus.UNKNOWN),
        _f(7),
        _f(8),
    ]


def test_a_resume_loop_outranks_the_interrupted_and_failed_runs_resume() -> None:
    for status in ("failed", "interrupted"):
        s1 = _f(1, StepStatus.PROBLEM, status=status, stuck_states=_states("resume_loop"))
        assert likely_cause(_findings(s1)) == ("resume_loop", ["step 1 (s1): summary 1"])


def test_a_queued_run_stuck_in_the_queue_is_not_taken_for_one_that_ended() -> None:
    s1 = _f(1, StepStatus.PROBLEM, status="queued", stuck_states=_states("queued_too_long"))
    assert likely_cause(_findings(s1))[0] == "queued_too_long"
    assert likely_cause(_findings(_f(1, status="queued", stuck_states=[])))[0] == "not_stuck"


def test_the_runs_own_states_rank_owner_first() -> None:
    s1 = _f(
        1, StepStatus.PROBLEM, status="running", stuck_states=_states("cancel_not_completing", "owner_gone")
    )
    assert likely_cause(_findings(s1))[0] == "owner_gone"


def test_a_stalling_node_is_never_taken_for_a_slow_one() -> None:
    stalling = _f(
        3,
        StepStatus.PROBLEM,
        node_status="running",
        within_own_timeout=True,
        stuck_states=_states("node_stalling"),
    )
    assert likely_cause(_findings(s3=stalling)) == ("node_stalling", ["step 3 (s3): summary 3"])
    assert likely_cause(_findings())[0] == "slow_node"


def test_a_cause_found_for_a_stall_outranks_the_stall() -> None:
    stalling = _f(
        3,
        StepStatus.PROBLEM,
        node_status="running",
        within_own_timeout=True,
        stuck_states=_states("node_stalling"),
    )
    agent_down = _f(4, StepStatus.PROBLEM, pod_count=0)
    assert likely_cause(_findings(s3=stalling, s4=agent_down))[0] == "agent_unresponsive"


def test_a_retry_storm_is_named_with_the_agents_finding_beside_it() -> None:
    storm = _f(
        3,
        StepStatus.PROBLEM,
        node_status="running",
        within_own_timeout=True,
        stuck_states=_states("retry_storm"),
    )
    agent = _f(4, StepStatus.PROBLEM, near_limit=True)
    assert likely_cause(_findings(s3=storm, s4=agent)) == (
        "retry_storm",
        ["step 3 (s3): summary 3", "step 4 (s4): summary 4"],
    )


def test_the_stall_quantile_must_be_one_the_orchestrator_reports() -> None:
    with pytest.raises(ValidationError, match=r"stall.quantile 0.9 is not one the orchestrator reports"):
        StuckSettings(stall=StallSettings(quantile=0.9))
    assert StuckSettings(stall=StallSettings(quantile=0.99)).stall.quantile == 0.99
