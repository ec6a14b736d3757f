"""`promtool check rules` and `promtool test rules` on the rules the chart renders.

The PrometheusRule is rendered with Helm's SDK, its spec written out as a plain rules file next to a copy
of the chart's unit test (helm/gl-watchdog/rules/orchestrator.rules.test.yaml), and promtool runs on
that: what is tested is exactly what a cluster would load.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART_DIR, Manifest, Render, one, require_binary

pytestmark = pytest.mark.prometheus

RULES_SOURCE = CHART_DIR / "rules" / "orchestrator.rules.yaml"
RULES_TEST = CHART_DIR / "rules" / "orchestrator.rules.test.yaml"
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


def _write_rules(directory: Path, rules: dict[str, Any] | str) -> None:
    text = rules if isinstance(rules, str) else yaml.safe_dump(rules, sort_keys=False)
    (directory / "orchestrator.rules.yaml").write_text(text, encoding="utf-8")
    shutil.copy(RULES_TEST, directory / RULES_TEST.name)


@pytest.fixture
def rendered_rules(manifests: list[Manifest]) -> dict[str, Any]:
    return _rules(manifests)


def test_chart_renders_the_rules_file_unchanged(default_manifests: list[Manifest]) -> None:
    assert _rules(default_manifests) == yaml.safe_load(RULES_SOURCE.read_text(encoding="utf-8"))


def test_promtool_check_rules_accepts_the_rendered_rules(
    rendered_rules: dict[str, Any], tmp_path: Path
) -> None:
    _write_rules(tmp_path, rendered_rules)
    result = _promtool("check", "rules", "orchestrator.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_promtool_unit_tests_pass_on_the_rendered_rules(
    rendered_rules: dict[str, Any], tmp_path: Path
) -> None:
    _write_rules(tmp_path, rendered_rules)
    result = _promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
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
    assert all(url.startswith("https://wiki.example.org/rb/") for url in urls.values())


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
