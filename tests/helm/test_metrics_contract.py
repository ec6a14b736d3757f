"""Every metric the chart's rules and dashboards query is one the real services export.

The orchestrator and the watchdog are started as the chart starts them (`gl-orchestrator serve`,
`gl-watchdog serve`) with the environment the chart renders: same variables, the chart's generated
tokens written where the Secret would be mounted, the chart's policy ConfigMap where it would be mounted,
paths moved under a temp dir, loopback ports. So the test also proves the rendered configuration boots
the real services, that /healthz and /readyz answer, and that their live /metrics exposition carries
every name the rules and dashboards use. A running DAG execution makes the per-execution series exist.
Every label a query matches or groups on must be one its metrics carry (from the live scrape for the
scrape-time gauges, from the registered metric objects for counters and histograms) or a target label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from orchestrator_core.metrics import OrchestratorMetrics
from tests.helm.chart import Manifest, one
from tests.helm.services import HTTP_TIMEOUT, Service, scrape, start_stuck_run
from watchdog.metrics import WatchdogMetrics

pytestmark = pytest.mark.slow

# Series Prometheus itself makes, not the services.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Labels the Prometheus Operator's ServiceMonitor scrape adds to every series of a target.
TARGET_LABELS = {"job", "namespace", "pod", "instance", "service", "endpoint", "container"}
# Labels of Prometheus' own series beyond the target labels.
PROMETHEUS_OWN_LABELS = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity"}}


# -- what the chart queries ------------------------------------------------------------------------


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (string literals removed; label names never start with gl_)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"\b(gl_[a-zA-Z0-9_:]+)", without_strings))
    names |= {n for n in PROMETHEUS_OWN if re.search(rf"\b{n}\b", without_strings)}
    return names


def _dashboard_exprs(node: Any) -> Iterator[str]:
    """Every PromQL string of a Grafana dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            is_promql = key == "expr" or (key in ("query", "definition") and "(" in str(value))
            if is_promql and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def queried_metric_names(manifests: list[Manifest]) -> dict[str, set[str]]:
    """metric name -> where it is queried (rule alert names, dashboard uids)."""
    where: dict[str, set[str]] = {}
    rules = one(manifests, "PrometheusRule")["spec"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in _metric_names(rule["expr"]):
                where.setdefault(name, set()).add(f"rule {rule['alert']}")
    for configmap in manifests:
        if configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"].startswith("gl-dashboard-"):
            ((_, text),) = configmap["data"].items()
            dashboard = json.loads(text)
            for expr in _dashboard_exprs(dashboard):
                for name in _metric_names(expr):
                    where.setdefault(name, set()).add(f"dashboard {dashboard['uid']}")
    return where


def exported_series_names(exposition: str) -> set[str]:
    """Series names a scrape of this exposition can produce, from its HELP/TYPE metadata and samples."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        elif family.type == "summary":
            names |= {family.name, family.name + "_sum", family.name + "_count"}
        else:
            names.add(family.name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le) (rate(gl_x_bucket{service="gl_not_a_metric", job="orchestrator-service"}[5m])) '
        "/ on(dag_id) gl_y or absent(up{job='a'}) and ALERTS"
    )
    assert _metric_names(expr) == {"gl_x_bucket", "gl_y", "up", "ALERTS"}
    exposition = (
        "# HELP gl_c_total c\n# TYPE gl_c_total counter\n"
        "# HELP gl_h h\n# TYPE gl_h histogram\n"
        "# HELP gl_g g\n# TYPE gl_g gauge\ngl_g 1.0\n"
    )
    assert {"gl_c_total", "gl_h_bucket", "gl_h_count", "gl_g"} <= exported_series_names(exposition)


def test_orchestrator_boots_with_the_charts_configuration_and_exports_what_is_queried(
    orchestrator: Service, default_manifests: list[Manifest]
) -> None:
    assert httpx.get(f"{orchestrator.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 200
    # The chart's token (mounted file) is the one the API accepts.
    unauthorized = httpx.get(f"{orchestrator.url}/api/v1/orchestrator/executions", timeout=HTTP_TIMEOUT)
    assert unauthorized.status_code == 401
    start_stuck_run(orchestrator, "metrics-contract", 300)
    exported = exported_series_names(scrape(orchestrator))
    queried = {
        n: w for n, w in queried_metric_names(default_manifests).items() if not n.startswith("gl_watchdog_")
    }
    assert "gl_orchestrator_dag_execution_duration_seconds" in queried
    assert "gl_orchestrator_dag_run_latency_seconds_bucket" in queried
    missing = {
        name: sorted(where) for name, where in queried.items() if name not in exported | PROMETHEUS_OWN
    }
    assert not missing, f"queried but not exported by the orchestrator: {missing}"


def test_live_per_execution_series_have_the_labels_the_alert_joins_on(orchestrator: Service) -> None:
    """The shipped rule joins duration and timeout on(dag_id, execution_id); check the live label sets."""
    start_stuck_run(orchestrator, "metrics-contract", 300)
    samples = {
        family.name: family.samples
        for family in text_string_to_metric_families(scrape(orchestrator))
        if family.name
        in ("gl_orchestrator_dag_execution_duration_seconds", "gl_orchestrator_execution_timeout_seconds")
    }
    durations = [
        s
        for s in samples["gl_orchestrator_dag_execution_duration_seconds"]
        if s.labels["status"] == "running"
    ]
    timeouts = samples["gl_orchestrator_execution_timeout_seconds"]
    assert durations, "a running execution must export its duration gauge"
    assert all(set(s.labels) == {"execution_id", "dag_id"} for s in timeouts), timeouts
    for duration in durations:
        assert {"execution_id", "dag_id", "status"} <= set(duration.labels)
        key = (duration.labels["dag_id"], duration.labels["execution_id"])
        matching = [t for t in timeouts if (t.labels["dag_id"], t.labels["execution_id"]) == key]
        assert len(matching) == 1, f"timeout series for {key}: {matching}"
    assert any(t.labels["dag_id"] == "metrics-contract" and t.value == 300 for t in timeouts)


def test_watchdog_boots_with_the_charts_configuration_and_exports_what_is_queried(
    watchdog: Service, default_manifests: list[Manifest]
) -> None:
    assert httpx.get(f"{watchdog.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 200
    unauthorized = httpx.get(f"{watchdog.url}/api/v1/incidents", timeout=HTTP_TIMEOUT)
    assert unauthorized.status_code == 401
    authorized = httpx.get(
        f"{watchdog.url}/api/v1/incidents",
        headers={"Authorization": f"Bearer {watchdog.token}"},
        timeout=HTTP_TIMEOUT,
    )
    assert authorized.status_code == 200, authorized.text
    exported = exported_series_names(scrape(watchdog))
    queried = {
        n: w for n, w in queried_metric_names(default_manifests).items() if n.startswith("gl_watchdog_")
    }
    assert {"gl_watchdog_open_incidents", "gl_watchdog_remediations_total"} <= set(queried)
    missing = {name: sorted(where) for name, where in queried.items() if name not in exported}
    assert not missing, f"queried but not exported by the watchdog: {missing}"


def test_watchdog_writes_json_log_lines_as_the_chart_configures_it(watchdog: Service) -> None:
    """The chart sets GL_WATCHDOG_LOG_FORMAT=json: every line the running service wrote is one object."""
    refused = httpx.get(f"{watchdog.url}/api/v1/incidents", timeout=HTTP_TIMEOUT)  # logs a refusal
    assert refused.status_code == 401
    lines = [json.loads(line) for line in watchdog.log.read_text(encoding="utf-8").splitlines() if line]
    assert lines, "the watchdog wrote no log line"
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["logger"] == "watchdog.auth_failures" for line in lines)


# -- labels ----------------------------------------------------------------------------------------


def _declared_labels() -> dict[str, set[str]]:
    """Series name -> label names, from the metric objects both services register (counters and
    histograms have no samples, hence no labels in an exposition, until something is counted)."""
    labels: dict[str, set[str]] = {}
    for owner in (OrchestratorMetrics(), WatchdogMetrics()):
        for metric in vars(owner).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            names = set(metric._labelnames)  # private: the declared label names
            name = metric._name
            if metric._type == "counter":
                labels[f"{name}_total"] = names
            elif metric._type == "histogram":
                labels |= {f"{name}_bucket": names | {"le"}, f"{name}_sum": names, f"{name}_count": names}
            else:
                labels[name] = names
    return labels


def _live_labels(exposition: str) -> dict[str, set[str]]:
    """Series name -> label names seen in a scrape (the scrape-time gauges)."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def _queried_exprs(manifests: list[Manifest]) -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and dashboard query."""
    found = []
    for group in one(manifests, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            found.append((f"rule {rule['alert']}", rule["expr"]))
    for configmap in manifests:
        if configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"].startswith("gl-dashboard-"):
            ((_, text),) = configmap["data"].items()
            dashboard = json.loads(text)
            found += [(f"dashboard {dashboard['uid']}", expr) for expr in _dashboard_exprs(dashboard)]
    return found


SELECTOR = re.compile(r"\b(gl_[a-zA-Z0-9_:]+|up|ALERTS)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def label_problems(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Labels `expr` matches or groups on that none of its metrics carries."""
    problems = []
    names = _metric_names(expr)
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        return [f"no label information for {unknown}"]
    carried = set().union(*(known[n] for n in names)) | TARGET_LABELS
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', matchers)):
            if label not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    for group in GROUPING.findall(expr):
        for label in (part.strip() for part in group.split(",")):
            if label and label not in carried:
                problems.append(f"grouping on {label!r}, which none of {sorted(names)} carries")
    return problems


def test_label_check_catches_a_wrong_label() -> None:
    known = {"gl_x_total": {"dag_id"}, "gl_y_bucket": {"node_id", "le"}}
    assert label_problems('sum by (dag_id) (rate(gl_x_total{namespace=~"a"}[5m]))', known) == []
    assert label_problems('rate(gl_x_total{node_id="a"}[5m])', known) == ["gl_x_total has no label 'node_id'"]
    assert label_problems("sum by (le, agent_id) (rate(gl_y_bucket[5m]))", known) == [
        "grouping on 'agent_id', which none of ['gl_y_bucket'] carries"
    ]


def test_every_label_a_rule_or_dashboard_uses_is_one_the_metric_carries(
    orchestrator: Service, default_manifests: list[Manifest]
) -> None:
    start_stuck_run(orchestrator, "metrics-contract", 300)
    known = {**PROMETHEUS_OWN_LABELS, **_live_labels(scrape(orchestrator)), **_declared_labels()}
    problems = {
        f"{where}: {expr}": found
        for where, expr in _queried_exprs(default_manifests)
        if (found := label_problems(expr, known))
    }
    assert not problems, problems
