"""The planner: diagnosis + policy → plan with params, risk, approval need and a rationale citing evidence."""

from __future__ import annotations

from datetime import UTC, datetime

from playbooks.registry import default_registry
from watchdog.planner import make_plan
from watchdog.policy import Mode, load_policy, parse_policy
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.outcomes import Risk

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def diagnosis(cause: str, evidence: list[str] | None = None, **facts: str) -> Diagnosis:
    return Diagnosis(
        execution_id="e1",
        started_at=T0,
        completed_at=T0,
        findings=[
            Finding(
                step=1,
                name="execution",
                status=StepStatus.OK,
                summary="running",
                evidence={"status": "running"},
            ),
            Finding(
                step=4, name="agent", status=StepStatus.PROBLEM, summary="pod in CrashLoopBackOff for 12 min"
            ),
        ],
        likely_cause=cause,
        cause_evidence=evidence or [],
        **facts,
    )


def test_crashlooping_agent_plans_restart_agent_with_its_id_and_cites_evidence() -> None:
    d = diagnosis(
        "agent_unresponsive",
        ["agent pod in CrashLoopBackOff for 12 min"],
        agent_id="calc",
        stuck_node_id="n2",
    )
    plan = make_plan(d, load_policy(), Mode.RECOMMEND, default_registry())
    assert plan.playbook == "restart_agent"
    assert plan.params["agent_id"] == "calc"
    assert plan.params["ready_timeout_seconds"] == 120
    assert plan.risk is Risk.MEDIUM
    assert plan.requires_approval and plan.will_act
    assert plan.rationale.startswith("agent pod in CrashLoopBackOff for 12 min → restart_agent")


def test_without_cause_evidence_the_problem_findings_are_cited() -> None:
    plan = make_plan(
        diagnosis("agent_unresponsive", agent_id="calc"), load_policy(), Mode.AUTO, default_registry()
    )
    assert "step 4 (agent): pod in CrashLoopBackOff for 12 min" in plan.rationale


def test_auto_mode_acts_without_approval_only_where_policy_allows() -> None:
    policy = parse_policy(
        {
            "playbooks": {
                "increase_node_timeout": {"requires_approval": False},
                "release_lock": {"requires_approval": False},
            },
            "rules": [
                {
                    "name": "slow",
                    "when": {"likely_cause": ["slow_node"]},
                    "playbook": "increase_node_timeout",
                },
                {"name": "lock", "when": {"likely_cause": ["stuck_lock"]}, "playbook": "release_lock"},
            ],
        }
    )
    slow = make_plan(
        diagnosis("slow_node", dag_id="d", stuck_node_id="n2"), policy, Mode.AUTO, default_registry()
    )
    assert slow.playbook == "increase_node_timeout" and slow.params["node_id"] == "n2"
    assert slow.will_act and not slow.requires_approval
    lock = make_plan(diagnosis("stuck_lock"), policy, Mode.AUTO, default_registry())
    assert lock.risk is Risk.HIGH and lock.requires_approval  # high risk always asks, whatever the file says


def test_observe_mode_plans_but_does_not_act() -> None:
    plan = make_plan(
        diagnosis("agent_unresponsive", agent_id="calc"), load_policy(), Mode.OBSERVE, default_registry()
    )
    assert plan.playbook == "restart_agent"
    assert not plan.will_act and not plan.requires_approval
    assert "observe mode" in plan.rationale


def test_no_matching_rule_escalates() -> None:
    plan = make_plan(diagnosis("unknown"), load_policy(), Mode.AUTO, default_registry())
    assert plan.playbook is None and not plan.will_act
    assert "no policy rule matches" in plan.rationale


def test_rule_without_playbook_escalates_with_its_rationale() -> None:
    plan = make_plan(diagnosis("checkpoint_store"), load_policy(), Mode.AUTO, default_registry())
    assert plan.playbook is None and plan.rule == "checkpoint-store"
    assert "checkpoint saves are failing" in plan.rationale


def test_missing_fact_for_required_param_escalates() -> None:
    plan = make_plan(diagnosis("agent_unresponsive"), load_policy(), Mode.AUTO, default_registry())
    assert plan.playbook is None
    assert "agent_id" in plan.rationale and "incomplete" in plan.rationale
