"""The remediation policy file: the shipped default loads, bad files fail naming the field, rules match."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from playbooks.registry import default_registry
from watchdog.errors import PolicyError
from watchdog.policy import DEFAULT_POLICY_FILE, Mode, load_policy, parse_policy
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

PLAYBOOK_NAMES = frozenset(default_registry().names())
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def diagnosis(
    likely_cause: str, *, status: str = "running", problem_steps: tuple[int, ...] = ()
) -> Diagnosis:
    findings = [
        Finding(step=1, name="execution", status=StepStatus.OK, summary="run", evidence={"status": status})
    ]
    findings += [
        Finding(step=s, name=f"s{s}", status=StepStatus.PROBLEM, summary="bad") for s in problem_steps
    ]
    return Diagnosis(
        execution_id="e1", started_at=T0, completed_at=T0, findings=findings, likely_cause=likely_cause
    )


def test_shipped_policy_loads_and_covers_every_playbook() -> None:
    policy = load_policy()
    assert DEFAULT_POLICY_FILE.exists()
    assert set(policy.playbooks) == PLAYBOOK_NAMES
    used = {rule.playbook for rule in policy.rules if rule.playbook}
    assert used == PLAYBOOK_NAMES
    # cancel answers only a retry storm, and never without a human: its risk is high and it needs approval
    assert [rule.name for rule in policy.rules if rule.playbook == "cancel"] == ["retry-storm"]
    assert policy.playbook("cancel").requires_approval and policy.playbook("cancel").risk == "high"
    assert policy.limits.agent_restarts_per_agent_per_hour == 3


def test_first_matching_rule_wins() -> None:
    policy = load_policy()
    rule = policy.first_match(diagnosis("external_api_slow"))
    assert rule is not None and rule.playbook == "restart_agent"
    rule = policy.first_match(diagnosis("stuck_lock"))
    assert rule is not None and rule.playbook == "release_lock"
    rule = policy.first_match(diagnosis("unknown", status="interrupted"))
    assert rule is not None and rule.playbook == "resume"
    assert policy.first_match(diagnosis("unknown")) is None


def test_problem_steps_condition() -> None:
    policy = parse_policy({"rules": [{"name": "r", "when": {"problem_steps": [4, 6]}, "playbook": "cancel"}]})
    assert policy.first_match(diagnosis("x", problem_steps=(4,))) is None
    assert policy.first_match(diagnosis("x", problem_steps=(4, 6))) is not None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (
            {"rules": [{"name": "r", "when": {"likely_cause": ["x"]}, "playbook": "reboot"}]},
            "rules.0.playbook",
        ),
        ({"playbooks": {"nuke": {}}}, "playbooks.nuke"),
        ({"limits": {"agent_restarts_per_agent_per_hour": -1}}, "limits.agent_restarts_per_agent_per_hour"),
        ({"limits": {"circuit_breaker": {"failures": 0}}}, "limits.circuit_breaker.failures"),
        ({"rules": [{"name": "r", "when": {}, "playbook": "cancel"}]}, "rules.0.when"),
        (
            {"rules": [{"name": "r", "when": {"problem_steps": [9]}, "playbook": "cancel"}]},
            "rules.0.when.problem_steps",
        ),
        ({"playbooks": {"cancel": {"risk": "extreme"}}}, "playbooks.cancel.risk"),
        ({"surprise": 1}, "surprise"),
        ({"version": 2}, "version"),
    ],
)
def test_invalid_policy_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(data, source="p.yaml")
    assert f"{field}:" in str(info.value)
    assert str(info.value).startswith("p.yaml: invalid policy")


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="must be a mapping"):
        load_policy(listy)


def test_deployment_observe_overrides_playbook_modes() -> None:
    policy = parse_policy({"playbooks": {"restart_agent": {"mode": "auto"}}})
    assert policy.effective_mode(Mode.RECOMMEND, "restart_agent") is Mode.AUTO
    assert policy.effective_mode(Mode.RECOMMEND, "cancel") is Mode.RECOMMEND
    assert policy.effective_mode(Mode.OBSERVE, "restart_agent") is Mode.OBSERVE


def test_serve_with_an_invalid_policy_file_exits_with_the_field_named(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - name: r\n    when: {likely_cause: [x]}\n    playbook: reboot\n", encoding="utf-8"
    )
    env = {
        **os.environ,
        "GL_WATCHDOG_POLICY_FILE": str(policy),
        "GL_WATCHDOG_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}",
    }
    gl_watchdog = str(Path(sys.executable).with_name("gl-watchdog"))
    proc = subprocess.run(
        [gl_watchdog, "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "rules.0.playbook: unknown playbook 'reboot'" in proc.stderr
    assert "[line 4, rule 'r']" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- remediation policy ----------------------------------------------------------------------------------
# The policy file's playbook params are checked against the playbooks when the file is loaded.
#
# A misspelt or out-of-range param used to load fine and only surface at the first incident, as a plan
# "with incomplete params" escalated to on-call: automation silently off until it was needed.


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


def test_a_namespace_matcher_matches_the_diagnosis_namespace_by_pattern() -> None:
    policy = parse_policy(
        {"rules": [{"name": "prod", "when": {"namespace": ["prod-*"]}, "playbook": "resume"}]}
    )

    def in_namespace(namespace: str | None) -> Diagnosis:
        return diagnosis("unknown").model_copy(update={"namespace": namespace})

    assert policy.first_match(in_namespace("prod-eu")) is not None
    assert policy.first_match(in_namespace("staging")) is None
    assert policy.first_match(in_namespace(None)) is None  # a diagnosis without one matches no pattern


def test_a_rule_matching_on_nothing_names_the_namespace_among_the_matchers() -> None:
    with pytest.raises(PolicyError, match=r"at least one of likely_cause, .*dag, agent, namespace"):
        parse_policy({"rules": [{"name": "empty", "when": {}, "playbook": "resume"}]})
