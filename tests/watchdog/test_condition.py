"""The alert condition: Prometheus `for` semantics per execution, API source, Prometheus source, fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from tests.conftest import free_port
from tests.watchdog.conftest import FakeClock
from tests.watchdog.orchestrators import FakeOrchestrator
from watchdog.condition import AlertState, ConditionEvaluator, Source
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.constants import M_DAG_EXECUTION_DURATION, M_EXECUTION_TIMEOUT
from watchdog_sdk.errors import OrchestratorUnavailable

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FOR = timedelta(minutes=10)


@pytest.fixture
async def orch() -> AsyncIterator[tuple[FakeOrchestrator, OrchestratorClient]]:
    fake = FakeOrchestrator()
    client = OrchestratorClient(
        "http://orchestrator.test", "tok", transport=httpx.MockTransport(fake.handler)
    )
    yield fake, client
    await client.aclose()


@dataclass
class ApiOnly:
    """The condition over the faked orchestrator API alone (no Prometheus), `for` = 10 min, at T0."""

    fake: FakeOrchestrator
    clock: FakeClock
    cond: ConditionEvaluator


@pytest.fixture
def api_only(orch: tuple[FakeOrchestrator, OrchestratorClient]) -> ApiOnly:
    fake, client = orch
    clock = FakeClock(T0)
    return ApiOnly(fake, clock, ConditionEvaluator(client, None, for_duration=FOR, clock=clock))


async def test_over_timeout_is_pending_then_firing_after_for_duration(api_only: ApiOnly) -> None:
    fake, clock, cond = api_only.fake, api_only.clock, api_only.cond
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=130), timeout=120)  # 10 s over

    first = await cond.evaluate()
    assert first.source is Source.API and first.fallback_reason is None
    [e1] = first.executions
    assert e1.state is AlertState.PENDING and e1.active_since == T0
    assert e1.duration_seconds == pytest.approx(130) and e1.timeout_seconds == 120

    clock.advance(FOR.total_seconds() - 1)
    assert (await cond.evaluate()).executions[0].state is AlertState.PENDING
    clock.advance(1)
    fired = await cond.evaluate()
    assert [e.execution_id for e in fired.firing] == ["e1"]


async def test_run_under_its_timeout_is_inactive(orch: Any) -> None:
    fake, client = orch
    clock = FakeClock(T0)
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=60), timeout=120)
    cond = ConditionEvaluator(client, None, for_duration=timedelta(0), clock=clock)
    [e1] = (await cond.evaluate()).executions
    assert e1.state is AlertState.INACTIVE and not e1.over and e1.active_since is None


async def test_a_dip_resets_the_for_clock(api_only: ApiOnly) -> None:
    fake, clock, cond = api_only.fake, api_only.clock, api_only.cond
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=200), timeout=100)
    await cond.evaluate()
    clock.advance(300)
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=200), timeout=10_000)  # timeout raised: not over
    assert (await cond.evaluate()).executions[0].state is AlertState.INACTIVE
    clock.advance(60)
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=200), timeout=100)  # over again
    again = (await cond.evaluate()).executions[0]
    assert again.state is AlertState.PENDING and again.active_since == clock.now()
    clock.advance(FOR.total_seconds() - 1)  # 10 min after the *first* sighting, but not after the dip
    assert (await cond.evaluate()).executions[0].state is AlertState.PENDING


async def test_a_finished_run_is_forgotten(api_only: ApiOnly) -> None:
    fake, clock, cond = api_only.fake, api_only.clock, api_only.cond
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=200), timeout=100)
    await cond.evaluate()
    del fake.running["e1"]
    clock.advance(FOR.total_seconds())
    assert (await cond.evaluate()).executions == ()
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=200), timeout=100)
    assert (await cond.evaluate()).executions[0].state is AlertState.PENDING


async def test_two_runs_of_one_dag_are_tracked_separately(api_only: ApiOnly) -> None:
    fake, clock, cond = api_only.fake, api_only.clock, api_only.cond
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=500), timeout=100)
    await cond.evaluate()
    clock.advance(300)
    fake.add("e2", "d1", started_at=T0 - timedelta(seconds=500), timeout=100)
    clock.advance(FOR.total_seconds() - 300)
    states = {e.execution_id: e.state for e in (await cond.evaluate()).executions}
    assert states == {"e1": AlertState.FIRING, "e2": AlertState.PENDING}


async def test_prometheus_down_falls_back_to_the_api_and_says_why(orch: Any) -> None:
    fake, client = orch
    clock = FakeClock(T0)
    fake.add("e1", "d1", started_at=T0 - timedelta(seconds=200), timeout=100)
    dead = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        cond = ConditionEvaluator(client, dead, for_duration=timedelta(0), clock=clock)
        result = await cond.evaluate()
    finally:
        dead.close()
    assert result.source is Source.API
    assert result.fallback_reason is not None and "prometheus" in result.fallback_reason.lower()
    assert [e.execution_id for e in result.firing] == ["e1"]


async def test_unreachable_orchestrator_is_reported() -> None:
    client = OrchestratorClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        cond = ConditionEvaluator(client, None, for_duration=FOR, clock=FakeClock(T0))
        with pytest.raises(OrchestratorUnavailable):
            await cond.evaluate()
    finally:
        await client.aclose()


@pytest.mark.prometheus
async def test_prometheus_source_uses_the_shipped_expression(orch: Any) -> None:
    """A real Prometheus scrapes the two gauges; only the run over its timeout comes back."""
    from tests.promstack import start_prometheus

    registry = CollectorRegistry()
    duration = Gauge(M_DAG_EXECUTION_DURATION, "d", ["execution_id", "dag_id", "status"], registry=registry)
    timeout = Gauge(M_EXECUTION_TIMEOUT, "t", ["execution_id", "dag_id"], registry=registry)
    duration.labels("stuck", "d1", "running").set(500)
    timeout.labels("stuck", "d1").set(100)
    duration.labels("fine", "d1", "running").set(50)  # same DAG, second run, under its timeout
    timeout.labels("fine", "d1").set(100)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake, client = orch
    try:
        async with start_prometheus([f"127.0.0.1:{port}"]) as prom:
            prometheus = PrometheusClient(prom.url, timeout=5)
            try:
                cond = ConditionEvaluator(client, prometheus, for_duration=timedelta(0), clock=FakeClock(T0))
                result = await cond.evaluate()
            finally:
                prometheus.close()
    finally:
        await runner.cleanup()
    assert result.source is Source.PROMETHEUS, result.fallback_reason
    assert [(e.execution_id, e.dag_id, e.state) for e in result.executions] == [
        ("stuck", "d1", AlertState.FIRING)
    ]
    assert result.executions[0].duration_seconds == 500
    assert fake.calls == 0  # the API was not needed


# -- condition restart -----------------------------------------------------------------------------------
# After a restart or a leader change the evaluator has no `for`-state; from the API it knows when a
# run went over, so a run stuck for hours fires on the first sweep instead of ten minutes later.


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
