"""The chart's alert, end to end on real components.

A real Prometheus loads the rules the chart renders and scrapes the real orchestrator (started with the
chart's configuration) while a run hangs past its timeout: the shipped `OrchestratorExecutionTimeout`
goes pending for that run only, and clears when the run is cancelled. Then the whole path: Prometheus
-> a real Alertmanager running the documented alertmanager.yml route -> the real watchdog's
`POST /api/v1/alerts` with the chart's watchdog token -> an incident for the execution. For that second
test only, the rule's `for: 10m` is shortened to 0s (nothing else changes); the ten-minute pending window
itself is proven by the promtool unit test.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_for_port
from tests.helm.chart import NAMESPACE, Manifest, one, require_binary
from tests.helm.services import (
    HTTP_TIMEOUT,
    Service,
    alertmanager_snippet,
    running_alertmanager,
    start_stuck_run,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

DEADLINE = 45.0
ALERT = "OrchestratorExecutionTimeout"


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """A real Prometheus on a loopback port with `config`; its base URL."""
    binary = require_binary("prometheus")
    port = free_port()
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_for_port(port, timeout=30):
            pytest.fail(f"prometheus did not start: {log_path.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _prometheus_config(
    orchestrator: Service, rules_file: Path, alertmanager: str | None = None
) -> dict[str, Any]:
    host_port = orchestrator.url.removeprefix("http://")
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {
                # As the ServiceMonitor (jobLabel) and the operator (namespace) label the target.
                "job_name": "orchestrator-service",
                "static_configs": [{"targets": [host_port], "labels": {"namespace": NAMESPACE}}],
            }
        ],
    }
    if alertmanager is not None:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
        }
    return config


def _write_rules(
    manifests: list[Manifest], path: Path, edit: Callable[[str], str] = lambda text: text
) -> Path:
    text = yaml.safe_dump(one(manifests, "PrometheusRule")["spec"], sort_keys=False)
    path.write_text(edit(text), encoding="utf-8")
    return path


def _alerts(prometheus: str, **labels: str) -> list[dict[str, Any]]:
    matchers = ", ".join([f'alertname="{ALERT}"', *(f'{k}="{v}"' for k, v in labels.items())])
    response = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": f"ALERTS{{{matchers}}}"}, timeout=HTTP_TIMEOUT
    )
    response.raise_for_status()
    return [item["metric"] for item in response.json()["data"]["result"]]


def _poll(what: str, probe: Callable[[], Any]) -> Any:
    """Poll `probe` until it returns something truthy, bounded by DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {DEADLINE}s waiting for {what}")


def _cancel(orchestrator: Service, execution_id: str) -> None:
    response = httpx.post(
        f"{orchestrator.url}/api/v1/orchestrator/executions/{execution_id}/cancel",
        headers=orchestrator.headers,
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text


def test_shipped_alert_goes_pending_for_the_late_run_only_on_live_data(
    orchestrator: Service, default_manifests: list[Manifest], tmp_path: Path
) -> None:
    rules = _write_rules(default_manifests, tmp_path / "orchestrator.rules.yaml")
    with running_prometheus(_prometheus_config(orchestrator, rules), tmp_path) as prometheus:
        late = start_stuck_run(orchestrator, "e2e-late", timeout_seconds=1)
        fine = start_stuck_run(orchestrator, "e2e-fine", timeout_seconds=3600)
        (pending,) = _poll(
            "the late run's alert to go pending", lambda: _alerts(prometheus, execution_id=late)
        )
        assert pending["alertstate"] == "pending"
        assert pending["dag_id"] == "e2e-late"
        assert pending["status"] == "running"
        assert pending["severity"] == "warning"
        assert pending["job"] == "orchestrator-service" and pending["namespace"] == NAMESPACE
        assert _alerts(prometheus, execution_id=fine) == []
        assert _alerts(prometheus, alertstate="firing") == []
        _cancel(orchestrator, late)
        _poll("the cancelled run's alert to clear", lambda: _alerts(prometheus, execution_id=late) == [])
        _cancel(orchestrator, fine)


def test_alert_reaches_the_watchdog_through_the_documented_route(
    orchestrator: Service,
    watchdog: Service,
    default_manifests: list[Manifest],
    pod_root: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    root, _ = pod_root
    config = yaml.safe_load(alertmanager_snippet())
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "gl-watchdog"]
    route["group_wait"] = "0s"
    (receiver,) = [r for r in config["receivers"] if r["name"] == "gl-watchdog"]
    webhook = receiver["webhook_configs"][0]
    webhook["url"] = f"{watchdog.url}/api/v1/alerts"
    # The chart's own watchdog token file, as Alertmanager would mount it from the chart's Secret.
    webhook["http_config"]["authorization"]["credentials_file"] = str(
        root / "etc" / "secrets" / "watchdog-api-token"
    )
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "am").mkdir()
    (tmp_path / "prom").mkdir()
    rules = _write_rules(
        default_manifests,
        tmp_path / "orchestrator.rules.yaml",
        lambda text: text.replace("for: 10m", "for: 0s", 1),
    )
    with (
        running_alertmanager(am_config, tmp_path / "am") as alertmanager,
        running_prometheus(_prometheus_config(orchestrator, rules, alertmanager), tmp_path / "prom"),
    ):
        late = start_stuck_run(orchestrator, "e2e-routed", timeout_seconds=1)

        def incident() -> list[dict[str, Any]]:
            response = httpx.get(
                f"{watchdog.url}/api/v1/incidents", headers=watchdog.headers, timeout=HTTP_TIMEOUT
            )
            response.raise_for_status()
            return [i for i in response.json()["items"] if i["execution_id"] == late]

        (opened,) = _poll("the watchdog to open an incident from the routed alert", incident)
        _cancel(orchestrator, late)
    assert opened["source"] == "alert"
    assert opened["dag_id"] == "e2e-routed"
