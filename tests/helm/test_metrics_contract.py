"""Every metric the chart's rules and dashboards query is one the real services export.

The orchestrator and the watchdog are started as the chart starts them (`gl-orchestrator serve`,
`gl-watchdog serve`) with the environment the chart renders: same variables, the chart's generated
tokens written where the Secret would be mounted, the chart's policy ConfigMap where it would be mounted,
paths moved under a temp dir, loopback ports. So the test also proves the rendered configuration boots
the real services, that /healthz and /readyz answer, and that their live /metrics exposition carries
every name the rules and dashboards use. A running DAG execution makes the per-execution series exist.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.helm.conftest import NAMESPACE, Manifest, one

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
START_DEADLINE = 30.0
HTTP_TIMEOUT = 5.0
# Series Prometheus itself makes, not the services.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}


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


# -- running the services as the chart configures them ---------------------------------------------


@dataclass
class Service:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path


def _chart_env(deployment: Manifest, root: Path, overrides: dict[str, str]) -> dict[str, str]:
    """The Deployment's container env as a process environment, with in-pod paths moved under `root`."""
    env: dict[str, str] = {}
    field_refs = {
        "metadata.name": f"{deployment['metadata']['name']}-test-0",
        "metadata.namespace": NAMESPACE,
    }
    for name, entry in (
        (e["name"], e) for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    ):
        if name in overrides:
            env[name] = overrides[name]
        elif "value" in entry:
            value = entry["value"]
            value = value.replace("/etc/gl-watchdog", str(root / "etc")).replace(
                "/var/lib/gl-watchdog", str(root / "data")
            )
            env[name] = value
        elif "fieldRef" in entry["valueFrom"]:
            env[name] = field_refs[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            pytest.fail(f"{name}: the default values should need no secretKeyRef, got {entry}")
    return env


def _materialize_mounts(manifests: list[Manifest], root: Path) -> dict[str, str]:
    """Write the chart's Secret and policy ConfigMap where the pods would see them; return the Secret."""
    secret = {k: base64.b64decode(v).decode() for k, v in one(manifests, "Secret")["data"].items()}
    (root / "etc" / "secrets").mkdir(parents=True, exist_ok=True)
    for key, value in secret.items():
        (root / "etc" / "secrets" / key).write_text(value, encoding="utf-8")
    (root / "etc" / "policy").mkdir(parents=True, exist_ok=True)
    policy = one(manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    (root / "etc" / "policy" / "policy.yaml").write_text(policy, encoding="utf-8")
    (root / "data").mkdir(exist_ok=True)
    return secret


def _start(command: list[str], env: dict[str, str], port: int, token: str, log: Path) -> Service:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(log.parent), "PYTHONUNBUFFERED": "1"}
    out = log.open("wb")
    proc = subprocess.Popen(
        command, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
    )
    out.close()
    service = Service(url=f"http://127.0.0.1:{port}", token=token, proc=proc, log=log)
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`{' '.join(command)}` exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{service.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    _stop(service)
    pytest.fail(
        f"`{' '.join(command)}` did not answer /healthz in {START_DEADLINE}s:\n{log.read_text()[-4000:]}"
    )


def _stop(service: Service) -> None:
    if service.proc.poll() is None:
        service.proc.terminate()
        try:
            service.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chart_files(
    tmp_path_factory: pytest.TempPathFactory, default_manifests: list[Manifest]
) -> tuple[list[Manifest], Path, dict[str, str]]:
    manifests = default_manifests
    root = tmp_path_factory.mktemp("pod")
    secret = _materialize_mounts(manifests, root)
    return manifests, root, secret


@pytest.fixture(scope="module")
def orchestrator(chart_files: tuple[list[Manifest], Path, dict[str, str]]) -> Iterator[Service]:
    manifests, root, secret = chart_files
    port = free_port()
    env = _chart_env(
        one(manifests, "Deployment", "orchestrator-service"),
        root,
        {"GL_ORCHESTRATOR_HOST": "127.0.0.1", "GL_ORCHESTRATOR_PORT": str(port)},
    )
    command = [str(BIN / "gl-orchestrator"), "serve"]
    service = _start(command, env, port, secret["orchestrator-api-token"], root / "orchestrator.log")
    try:
        yield service
    finally:
        _cancel_running(service)
        _stop(service)


@pytest.fixture(scope="module")
def watchdog(
    chart_files: tuple[list[Manifest], Path, dict[str, str]], orchestrator: Service
) -> Iterator[Service]:
    manifests, root, secret = chart_files
    port = free_port()
    env = _chart_env(
        one(manifests, "Deployment", "gl-watchdog"),
        root,
        {
            "GL_WATCHDOG_HOST": "127.0.0.1",
            "GL_WATCHDOG_PORT": str(port),
            "GL_WATCHDOG_ORCHESTRATOR_URL": orchestrator.url,
            "GL_WATCHDOG_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # No Kubernetes API here; everything else is as the chart renders it.
            "GL_WATCHDOG_KUBERNETES_ENABLED": "false",
        },
    )
    command = [str(BIN / "gl-watchdog"), "serve"]
    service = _start(command, env, port, secret["watchdog-api-token"], root / "watchdog.log")
    try:
        yield service
    finally:
        _stop(service)


def _start_a_stuck_run(orchestrator: Service) -> None:
    """Register a DAG whose node hangs and start it, so the per-execution gauges exist."""
    headers = {"Authorization": f"Bearer {orchestrator.token}"}
    dag = {
        "dag_id": "metrics-contract",
        "nodes": {"stuck": {"node_id": "stuck", "agent_id": "builtin.hang"}},
        "execution_timeout_seconds": 300,
    }
    base = f"{orchestrator.url}/api/v1/orchestrator"
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=headers) as client:
        if client.get(f"{base}/dags/metrics-contract").status_code == 404:
            created = client.post(f"{base}/dags", json=dag)
            assert created.status_code in (200, 201), created.text
        started = client.post(f"{base}/dags/metrics-contract/execute", json={"input_data": {}})
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            running = client.get(f"{base}/executions", params={"status": "running"}).json()["items"]
            if running:
                return
            time.sleep(0.1)
    pytest.fail("the hanging run never reached status running")


def _cancel_running(orchestrator: Service) -> None:
    """Cancel the hanging run so the graceful shutdown does not wait out its grace period."""
    base = f"{orchestrator.url}/api/v1/orchestrator"
    headers = {"Authorization": f"Bearer {orchestrator.token}"}
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=headers) as client:
        for item in client.get(f"{base}/executions", params={"status": "running"}).json()["items"]:
            client.post(f"{base}/executions/{item['execution_id']}/cancel")


def _scrape(service: Service) -> str:
    response = httpx.get(f"{service.url}/metrics", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.text


def test_orchestrator_boots_with_the_charts_configuration_and_exports_what_is_queried(
    orchestrator: Service, default_manifests: list[Manifest]
) -> None:
    assert httpx.get(f"{orchestrator.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 200
    # The chart's token (mounted file) is the one the API accepts.
    unauthorized = httpx.get(f"{orchestrator.url}/api/v1/orchestrator/executions", timeout=HTTP_TIMEOUT)
    assert unauthorized.status_code == 401
    _start_a_stuck_run(orchestrator)
    exported = exported_series_names(_scrape(orchestrator))
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
    _start_a_stuck_run(orchestrator)
    samples = {
        family.name: family.samples
        for family in text_string_to_metric_families(_scrape(orchestrator))
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
    exported = exported_series_names(_scrape(watchdog))
    queried = {
        n: w for n, w in queried_metric_names(default_manifests).items() if n.startswith("gl_watchdog_")
    }
    assert {"gl_watchdog_open_incidents", "gl_watchdog_remediations_total"} <= set(queried)
    missing = {name: sorted(where) for name, where in queried.items() if name not in exported}
    assert not missing, f"queried but not exported by the watchdog: {missing}"
