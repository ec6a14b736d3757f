"""The Grafana dashboards' PromQL parses, and their headline numbers are right with two replicas.

Every target and variable query of the rendered dashboard ConfigMaps is written out as a recording rule
(Grafana variables replaced by values Grafana would send) and checked with `promtool check rules`. Then
`promtool test rules` evaluates the stat panels an on-call engineer reads first against two orchestrator
and two watchdog replicas: gauges every replica reads from the shared store (the admission queue, open
incidents, pending approvals) must not be summed over replicas, per-replica ones (active runs, their
limits) must be.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import Manifest, find, require_binary
from watchdog.annotations import APPROVAL_TAGS
from watchdog.annotations import TAGS as REMEDIATION_TAGS

pytestmark = pytest.mark.prometheus

PROMTOOL_TIMEOUT = 60
# What Grafana substitutes: "All" of a multi-value variable is its allValue (.*); intervals are durations.
VARIABLES = {
    "$namespace": ".*",
    "$dag_id": ".*",
    "$node_id": ".*",
    "$agent_id": ".*",
    "$__rate_interval": "2m",
    "$__interval": "1m",
}


def _dashboards(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    dashboards = {}
    for configmap in find(manifests, "ConfigMap"):
        if configmap["metadata"]["name"].startswith("gl-dashboard-"):
            ((_, text),) = configmap["data"].items()
            dashboard = json.loads(text)
            dashboards[dashboard["uid"]] = dashboard
    return dashboards


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            definition = variable["definition"]
            assert definition.startswith("label_values(") and definition.endswith(")"), definition
            # label_values(<selector>, <label>): the selector is what Prometheus evaluates
            selector = definition.removeprefix("label_values(").removesuffix(")").rsplit(",", 1)[0]
            found.append((f"variable {variable['name']}", selector))
    return found


def _stat(dashboard: dict[str, Any], title: str) -> str:
    """The query of the stat panel `title`, as Grafana sends it with every variable at "All"."""
    (panel,) = [p for p in dashboard["panels"] if p["type"] == "stat" and p.get("title") == title]
    (target,) = panel["targets"]
    return _substitute(target["expr"])


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


def test_every_dashboard_query_is_valid_promql(manifests: list[Manifest], tmp_path: Path) -> None:
    dashboards = _dashboards(manifests)
    assert set(dashboards) == {"dag-execution-overview", "node-performance", "gl-watchdog"}
    rules = []
    for uid, dashboard in sorted(dashboards.items()):
        for index, (where, expr) in enumerate(_queries(dashboard)):
            record = f"dashboard:{uid.replace('-', '_')}:q{index}"
            # promtool names the failing rule; its label says which panel or variable it came from
            rules.append({"record": record, "expr": _substitute(expr), "labels": {"source": where}})
    (tmp_path / "dashboards.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8"
    )
    result = _promtool("check", "rules", "dashboards.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def _series(name: str, pod: str, value: str, **labels: str) -> dict[str, str]:
    job = "gl-watchdog" if name.startswith("gl_watchdog_") else "orchestrator-service"
    all_labels = {"job": job, "namespace": "greenlang", "pod": pod, **labels}
    text = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{text}}}", "values": value}


def test_headline_numbers_are_right_with_two_replicas_of_each_service(
    default_manifests: list[Manifest], tmp_path: Path
) -> None:
    dashboards = _dashboards(default_manifests)
    overview, watchdog = dashboards["dag-execution-overview"], dashboards["gl-watchdog"]
    input_series = [
        # Two orchestrator replicas: 2 and 1 runs of their own, each admits up to 50, and both report the
        # length of the one shared queue (4 runs waiting).
        _series("gl_orchestrator_active_executions", "orchestrator-service-a", "2x5"),
        _series("gl_orchestrator_active_executions", "orchestrator-service-b", "1x5"),
        _series("gl_orchestrator_max_concurrent_executions", "orchestrator-service-a", "50x5"),
        _series("gl_orchestrator_max_concurrent_executions", "orchestrator-service-b", "50x5"),
        _series("gl_orchestrator_queued_executions", "orchestrator-service-a", "4x5"),
        _series("gl_orchestrator_queued_executions", "orchestrator-service-b", "4x5"),
        # One run past its timeout (on replica a), one within it (on replica b).
        _series(
            "gl_orchestrator_dag_execution_duration_seconds",
            "orchestrator-service-a",
            "900x5",
            dag_id="report",
            execution_id="run-1",
            status="running",
        ),
        _series(
            "gl_orchestrator_execution_timeout_seconds",
            "orchestrator-service-a",
            "300x5",
            dag_id="report",
            execution_id="run-1",
        ),
        _series(
            "gl_orchestrator_dag_execution_duration_seconds",
            "orchestrator-service-b",
            "60x5",
            dag_id="report",
            execution_id="run-2",
            status="running",
        ),
        _series(
            "gl_orchestrator_execution_timeout_seconds",
            "orchestrator-service-b",
            "300x5",
            dag_id="report",
            execution_id="run-2",
        ),
        # Two watchdog replicas read the same store: 3 open incidents, 1 prompt waiting.
        _series("gl_watchdog_open_incidents", "gl-watchdog-a", "3x5"),
        _series("gl_watchdog_open_incidents", "gl-watchdog-b", "3x5"),
        _series("gl_watchdog_pending_approvals", "gl-watchdog-a", "1x5"),
        _series("gl_watchdog_pending_approvals", "gl-watchdog-b", "1x5"),
        _series("gl_watchdog_is_leader", "gl-watchdog-a", "1x5"),
        _series("gl_watchdog_is_leader", "gl-watchdog-b", "0x5"),
    ]
    expected = {
        _stat(overview, "Active executions"): 3,
        _stat(overview, "Execution capacity"): 100,
        _stat(overview, "Queued executions"): 4,
        _stat(overview, "Executions past their timeout"): 1,
        _stat(watchdog, "Open incidents"): 3,
        _stat(watchdog, "Pending approvals"): 1,
        _stat(watchdog, "Sweep leaders"): 1,
    }
    test_file = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    {"expr": expr, "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": value}]}
                    for expr, value in expected.items()
                ],
            }
        ],
    }
    (tmp_path / "dashboards.test.yaml").write_text(yaml.safe_dump(test_file), encoding="utf-8")
    result = _promtool("test", "rules", "dashboards.test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_shows_the_watchdogs_remediation_and_approval_annotations(
    manifests: list[Manifest],
) -> None:
    """The annotations `watchdog.annotations` posts are tagged `gl-watchdog` and `remediation` or
    `approval`: each dashboard queries Grafana's own annotations by each pair (those pinned to one
    dashboard show there by themselves), so each shows once, in its own colour."""
    dashboards = _dashboards(manifests)
    assert set(dashboards) == {"gl-watchdog", "dag-execution-overview", "node-performance"}
    expected = [
        {"type": "tags", "tags": list(tags), "matchAny": False, "limit": 100}
        for tags in (REMEDIATION_TAGS, APPROVAL_TAGS)
    ]
    for uid, dashboard in dashboards.items():
        by_tag = [
            entry["target"]
            for entry in dashboard["annotations"]["list"]
            if entry["datasource"]["type"] == "grafana" and entry.get("target", {}).get("type") == "tags"
        ]
        assert by_tag == expected, uid
