"""End to end: a hung run → real Prometheus rule → real Alertmanager → the watchdog → one diagnosed incident.

Everything is real and on loopback: the orchestrator service (`gl-orchestrator serve` subprocess), a
Prometheus scraping it with the shipped `OrchestratorExecutionTimeout` rule rendered with `for: 2s`,
an Alertmanager delivering to the watchdog's webhook with a bearer token, and the watchdog app with
its real diagnostic runner. The test then checks deduplication of repeated and concurrent deliveries,
the resolved delivery closing the incident, bad webhook input changing nothing, and — with Prometheus
stopped — a sweep still finding a stuck run through the orchestrator API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from aiohttp import web

from tests.conftest import free_port
from tests.promstack import start_alertmanager, start_prometheus
from tests.watchdog.orchestrators import OrchestratorProcess
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.migrations import alert_deliveries, audit_log, incidents
from watchdog.records import Incident
from watchdog.settings import WatchdogSettings
from watchdog_sdk.constants import ALERT_NAME

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

SHIPPED_RULES = (
    Path(__file__).resolve().parents[2] / "helm" / "gl-watchdog" / "rules" / "orchestrator.rules.yaml"
)
TOKEN = "e2e-webhook-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def render_rule(tmp_path: Path, for_duration: str = "2s") -> Path:
    """The shipped OrchestratorExecutionTimeout rule, unchanged except for a short `for`."""
    shipped = yaml.safe_load(SHIPPED_RULES.read_text())
    rules = [r for g in shipped["groups"] for r in g["rules"] if r.get("alert") == ALERT_NAME]
    assert len(rules) == 1, "the shipped rules must define OrchestratorExecutionTimeout once"
    rule = dict(rules[0], **{"for": for_duration})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "e2e", "rules": [rule]}]}))
    return path


async def eventually(what: str, check: Callable[[], Awaitable[Any]], within: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy (bounded); fail with `what` otherwise."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.2)


async def counts(wd: Watchdog) -> dict[str, int]:
    async with wd.store.transaction() as tx:
        return {
            t.name: (await tx.conn.execute(sa.select(sa.func.count()).select_from(t))).scalar_one()
            for t in (incidents, alert_deliveries, audit_log)
        }


@pytest.fixture
async def watchdog_server(
    _no_pending_tasks: None, tmp_path: Path, orchestrator_service: OrchestratorProcess
) -> AsyncIterator[tuple[WatchdogSettings, Callable[[str | None], Awaitable[Watchdog]]]]:
    """Builds (on demand, once Prometheus' URL is known) the watchdog app served on a loopback port."""
    port = free_port()
    built: list[tuple[Watchdog, web.AppRunner]] = []
    base = WatchdogSettings(
        port=port,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}",
        api_tokens=[TOKEN],
        orchestrator_url=orchestrator_service.url,
        orchestrator_token=orchestrator_service.token,
        prometheus_timeout_seconds=2,
        step_timeout_seconds=5,
        for_duration_seconds=0,
        max_body_bytes=64 * 1024,
    )

    async def build(prometheus_url: str | None) -> Watchdog:
        settings = base.model_copy(update={"prometheus_url": prometheus_url})
        wd = await build_watchdog(settings, respond=False)
        runner = web.AppRunner(create_app(wd))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await wd.start(sweeps=False)  # the alert path opens the first incident; sweeps are driven by hand
        built.append((wd, runner))
        return wd

    yield base, build
    for wd, runner in built:
        await runner.cleanup()
        await wd.aclose()


async def test_stuck_run_alert_to_diagnosed_incident_end_to_end(
    tmp_path: Path,
    orchestrator_service: OrchestratorProcess,
    watchdog_server: tuple[WatchdogSettings, Callable[[str | None], Awaitable[Watchdog]]],
) -> None:
    orch = orchestrator_service
    settings, build = watchdog_server
    webhook = f"http://127.0.0.1:{settings.port}/api/v1/alerts"
    first_run = await asyncio.to_thread(orch.start_hung_run, 1.0)

    async with start_alertmanager(
        webhook, TOKEN, group_wait="1s", group_interval="1s", repeat_interval="1h"
    ) as am:
        prom = start_prometheus(
            [orch.url.removeprefix("http://")], rule_files=[render_rule(tmp_path)], alertmanager_url=am.url
        )
        wd = await build(prom.url)
        async with prom:
            # -- the alert fires, Alertmanager delivers, exactly one incident opens and is diagnosed
            async def opened() -> list[Incident]:
                return await wd.store.list_incidents()

            [incident] = await eventually("the alert to open an incident", opened)
            assert incident.execution_id == first_run
            assert incident.source == "alert" and incident.detection_source == "prometheus"

            async def diagnosed() -> Incident | None:
                current = await wd.store.get_incident(incident.id)
                return current if current is not None and current.diagnosis is not None else None

            done = await eventually("the diagnosis to be stored", diagnosed)
            diagnosis = done.diagnosis or {}
            assert diagnosis["stuck_node_id"] == "wedged" and diagnosis["agent_id"] == "builtin.hang"
            # steps 1-8 and the installed plugins' (the example plugin's under `make install`)
            assert diagnosis["dag_id"] == "stuck-dag"
            assert len(diagnosis["findings"]) == len(wd.plugins.steps)
            assert done.status == "open" and "wedged" in (done.summary or "")

            # -- repeated and concurrent deliveries of the same alert leave one incident, one diagnosis
            [held] = [a for a in await am.aalerts() if a["labels"].get("execution_id") == first_run]
            repeat = {
                "version": "4",
                "groupKey": '{}:{alertname="OrchestratorExecutionTimeout"}',
                "status": "firing",
                "receiver": "webhook",
                "groupLabels": {"alertname": ALERT_NAME},
                "commonLabels": held["labels"],
                "commonAnnotations": held["annotations"],
                "externalURL": am.url,
                "truncatedAlerts": 0,
                "alerts": [
                    {
                        "status": "firing",
                        "labels": held["labels"],
                        "annotations": held["annotations"],
                        "startsAt": held["startsAt"],
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": held.get("generatorURL", ""),
                        "fingerprint": held["fingerprint"],
                    }
                ],
            }
            async with httpx.AsyncClient(timeout=10) as http:
                sequential = [await http.post(webhook, json=repeat, headers=AUTH) for _ in range(3)]
                concurrent = await asyncio.gather(
                    *(http.post(webhook, json=repeat, headers=AUTH) for _ in range(6))
                )
            for response in [*sequential, *concurrent]:
                assert response.status_code == 200, response.text
                assert response.json()["alerts"][0]["outcome"] == "duplicate"
            await wd.jobs.wait_idle()
            assert [i.id for i in await wd.store.list_incidents()] == [incident.id]
            audit = (await wd.incidents.detail(incident.id)).audit
            assert sum(1 for a in audit if a.kind == "diagnosis" and a.phase == "before") == 1

            # -- bad webhook input: a clear 4xx, and nothing changes
            before = await counts(wd)
            oversized = json.dumps(repeat | {"commonAnnotations": {"x": "y" * (64 * 1024)}})
            no_labels = json.loads(json.dumps(repeat))
            del no_labels["alerts"][0]["labels"]
            bad_requests = [
                (b'{"version": "4", "alerts": [', AUTH, 400),
                (json.dumps(repeat | {"version": "3"}).encode(), AUTH, 422),
                (json.dumps(no_labels).encode(), AUTH, 422),
                (oversized.encode(), AUTH, 413),
                (json.dumps(repeat).encode(), {"Authorization": "Bearer wrong"}, 401),
            ]
            async with httpx.AsyncClient(timeout=10) as http:
                for body, headers, status in bad_requests:
                    response = await http.post(
                        webhook, content=body, headers={**headers, "Content-Type": "application/json"}
                    )
                    assert response.status_code == status, response.text
                    problem = response.json()
                    assert problem["error"] and problem["detail"]
            assert await counts(wd) == before

            # -- the run ends, the alert resolves, the resolved delivery closes the incident
            response = await asyncio.to_thread(orch.http.post, f"/executions/{first_run}/cancel")
            assert response.status_code == 200, response.text

            async def closed() -> Incident | None:
                current = await wd.store.get_incident(incident.id)
                return current if current is not None and current.status == "closed" else None

            await eventually("the resolved alert to close the incident", closed)
            audit = (await wd.incidents.detail(incident.id)).audit
            closing = [a for a in audit if a.kind == "state" and a.data.get("to") == "closed"]
            assert [(a.actor, a.data["reason"]) for a in closing] == [("alertmanager", "alert resolved")]

        # -- Prometheus is stopped now: a sweep still finds a stuck run, through the orchestrator API
        second_run = await asyncio.to_thread(orch.start_hung_run, 1.0)
        await asyncio.to_thread(orch.wait_over_timeout, second_run)
        report = await wd.sweeper.sweep_once()
        assert report.result == "ok", report.as_json()
        assert report.condition is not None and report.condition.source.value == "api"
        assert "prometheus" in (report.condition.fallback_reason or "").lower()
        [swept] = report.opened
        assert (
            swept.execution_id == second_run and swept.source == "sweep" and swept.detection_source == "api"
        )
        await wd.jobs.wait_idle()
        swept_now = await wd.store.get_incident(swept.id)
        assert swept_now is not None and swept_now.diagnosis is not None
        assert swept_now.diagnosis["stuck_node_id"] == "wedged"
        assert len(await wd.store.list_incidents()) == 2
