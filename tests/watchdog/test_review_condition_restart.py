"""After a restart or a leader change the evaluator has no `for`-state; from the API it knows when a
run went over, so a run stuck for hours fires on the first sweep instead of ten minutes later."""

from __future__ import annotations

from datetime import timedelta

import httpx

from tests.watchdog.conftest import FakeClock
from tests.watchdog.test_condition import FOR, T0, FakeOrchestrator
from watchdog.condition import AlertState, ConditionEvaluator
from watchdog_sdk.clients.orchestrator import OrchestratorClient


async def test_a_run_over_for_hours_fires_on_a_fresh_evaluators_first_look() -> None:
    fake = FakeOrchestrator()
    fake.add("old", "d1", started_at=T0 - timedelta(hours=3), timeout=600)  # over since T0 - 2h50m
    fake.add("new", "d1", started_at=T0 - timedelta(seconds=700), timeout=600)  # over for 100 s
    clock = FakeClock(T0)
    async with OrchestratorClient("http://orch.test", transport=httpx.MockTransport(fake.handler)) as client:
        cond = ConditionEvaluator(client, None, for_duration=FOR, clock=clock)
        states = {e.execution_id: (e.state, e.active_since) for e in (await cond.evaluate()).executions}
        assert states == {
            "old": (AlertState.FIRING, T0 - timedelta(hours=3) + timedelta(seconds=600)),
            "new": (AlertState.PENDING, T0),  # not over for `for_duration` yet: pending from now
        }

        # Only the first look uses it: a run first seen later starts from pending, as Prometheus does.
        clock.advance(60)
        fake.add("later", "d1", started_at=T0 - timedelta(hours=1), timeout=60)
        later = {e.execution_id: e for e in (await cond.evaluate()).executions}["later"]
        assert later.state is AlertState.PENDING and later.active_since == clock.now()
