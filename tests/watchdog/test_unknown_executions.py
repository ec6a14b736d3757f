"""Alerts for executions the orchestrator does not know: recorded, answered cheaply, no diagnosis storm."""

from __future__ import annotations

import asyncio
import json

import respx

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN
from tests.watchdog.orchestrators import ORCH_BASE
from tests.watchdog.webhook import alert, payload
from watchdog.assembly import build_watchdog
from watchdog.settings import WatchdogSettings
from watchdog.webhook import parse_payload

ALERTS = 40


async def test_a_burst_for_unknown_executions_costs_one_lookup_each_and_few_at_once(
    _no_pending_tasks: None, sqlite_url: str, orch: respx.MockRouter
) -> None:
    in_flight, most = 0, 0

    async def not_found(request: object) -> respx.MockResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)  # let the other diagnoses run meanwhile, if any may
        in_flight -= 1
        return respx.MockResponse(404, json={"error": "not_found", "detail": "no such execution"})

    lookups = orch.get(path__regex=r"/executions/ghost-\d+$").mock(side_effect=not_found)
    settings = WatchdogSettings(
        database_url=sqlite_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=ORCH_BASE,
        port=free_port(),
        mode="observe",
    )
    wd = await build_watchdog(settings)
    try:
        body = payload(*(alert(f"ghost-{i}", fingerprint=f"fp-ghost-{i}") for i in range(ALERTS)))
        outcomes = await wd.intake.handle(parse_payload(json.dumps(body).encode()).payload)
        assert [o.outcome for o in outcomes] == ["opened"] * ALERTS  # recorded, answered at once
        async with asyncio.timeout(30):
            await wd.jobs.wait_idle()
        assert lookups.call_count == ALERTS  # one lookup per unknown execution
        assert len(orch.calls) == ALERTS  # and nothing else: steps 2-8 did not run
        assert most <= settings.max_concurrent_diagnoses
        incidents = await wd.store.list_incidents(limit=ALERTS + 1)
        assert len(incidents) == ALERTS
        assert {i.diagnosis["likely_cause"] for i in incidents if i.diagnosis} == {"execution_not_found"}
        assert all(i.diagnosis is not None for i in incidents)
    finally:
        await wd.aclose()
