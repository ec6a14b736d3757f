"""`promtool check rules` and `promtool test rules` on the rules the chart renders.

The PrometheusRule is rendered with Helm's SDK, its orchestrator groups and its watchdog groups written
out as plain rules files next to copies of the chart's unit tests (helm/gl-watchdog/rules/*.test.yaml),
and promtool runs on those: what is tested is exactly what a cluster would load.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART_DIR, Manifest, Render, one, require_binary

pytestmark = pytest.mark.prometheus

RULES_SOURCE = CHART_DIR / "rules" / "orchestrator.rules.yaml"
RULES_TEST = CHART_DIR / "rules" / "orchestrator.rules.test.yaml"
WATCHDOG_RULES_SOURCE = CHART_DIR / "rules" / "watchdog.rules.yaml"
WATCHDOG_RULES_TEST = CHART_DIR / "rules" / "watchdog.rules.test.yaml"
WATCHDOG_ALERTS = {
    "WatchdogDown",
    "WatchdogNoSweepLeader",
    "WatchdogIncidentsStuck",
    "WatchdogAlertsRejected",
    "WatchdogIntakeShedding",
    "WatchdogCircuitBreakerOpen",
    "WatchdogApprovalsPastExpiry",
    "WatchdogApprovalsPilingUp",
    "WatchdogIncidentsHeldUnchecked",
    "WatchdogNotifierFailing",
}
PROMTOOL_TIMEOUT = 60


def _rules(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "PrometheusRule")["spec"]
    return spec


def _alert(rules: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == name]
    (rule,) = found
    return rule


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


def _part(rules: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The groups of one source file (orchestrator: gl-orchestrator.*, watchdog: gl-watchdog.*)."""
    return {"groups": [g for g in rules["groups"] if g["name"].startswith(prefix)]}


def _write_rules(directory: Path, rules: dict[str, Any] | str) -> None:
    """The orchestrator's rules (all of `rules` when a text) and its unit test, into `directory`."""
    text = (
        rules if isinstance(rules, str) else yaml.safe_dump(_part(rules, "gl-orchestrator."), sort_keys=False)
    )
    (directory / "orchestrator.rules.yaml").write_text(text, encoding="utf-8")
    shutil.copy(RULES_TEST, directory / RULES_TEST.name)


def _write_watchdog_rules(directory: Path, rules: dict[str, Any] | str) -> None:
    text = rules if isinstance(rules, str) else yaml.safe_dump(_part(rules, "gl-watchdog."), sort_keys=False)
    (directory / "watchdog.rules.yaml").write_text(text, encoding="utf-8")
    shutil.copy(WATCHDOG_RULES_TEST, directory / WATCHDOG_RULES_TEST.name)


def _failing_watchdog_unit_test(directory: Path, rules_text: str) -> str:
    """promtool's output on the watchdog unit test run against `rules_text`, which must fail it."""
    _write_watchdog_rules(directory, rules_text)
    result = _promtool("test", "rules", WATCHDOG_RULES_TEST.name, cwd=directory)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


@pytest.fixture
def rendered_rules(manifests: list[Manifest]) -> dict[str, Any]:
    return _rules(manifests)


def test_chart_renders_the_rules_files_unchanged(default_manifests: list[Manifest]) -> None:
    orchestrator = yaml.safe_load(RULES_SOURCE.read_text(encoding="utf-8"))
    watchdog = yaml.safe_load(WATCHDOG_RULES_SOURCE.read_text(encoding="utf-8"))
    assert _rules(default_manifests) == {"groups": orchestrator["groups"] + watchdog["groups"]}


def test_promtool_check_rules_accepts_the_rendered_rules(
    rendered_rules: dict[str, Any], tmp_path: Path
) -> None:
    _write_rules(tmp_path, rendered_rules)
    result = _promtool("check", "rules", "orchestrator.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_promtool_check_rules_accepts_the_rendered_watchdog_rules(
    rendered_rules: dict[str, Any], tmp_path: Path
) -> None:
    _write_watchdog_rules(tmp_path, rendered_rules)
    result = _promtool("check", "rules", "watchdog.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(WATCHDOG_ALERTS)} rules found" in result.stdout


def test_every_watchdog_alert_has_a_unit_test_and_a_runbook_section(rendered_rules: dict[str, Any]) -> None:
    tests = yaml.safe_load(WATCHDOG_RULES_TEST.read_text(encoding="utf-8"))["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    fired = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert tested == fired == WATCHDOG_ALERTS
    docs = (CHART_DIR.parent.parent / "docs" / "alerting.md").read_text(encoding="utf-8")
    for name in WATCHDOG_ALERTS:
        rule = _alert(rendered_rules, name)
        assert rule["annotations"]["runbook_url"] == f"docs/alerting.md#{name.lower()}"
        assert rule["annotations"]["summary"]
        assert f"### {name}\n" in docs


def test_unit_test_catches_a_watchdog_down_rule_that_ignores_a_missing_target(tmp_path: Path) -> None:
    text = WATCHDOG_RULES_SOURCE.read_text(encoding="utf-8").replace(
        '          or\n          absent(up{job="gl-watchdog"})\n', ""
    )
    assert text != WATCHDOG_RULES_SOURCE.read_text(encoding="utf-8")
    assert "alertname: WatchdogDown" in _failing_watchdog_unit_test(tmp_path, text)


def test_unit_test_catches_stuck_incidents_counted_from_retries(tmp_path: Path) -> None:
    text = WATCHDOG_RULES_SOURCE.read_text(encoding="utf-8").replace(
        "taken_back|escalated", "taken_back|escalated|retried"
    )
    assert "alertname: WatchdogIncidentsStuck" in _failing_watchdog_unit_test(tmp_path, text)


def test_unit_test_catches_notifier_failures_counted_from_successful_deliveries(tmp_path: Path) -> None:
    text = WATCHDOG_RULES_SOURCE.read_text(encoding="utf-8").replace('result="failed"', 'result=~".+"')
    assert "alertname: WatchdogNotifierFailing" in _failing_watchdog_unit_test(tmp_path, text)


def test_unit_test_catches_approvals_piling_up_counted_without_their_age(tmp_path: Path) -> None:
    source = WATCHDOG_RULES_SOURCE.read_text(encoding="utf-8")
    text = source.replace(
        "          and on(namespace)\n"
        "          (max by (namespace) (gl_watchdog_oldest_pending_approval_age_seconds) > 600)\n",
        "",
    )
    assert text != source
    assert "alertname: WatchdogApprovalsPilingUp" in _failing_watchdog_unit_test(tmp_path, text)


@pytest.mark.parametrize(
    ("write", "unit_test"),
    [(_write_rules, RULES_TEST), (_write_watchdog_rules, WATCHDOG_RULES_TEST)],
    ids=["orchestrator", "watchdog"],
)
def test_promtool_unit_tests_pass_on_the_rendered_rules(
    rendered_rules: dict[str, Any],
    tmp_path: Path,
    write: Callable[[Path, dict[str, Any]], None],
    unit_test: Path,
) -> None:
    write(tmp_path, rendered_rules)
    result = _promtool("test", "rules", unit_test.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_timeout_alert_is_the_shipped_expression(rendered_rules: dict[str, Any]) -> None:
    rule = _alert(rendered_rules, "OrchestratorExecutionTimeout")
    expr = " ".join(rule["expr"].split())
    assert expr == (
        'gl_orchestrator_dag_execution_duration_seconds{status="running"} '
        "> on(dag_id, execution_id) group_left gl_orchestrator_execution_timeout_seconds"
    )
    assert rule["for"] == "10m"
    assert rule["labels"] == {"severity": "warning"}
    assert "{{ $labels.execution_id }}" in rule["annotations"]["summary"]
    assert "{{ $labels.dag_id }}" in rule["annotations"]["summary"]
    assert rule["annotations"]["runbook_url"].endswith("/dag-execution-stuck")


def test_the_runbooks_related_alerts_ship(rendered_rules: dict[str, Any]) -> None:
    names = {r["alert"] for g in rendered_rules["groups"] for r in g["rules"]}
    assert names == {
        "OrchestratorExecutionTimeout",
        "OrchestratorServiceDown",
        "OrchestratorHighLatency",
        "OrchestratorHighFailureRate",
        *WATCHDOG_ALERTS,
    }
    assert (
        "gl_orchestrator_dag_run_latency_seconds_bucket"
        in _alert(rendered_rules, "OrchestratorHighLatency")["expr"]
    )
    assert "gl_orchestrator_executions_total" in _alert(rendered_rules, "OrchestratorHighFailureRate")["expr"]


def test_runbook_base_url_is_configurable(render: Render) -> None:
    rules = _rules(
        render({"monitoring": {"prometheusRule": {"runbookBaseUrl": "https://wiki.example.org/rb/"}}})
    )
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"]}
    assert urls["OrchestratorExecutionTimeout"] == "https://wiki.example.org/rb/dag-execution-stuck"
    assert all(
        url.startswith("https://wiki.example.org/rb/")
        for name, url in urls.items()
        if name.startswith("Orch")
    )
    assert urls["WatchdogDown"] == "docs/alerting.md#watchdogdown"


def test_watchdog_runbook_url_is_configurable(render: Render) -> None:
    rules = _rules(
        render(
            {"monitoring": {"prometheusRule": {"watchdogRunbookUrl": "https://docs.example.org/alerting"}}}
        )
    )
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"]}
    assert urls["WatchdogNoSweepLeader"] == "https://docs.example.org/alerting#watchdognosweepleader"
    assert {urls[name] for name in WATCHDOG_ALERTS} == {
        f"https://docs.example.org/alerting#{name.lower()}" for name in WATCHDOG_ALERTS
    }
    assert (
        urls["OrchestratorExecutionTimeout"]
        == "https://runbooks.greenlang.io/orchestrator/dag-execution-stuck"
    )


def test_matching_on_dag_id_alone_breaks_with_two_runs_of_one_dag(tmp_path: Path) -> None:
    """Why the shipped rule matches on(dag_id, execution_id): docs/alerting.md. The unit test catches it."""
    text = RULES_SOURCE.read_text(encoding="utf-8").replace(
        "on(dag_id, execution_id) group_left", "on(dag_id)"
    )
    _write_rules(tmp_path, text)
    result = _promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "many-to-many matching not allowed" in result.stdout + result.stderr


def test_unit_test_catches_a_shorter_for_duration(tmp_path: Path) -> None:
    text = RULES_SOURCE.read_text(encoding="utf-8").replace("for: 10m", "for: 5m", 1)
    _write_rules(tmp_path, text)
    result = _promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: OrchestratorExecutionTimeout" in result.stdout + result.stderr
