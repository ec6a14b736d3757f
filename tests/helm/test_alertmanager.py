"""The plain alertmanager.yml route in docs/alerting.md: amtool accepts it, it routes as documented,
it agrees with the chart's AlertmanagerConfig, and a real Alertmanager running it delivers a firing
alert to a webhook receiver with the bearer token read from its credentials file.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from tests.conftest import free_port
from tests.helm.chart import Manifest, one, require_binary
from tests.helm.services import alertmanager_snippet, running_alertmanager

pytestmark = pytest.mark.prometheus

TOOL_TIMEOUT = 30
DELIVERY_DEADLINE = 30.0


@pytest.fixture
def snippet_file(tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_snippet(), encoding="utf-8")
    return path


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("amtool"), *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def _watchdog_route(config: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in config["route"]["routes"] if r["receiver"] == "gl-watchdog"]
    (route,) = found
    return route


def test_amtool_check_config_accepts_the_documented_route(snippet_file: Path) -> None:
    result = _amtool("check-config", str(snippet_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (
            ["alertname=OrchestratorExecutionTimeout", "severity=warning", "execution_id=run-a"],
            "gl-watchdog,on-call",
        ),
        (["alertname=OrchestratorServiceDown", "severity=critical"], "on-call"),
        (["alertname=SomethingElse"], "on-call"),
    ],
)
def test_only_the_timeout_alert_goes_to_the_watchdog_and_on_call_keeps_it(
    snippet_file: Path, labels: list[str], receivers: str
) -> None:
    result = _amtool("config", "routes", "test", f"--config.file={snippet_file}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_documented_route_matches_the_charts_alertmanager_config(default_manifests: list[Manifest]) -> None:
    config = yaml.safe_load(alertmanager_snippet())
    route = _watchdog_route(config)
    spec = one(default_manifests, "AlertmanagerConfig")["spec"]
    assert route["matchers"] == ['alertname="OrchestratorExecutionTimeout"']
    assert spec["route"]["matchers"] == [
        {"name": "alertname", "value": "OrchestratorExecutionTimeout", "matchType": "="}
    ]
    assert route["group_by"] == spec["route"]["groupBy"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        spec["route"]["groupWait"],
        spec["route"]["groupInterval"],
        spec["route"]["repeatInterval"],
    )
    assert route["continue"] is True
    (receiver,) = [r for r in config["receivers"] if r["name"] == "gl-watchdog"]
    (webhook,) = receiver["webhook_configs"]
    (chart_webhook,) = spec["receivers"][0]["webhookConfigs"]
    assert webhook["url"] == chart_webhook["url"]
    assert webhook["send_resolved"] is chart_webhook["sendResolved"] is True
    assert webhook["http_config"]["authorization"]["type"] == "Bearer"
    assert webhook["http_config"]["authorization"]["credentials_file"].endswith("/watchdog-api-token")


# -- a real Alertmanager delivers to the webhook ---------------------------------------------------


@contextlib.asynccontextmanager
async def webhook_receiver(received: asyncio.Queue[tuple[str, dict[str, Any]]]) -> AsyncIterator[str]:
    """An aiohttp server on loopback standing in for the watchdog's POST /api/v1/alerts."""

    async def alerts(request: web.Request) -> web.Response:
        await received.put((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/api/v1/alerts", alerts)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/api/v1/alerts"
    finally:
        await runner.cleanup()


async def test_alertmanager_delivers_the_timeout_alert_with_the_bearer_token(tmp_path: Path) -> None:
    config = yaml.safe_load(alertmanager_snippet())
    token_file = tmp_path / "watchdog-api-token"
    token_file.write_text("wd-token-123\n", encoding="utf-8")
    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    async with webhook_receiver(received) as url:
        # Only the address, the token's path and the waits change; the route is the documented one.
        route = _watchdog_route(config)
        route["group_wait"] = "0s"
        (receiver,) = [r for r in config["receivers"] if r["name"] == "gl-watchdog"]
        webhook = receiver["webhook_configs"][0]
        webhook["url"] = url
        webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        config_file = tmp_path / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        with running_alertmanager(config_file, tmp_path) as am_url:
            alert = {
                "labels": {
                    "alertname": "OrchestratorExecutionTimeout",
                    "severity": "warning",
                    "namespace": "greenlang",
                    "dag_id": "emissions-report",
                    "execution_id": "run-a",
                    "status": "running",
                },
                "annotations": {
                    "summary": "DAG execution run-a of DAG emissions-report is running past its timeout"
                },
            }
            other = {"labels": {"alertname": "OrchestratorServiceDown", "severity": "critical"}}
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.post(f"{am_url}/api/v2/alerts", json=[alert, other])
                assert response.status_code == 200, response.text
            authorization, payload = await asyncio.wait_for(received.get(), timeout=DELIVERY_DEADLINE)
    assert authorization == "Bearer wd-token-123"
    assert payload["version"] == "4"
    assert payload["receiver"] == "gl-watchdog"
    assert payload["status"] == "firing"
    assert [a["labels"]["execution_id"] for a in payload["alerts"]] == ["run-a"]
    assert payload["groupLabels"] == {
        "alertname": "OrchestratorExecutionTimeout",
        "namespace": "greenlang",
        "execution_id": "run-a",
    }
    assert received.empty(), "the OrchestratorServiceDown alert must not reach the watchdog"
