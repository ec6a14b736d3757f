"""Silences against a real Alertmanager, and maintenance windows at the same gate: a silenced
incident neither prompts nor acts, the sweep looks again once the silence has ended, and an unreachable
Alertmanager falls back as `silence_check_failure` says. The orchestrator is faked at the HTTP level
(`FakeOrchestrator`), the playbook is the recording one, the store and Alertmanager are real. Time is
the injected clock's, set to the real time once at the start (Alertmanager stamps silences with the
real time)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import free_port
from tests.promstack import AlertmanagerProcess, start_alertmanager
from tests.watchdog.conftest import WATCHDOG_TOKEN, ScriptedDiagnose
from tests.watchdog.suppression_stack import Stack, SteppedClock
from watchdog.assembly import build_watchdog, create_app
from watchdog.maintenance import MaintenanceWindow
from watchdog.settings import Mode, WatchdogSettings
from watchdog.silences import AlertmanagerSilences
from watchdog.store import WatchdogStore


def add_silence(am: AlertmanagerProcess, matchers: list[dict[str, Any]], ends: datetime) -> str:
    body = {
        "matchers": [{"isRegex": False, "isEqual": True, **m} for m in matchers],
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": ends.isoformat(),
        "createdBy": "test",
        "comment": "planned maintenance",
    }
    request = urllib.request.Request(
        f"{am.url}/api/v2/silences",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["silenceID"])


def expire_silence(am: AlertmanagerProcess, silence_id: str) -> None:
    request = urllib.request.Request(f"{am.url}/api/v2/silence/{silence_id}", method="DELETE")
    with urllib.request.urlopen(request, timeout=5):
        pass


@pytest.fixture
async def alertmanager() -> AsyncIterator[AlertmanagerProcess]:
    async with start_alertmanager(f"http://127.0.0.1:{free_port()}/unused", "unused") as am:
        yield am  # type: ignore[misc]


@pytest.fixture
def real_time_clock() -> SteppedClock:
    return SteppedClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5))


@pytest.fixture
async def store(database_url: str, real_time_clock: SteppedClock) -> AsyncIterator[WatchdogStore]:
    opened = await WatchdogStore.open(database_url, clock=real_time_clock)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_silence_on_the_execution_holds_its_incident_then_it_acts_once_the_silence_ends(
    store: WatchdogStore, real_time_clock: SteppedClock, alertmanager: AlertmanagerProcess
) -> None:
    stack = Stack(store, real_time_clock, alertmanager.url)
    silence_id = add_silence(
        alertmanager,
        [{"name": "execution_id", "value": "exec-1"}],
        real_time_clock.now() + timedelta(hours=2),
    )
    incident_id = await stack.open_stuck()

    assert await stack.diagnosed(incident_id) == "suppressed"
    [held] = await stack.audit(incident_id, "suppressed")
    assert [s["id"] for s in held["suppressed_by"]] == [silence_id]
    assert held["suppressed_by"][0]["matchers"] == ['execution_id="exec-1"']
    assert (await stack.incidents.get(incident_id)).status == "open"
    assert stack.playbook.side_effects == 0 and stack.notifier.prompts == []
    assert [s["id"] for s in await stack.answered_suppressed_by(incident_id) or []] == [silence_id]

    await stack.sweep()  # still silenced: still held, and not audited again
    assert stack.playbook.side_effects == 0 and len(await stack.audit(incident_id, "suppressed")) == 1
    assert stack.checks("silenced") == 2

    expire_silence(alertmanager, silence_id)
    await stack.sweep()
    assert stack.playbook.side_effects == 1
    assert (await stack.incidents.get(incident_id)).status == "resolved"
    assert stack.checks("clear") == 1
    assert await stack.answered_suppressed_by(incident_id) is None


async def test_in_recommend_mode_a_silenced_incident_does_not_prompt_until_the_silence_ends(
    store: WatchdogStore, real_time_clock: SteppedClock, alertmanager: AlertmanagerProcess
) -> None:
    stack = Stack(store, real_time_clock, alertmanager.url, mode=Mode.RECOMMEND)
    silence_id = add_silence(
        alertmanager,
        [
            {"name": "dag_id", "value": "emissions-.*", "isRegex": True},
            {"name": "alertname", "value": "OrchestratorExecutionTimeout"},
        ],
        real_time_clock.now() + timedelta(hours=2),
    )
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "suppressed"
    assert stack.notifier.prompts == []
    expire_silence(alertmanager, silence_id)
    await stack.sweep()
    assert len(stack.notifier.prompts) == 1
    assert (await stack.incidents.get(incident_id)).status == "awaiting_approval"


async def test_a_silence_on_other_labels_does_not_hold_the_incident(
    store: WatchdogStore, real_time_clock: SteppedClock, alertmanager: AlertmanagerProcess
) -> None:
    stack = Stack(store, real_time_clock, alertmanager.url)
    ends = real_time_clock.now() + timedelta(hours=2)
    add_silence(alertmanager, [{"name": "execution_id", "value": "exec-2"}], ends)
    add_silence(alertmanager, [{"name": "execution_id", "value": "exec-1", "isEqual": False}], ends)
    add_silence(
        alertmanager, [{"name": "agent", "value": "calc|other", "isRegex": True, "isEqual": False}], ends
    )
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "resolved"
    assert stack.playbook.side_effects == 1 and stack.checks("clear") == 1


async def test_an_agent_silence_holds_the_incident_of_a_run_stuck_on_that_agent(
    store: WatchdogStore, real_time_clock: SteppedClock, alertmanager: AlertmanagerProcess
) -> None:
    stack = Stack(store, real_time_clock, alertmanager.url)
    add_silence(
        alertmanager,
        [{"name": "agent", "value": "calc"}, {"name": "namespace", "value": "staging", "isEqual": False}],
        real_time_clock.now() + timedelta(hours=2),
    )
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "suppressed"
    assert stack.playbook.side_effects == 0


async def test_silences_are_cached_for_the_configured_time(
    store: WatchdogStore, real_time_clock: SteppedClock, alertmanager: AlertmanagerProcess
) -> None:
    silences = AlertmanagerSilences(alertmanager.url, clock=real_time_clock, cache_seconds=30)
    labels = {"execution_id": "exec-1"}
    assert await silences.covering(labels) == []
    add_silence(
        alertmanager,
        [{"name": "execution_id", "value": "exec-1"}],
        real_time_clock.now() + timedelta(hours=1),
    )
    real_time_clock.advance(29)
    assert await silences.covering(labels) == []  # from the cache
    real_time_clock.advance(1)
    assert [s.matchers[0].value for s in await silences.covering(labels)] == ["exec-1"]


async def test_unreachable_alertmanager_prompts_instead_of_acting_by_default(
    store: WatchdogStore, real_time_clock: SteppedClock
) -> None:
    stack = Stack(store, real_time_clock, f"http://127.0.0.1:{free_port()}")
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "awaiting_approval"
    assert stack.playbook.side_effects == 0 and len(stack.notifier.prompts) == 1
    [failed] = await stack.audit(incident_id, "silence_check_failed")
    assert failed["policy"] == "prompt" and "api/v2/silences" in failed["error"]
    assert stack.checks("error") == 1
    incident = await stack.incidents.get(incident_id)
    assert incident.plan is not None and "silences could not be read" in incident.plan.rationale


async def test_unreachable_alertmanager_with_hold_holds_and_with_act_acts(
    store: WatchdogStore, real_time_clock: SteppedClock
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    held = Stack(store, real_time_clock, down, on_failure="hold")
    first = await held.open_stuck("exec-1")
    assert await held.diagnosed(first) == "suppressed" and held.playbook.side_effects == 0
    [entry] = await held.audit(first, "suppressed")
    assert entry["suppressed_by"] == [] and "api/v2/silences" in entry["check_error"]
    assert await held.audit(first, "silence_check_failed") == []
    [answered] = await held.answered_suppressed_by(first) or []
    assert answered["kind"] == "silence_check_failed"

    acting = Stack(store, real_time_clock, down, on_failure="act")
    second = await acting.open_stuck("exec-2")
    assert await acting.diagnosed(second) == "resolved" and acting.playbook.side_effects == 1


async def test_an_open_maintenance_window_holds_the_incident_until_it_closes(
    store: WatchdogStore, real_time_clock: SteppedClock
) -> None:
    start = real_time_clock.now()
    nightly = MaintenanceWindow.model_validate(
        {
            "name": "emissions-upgrade",
            "match": {"dag_id": ["emissions-*"], "labels": {"namespace": "greenlang"}},
            "start": start.replace(tzinfo=None).isoformat(),
            "duration": 3600,
        }
    )
    stack = Stack(store, real_time_clock, None, windows=[nightly], mode=Mode.RECOMMEND)
    incident_id = await stack.open_stuck()  # ten minutes into the window
    assert await stack.diagnosed(incident_id) == "suppressed"
    [held] = await stack.audit(incident_id, "suppressed")
    assert held["suppressed_by"] == [
        {
            "kind": "maintenance",
            "name": "emissions-upgrade",
            "ends_at": (start + timedelta(hours=1)).isoformat(),
        }
    ]
    await stack.sweep()
    assert stack.notifier.prompts == []
    real_time_clock.advance(3600)
    await stack.sweep()
    assert len(stack.notifier.prompts) == 1


async def test_the_served_api_shows_the_silence_holding_an_incident_and_the_metric_counts_it(
    database_url: str, alertmanager: AlertmanagerProcess
) -> None:
    silence_id = add_silence(
        alertmanager, [{"name": "execution_id", "value": "exec-9"}], datetime.now(UTC) + timedelta(hours=1)
    )
    unreachable_orchestrator = f"http://127.0.0.1:{free_port()}"
    settings = WatchdogSettings(
        database_url=database_url,
        alertmanager_url=alertmanager.url,
        orchestrator_url=unreachable_orchestrator,
        api_tokens=[WATCHDOG_TOKEN],
    )
    auth = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}
    watchdog = await build_watchdog(settings, diagnose=ScriptedDiagnose())
    client = TestClient(TestServer(create_app(watchdog), host="127.0.0.1"))
    try:
        await client.start_server()
        opened = await client.post("/api/v1/incidents", json={"execution_id": "exec-9"}, headers=auth)
        incident_id = (await opened.json())["incident"]["id"]
        await asyncio.wait_for(watchdog.jobs.wait_idle(), 10)
        body = await (await client.get(f"/api/v1/incidents/{incident_id}", headers=auth)).json()
        assert body["status"] == "open" and body["plan"] is None and body["approvals"] == []
        assert [s["id"] for s in body["suppressed_by"]] == [silence_id]
        assert "suppressed" in [entry["kind"] for entry in body["audit"]]
        metrics = await (await client.get("/metrics")).text()
        assert 'gl_watchdog_silence_checks_total{result="silenced"} 1.0' in metrics
    finally:
        await client.close()
        await watchdog.aclose()
