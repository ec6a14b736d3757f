"""Held incidents on SQLite and PostgreSQL: an incident a maintenance window, a silence or a failed
silence check holds is marked on its row with its `suppressed` audit entry, so the listing filters
(`held=true|false`) and marks it, and `gl_watchdog_incidents_held{kind}` counts it, without reading
the audit; its next `plan` decision clears the mark. Silences come from a faked Alertmanager API
(`httpx.MockTransport`); the real one is `test_silences_alertmanager`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.watchdog.conftest import make_plan
from tests.watchdog.suppression_stack import Stack, SteppedClock
from watchdog.api_models import IncidentOut
from watchdog.listing import IncidentFilter, page_incidents
from watchdog.maintenance import MaintenanceWindow
from watchdog.settings import Mode
from watchdog.silences import AlertmanagerSilences
from watchdog.store import WatchdogStore

START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock(START)


@pytest.fixture
async def store(database_url: str, clock: SteppedClock) -> AsyncIterator[WatchdogStore]:
    opened = await WatchdogStore.open(database_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


def window(name: str, match: dict[str, Any], start: datetime, seconds: int = 3600) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate(
        {"name": name, "match": match, "start": start.replace(tzinfo=None).isoformat(), "duration": seconds}
    )


def silenced(clock: SteppedClock, matchers: list[dict[str, str]]) -> AlertmanagerSilences:
    """Alertmanager's silences API, faked: one silence with `matchers`, active for an hour."""

    def answer(request: httpx.Request) -> httpx.Response:
        silence = {
            "id": "sil-1",
            "matchers": [{"isRegex": False, "isEqual": True, **m} for m in matchers],
            "startsAt": (clock.now() - timedelta(minutes=5)).isoformat(),
            "endsAt": (clock.now() + timedelta(hours=1)).isoformat(),
            "createdBy": "ops",
            "comment": "upgrade",
        }
        return httpx.Response(200, json=[silence])

    return AlertmanagerSilences(
        "http://am.test", clock=clock, cache_seconds=0, transport=httpx.MockTransport(answer)
    )


async def listed(store: WatchdogStore, held: bool | None) -> list[int]:
    page = await page_incidents(store, IncidentFilter(held=held), before=None, limit=50)
    assert page.total == len(page.incidents)
    return [incident.id for incident in page.incidents]


async def held_gauges(stack: Stack) -> dict[str, float]:
    await stack.incidents.refresh_gauges()
    gauge = stack.metrics.incidents_held
    return {
        kind: gauge.labels(kind=kind)._value.get() for kind in ("silence", "maintenance", "check_failure")
    }


async def test_a_window_holds_an_incident_listed_marked_and_counted_until_its_plan_clears_it(
    store: WatchdogStore, clock: SteppedClock
) -> None:
    nightly = window("nightly", {"dag_id": ["emissions-*"]}, START)
    stack = Stack(store, clock, None, windows=[nightly], mode=Mode.RECOMMEND)
    held_id = await stack.open_stuck("exec-1")
    other_id = await stack.open_stuck("exec-2")  # diagnosed later: not held yet
    assert await stack.diagnosed(held_id) == "suppressed"

    incident = await stack.incidents.get(held_id)
    assert incident.is_held and incident.held_kind == "maintenance"
    assert incident.held_by == [
        {"kind": "maintenance", "name": "nightly", "ends_at": (START + timedelta(hours=1)).isoformat()}
    ]
    item = IncidentOut.of(incident).model_dump(mode="json")
    assert item["held"] is True and item["suppressed_by"] == incident.held_by
    assert item["suppressed_by"] == await stack.answered_suppressed_by(held_id)  # detail agrees
    assert await listed(store, held=True) == [held_id]
    assert await listed(store, held=False) == [other_id]
    assert await held_gauges(stack) == {"silence": 0, "maintenance": 1, "check_failure": 0}
    assert stack.metrics.open_incidents._value.get() == 2

    clock.advance(3600)  # the window closes: the sweep hands it back, the responder plans and prompts
    await stack.sweep()
    incident = await stack.incidents.get(held_id)
    assert incident.status == "awaiting_approval" and incident.held_kind is None and incident.held_by is None
    assert IncidentOut.of(incident).held is False
    assert await listed(store, held=True) == []
    assert await listed(store, held=False) == [other_id, held_id]
    assert await held_gauges(stack) == {"silence": 0, "maintenance": 0, "check_failure": 0}


async def test_a_held_incident_is_audited_and_marked_once_while_the_same_window_holds_it(
    store: WatchdogStore, clock: SteppedClock
) -> None:
    stack = Stack(store, clock, None, windows=[window("nightly", {"dag_id": ["emissions-*"]}, START)])
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "suppressed"
    marked = await stack.incidents.get(incident_id)
    await stack.sweep()
    await stack.sweep()
    assert len(await stack.audit(incident_id, "suppressed")) == 1
    again = await stack.incidents.get(incident_id)
    assert (again.held_kind, again.held_by, again.updated_at) == (
        marked.held_kind,
        marked.held_by,
        marked.updated_at,
    )


async def test_a_silence_holds_as_kind_silence_and_a_window_with_a_silence_as_maintenance(
    store: WatchdogStore, clock: SteppedClock
) -> None:
    upgrade = window("calc-upgrade", {"dag_id": ["emissions-*"], "labels": {"execution_id": "exec-2"}}, START)
    stack = Stack(store, clock, None, windows=[upgrade])
    stack.gate.silences = silenced(clock, [{"name": "agent", "value": "calc"}])
    by_silence = await stack.open_stuck("exec-1")
    by_both = await stack.open_stuck("exec-2")
    assert await stack.diagnosed(by_silence) == "suppressed"
    assert await stack.diagnosed(by_both) == "suppressed"

    silence_held = await stack.incidents.get(by_silence)
    assert silence_held.held_kind == "silence"
    assert [(h["kind"], h["id"]) for h in silence_held.held_by or []] == [("silence", "sil-1")]
    both_held = await stack.incidents.get(by_both)
    assert both_held.held_kind == "maintenance"
    assert [h["kind"] for h in both_held.held_by or []] == ["maintenance", "silence"]
    assert await held_gauges(stack) == {"silence": 1, "maintenance": 1, "check_failure": 0}


async def test_an_unreadable_alertmanager_under_hold_is_counted_as_a_check_failure(
    store: WatchdogStore, clock: SteppedClock
) -> None:
    stack = Stack(store, clock, f"http://127.0.0.1:{free_port()}", on_failure="hold")
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "suppressed"
    incident = await stack.incidents.get(incident_id)
    assert incident.held_kind == "check_failure"
    [holder] = incident.held_by or []
    assert holder["kind"] == "silence_check_failed" and "api/v2/silences" in holder["error"]
    assert await listed(store, held=True) == [incident_id]
    assert await held_gauges(stack) == {"silence": 0, "maintenance": 0, "check_failure": 1}


async def test_a_plan_a_person_proposes_for_a_held_incident_clears_what_held_it(
    store: WatchdogStore, clock: SteppedClock
) -> None:
    stack = Stack(store, clock, None, windows=[window("nightly", {"dag_id": ["emissions-*"]}, START)])
    incident_id = await stack.open_stuck()
    assert await stack.diagnosed(incident_id) == "suppressed"
    held = await stack.incidents.get(incident_id)
    plan = make_plan(held.execution_id, playbook="restart_agent")
    await stack.responder.propose(held, plan, "asked by hand", actor="alice")
    proposed = await stack.incidents.get(incident_id)
    assert proposed.status == "awaiting_approval" and (proposed.held_kind, proposed.held_by) == (None, None)
    assert await listed(store, held=True) == []
