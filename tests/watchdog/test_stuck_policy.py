"""The shipped policy's plan for each stuck state (issue 16) is what docs/architecture.md says: the
table after the `stuck-plan-table` marker is read and every row checked against the planner's plan for
a diagnosis of that cause, under the shipped `policy.yaml`, in `auto` mode."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.watchdog.documented_plans import documented_plans
from watchdog.planner import make_plan
from watchdog.plugins import installed_plugins
from watchdog.policy import load_policy
from watchdog.settings import Mode
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.stuck import StuckCause

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def diagnosis_of(cause: str, status: str) -> Diagnosis:
    step1 = Finding(
        step=1, name="execution", status=StepStatus.PROBLEM, summary="s", evidence={"status": status}
    )
    return Diagnosis(
        execution_id="ex-1",
        started_at=T0,
        completed_at=T0,
        findings=[step1],
        likely_cause=cause,
        cause_evidence=[f"step 1 (execution): {cause}"],
        dag_id="emissions",
        stuck_node_id="calc",
        agent_id="emissions.calc",
        namespace="greenlang",
    )


def test_the_docs_table_covers_every_stuck_cause() -> None:
    assert set(documented_plans()) == {cause.value for cause in StuckCause}


@pytest.mark.parametrize("cause", [cause.value for cause in StuckCause])
# A resume loop is a failed or interrupted run: the policy must not resume it (interrupted-run).
@pytest.mark.parametrize("status", ["running", "failed", "interrupted"])
def test_the_shipped_policys_plan_for_each_stuck_cause_is_the_documented_one(cause: str, status: str) -> None:
    rule, playbook, approval = documented_plans()[cause]
    catalog = installed_plugins()
    plan = make_plan(diagnosis_of(cause, status), load_policy(catalog=catalog), Mode.AUTO, catalog.registry)
    assert plan.rule == rule
    assert plan.playbook == playbook, plan.rationale
    assert plan.requires_approval == approval
    assert plan.likely_cause == cause
