"""The likely cause: which finding of the eight steps names the cause of a stuck run, and in what order
the rules rank (`watchdog.diagnostics.runner.likely_cause`, a pure function of the findings)."""

from __future__ import annotations

from typing import Any

from watchdog.diagnostics.runner import likely_cause
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.step_helpers import finding


def _f(step: int, status: StepStatus = StepStatus.OK, /, **evidence: Any) -> Finding:
    return finding(step, f"s{step}", status, f"summary {step}", **evidence)


def _base(within_own_timeout: bool | None = None, **overrides: Finding) -> list[Finding]:
    """Findings of a stuck run with nothing found but the overrides (`s4=...` replaces step 4's)."""
    findings = {
        1: _f(1, StepStatus.PROBLEM, status="running"),
        2: _f(2, StepStatus.PROBLEM),
        3: _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=within_own_timeout),
        4: _f(4, StepStatus.UNKNOWN),
        5: _f(5),
        6: _f(6, StepStatus.UNKNOWN),
        7: _f(7),
        8: _f(8),
    }
    for key, value in overrides.items():
        findings[int(key[1:])] = value
    return list(findings.values())


def test_cause_agent_crash_loop() -> None:
    s4 = _f(4, StepStatus.PROBLEM, pod_count=1, unhealthy_pods=["p"], reasons=["CrashLoopBackOff"])
    cause, evidence = likely_cause(_base(s4=s4))
    assert cause == "agent_unresponsive" and evidence[0] == "step 4 (s4): summary 4"


def test_cause_agent_without_pods() -> None:
    assert likely_cause(_base(s4=_f(4, StepStatus.PROBLEM, pod_count=0)))[0] == "agent_unresponsive"


def test_cause_dead_lock_holder() -> None:
    s6 = _f(6, StepStatus.PROBLEM, holder_state="dead", lock={"ttl_seconds": 10})
    assert likely_cause(_base(s6=s6)) == ("stuck_lock", ["step 6 (s6): summary 6"])


def test_cause_lock_without_ttl() -> None:
    s6 = _f(6, StepStatus.PROBLEM, holder_state="alive", lock={"ttl_seconds": -1})
    assert likely_cause(_base(s6=s6))[0] == "stuck_lock"


def test_other_runs_lock_without_ttl_is_not_this_runs_cause() -> None:
    s6 = _f(6, StepStatus.PROBLEM, holder_state="alive", lock={"ttl_seconds": 10}, locks_without_ttl=["x"])
    assert likely_cause(_base(s6=s6))[0] == "unknown"


def test_cause_checkpoint_store() -> None:
    s8 = _f(8, StepStatus.PROBLEM, save_errors_15m=4.0, completed_without_checkpoint=[])
    assert likely_cause(_base(s8=s8))[0] == "checkpoint_store"


def test_cause_contention() -> None:
    s5 = _f(5, StepStatus.PROBLEM, saturated=True, db_pool_pending=0)
    assert likely_cause(_base(s5=s5))[0] == "resource_contention"


def test_cause_external_api() -> None:
    s7 = _f(7, StepStatus.PROBLEM, external_call_lines=["waiting for ERP api"])
    assert likely_cause(_base(s7=s7))[0] == "external_api_slow"


def test_cause_slow_node() -> None:
    s3 = _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=True)
    assert likely_cause(_base(s3=s3))[0] == "slow_node"


def test_cause_node_past_own_timeout() -> None:
    s3 = _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=False)
    assert likely_cause(_base(s3=s3))[0] == "agent_unresponsive"


def test_cause_not_stuck_when_run_finished() -> None:
    assert likely_cause(_base(s1=_f(1, StepStatus.OK, status="completed")))[0] == "not_stuck"


def test_cause_unknown_lists_problems() -> None:
    cause, evidence = likely_cause(_base())
    assert cause == "unknown"
    assert evidence == ["step 1 (s1): summary 1", "step 2 (s2): summary 2", "step 3 (s3): summary 3"]


def test_agent_outranks_lock_and_lock_outranks_checkpoints() -> None:
    s4 = _f(4, StepStatus.PROBLEM, pod_count=1, unhealthy_pods=["p"], reasons=["OOMKilled"])
    s6 = _f(6, StepStatus.PROBLEM, holder_state="dead", lock={"ttl_seconds": 10})
    s8 = _f(8, StepStatus.PROBLEM, save_errors_15m=1.0)
    assert likely_cause(_base(s4=s4, s6=s6, s8=s8))[0] == "agent_unresponsive"
    assert likely_cause(_base(s6=s6, s8=s8))[0] == "stuck_lock"


# -- a hung agent is not a slow node, nor contention ------------------------------------------------


def _within_own_timeout(s4: Finding) -> list[Finding]:
    """A run whose stuck node is still within its own timeout, with step 4's finding `s4`."""
    return _base(within_own_timeout=True, s4=s4)


def test_a_hung_agent_within_its_node_timeout_is_not_slow_node() -> None:
    hung = _f(4, StepStatus.PROBLEM, hung_lines=["... waiting forever"])
    cause, evidence = likely_cause(_within_own_timeout(hung))
    assert cause == "agent_unresponsive" and evidence == ["step 4 (s4): summary 4", "step 3 (s3): summary 3"]
    assert likely_cause(_within_own_timeout(_f(4, StepStatus.UNKNOWN, hung_lines=[])))[0] == "slow_node"


SATURATED = {
    "saturated": True,
    "active_executions": 1,
    "max_concurrent_executions": 1,
    "queued_executions": 2,
}


def test_a_hung_run_that_fills_the_last_slot_is_not_contention() -> None:
    findings = _within_own_timeout(_f(4, StepStatus.PROBLEM, hung_lines=["... waiting forever"]))
    findings[4] = _f(5, StepStatus.PROBLEM, **SATURATED)
    cause, evidence = likely_cause(findings)
    assert cause == "agent_unresponsive"
    assert evidence == ["step 4 (s4): summary 4", "step 3 (s3): summary 3", "step 5 (s5): summary 5"]


def test_a_slow_node_at_the_concurrency_limit_is_contention() -> None:
    findings = _within_own_timeout(_f(4, StepStatus.UNKNOWN))
    findings[4] = _f(5, StepStatus.PROBLEM, **SATURATED)
    assert likely_cause(findings) == (
        "resource_contention",
        ["step 5 (s5): summary 5", "step 3 (s3): summary 3"],
    )
