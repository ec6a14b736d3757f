"""The policy file's playbook params are checked against the playbooks when the file is loaded.

A misspelt or out-of-range param used to load fine and only surface at the first incident, as a plan
"with incomplete params" escalated to on-call: automation silently off until it was needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from watchdog.errors import PolicyError
from watchdog.policy import load_policy, parse_policy

RULE = {"name": "r", "when": {"likely_cause": ["resource_contention"]}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"playbooks": {"restart_agent": {"params": {"ready_timeout_secs": 60}}}},
            "playbooks.restart_agent.params do not fit playbook restart_agent: "
            "ready_timeout_secs: Extra inputs are not permitted",
        ),
        (
            {"playbooks": {"cancel": {"params": {"verify_timeout_seconds": -1}}}},
            "playbooks.cancel.params do not fit playbook cancel: verify_timeout_seconds:",
        ),
        (
            {"rules": [{**RULE, "playbook": "throttle_concurrency"}]},
            "rules.0.params do not fit playbook throttle_concurrency: "
            "give max_parallel_nodes and/or max_concurrent_executions",
        ),
        (
            {"rules": [{**RULE, "playbook": "increase_node_timeout", "params": {"factor": 50}}]},
            "rules.0.params do not fit playbook increase_node_timeout: factor:",
        ),
    ],
)
def test_params_that_do_not_fit_their_playbook_are_refused_at_load(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(data)
    assert message in str(caught.value)
    assert "(top level)" not in str(caught.value)


def test_params_the_diagnosis_supplies_need_not_be_in_the_policy() -> None:
    policy = parse_policy(
        {
            "rules": [
                {**RULE, "playbook": "restart_agent"},  # agent_id comes from the diagnosis
                {**RULE, "name": "slow", "playbook": "increase_node_timeout"},  # dag_id, node_id too
            ]
        }
    )
    assert [r.playbook for r in policy.rules] == ["restart_agent", "increase_node_timeout"]


def test_the_shipped_policy_fits_its_playbooks() -> None:
    assert load_policy().playbook("throttle_concurrency").params == {
        "max_parallel_nodes": 5,
        "max_concurrent_executions": 25,
    }
