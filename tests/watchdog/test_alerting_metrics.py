"""The metrics the alerts on the watchdog read: the circuit breaker, pending approvals' age and expiry,
and the time from a run crossing its timeout to its incident's detection, diagnosis and remediation.

On the real store (SQLite and PostgreSQL) with an injected clock: the gauges are read at scrape time
(`IncidentService.refresh_gauges`), the histograms are fed by the diagnosis jobs and the remediation
state machine themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, RecordingRemediate
from tests.watchdog.responder_stack import responder_over
from tests.watchdog.webhook import alert, payload
from watchdog.approvals import Decision
from watchdog.assembly import Watchdog, build_watchdog
from watchdog.incidents import IncidentService
from watchdog.limits import RemediationLimits
from watchdog.metrics import WatchdogMetrics
from watchdog.policy import CircuitBreaker, Limits
from watchdog.responder import Responder
from watchdog.settings import Mode, WatchdogSettings
from watchdog.store import WatchdogStore
from watchdog.webhook import parse_payload
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

TIMEOUT_SECONDS = 600.0


def _value(metrics: WatchdogMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


async def _incident(responder: Responder, execution_id: str) -> int:
    opened = await responder.incidents.open_or_join(
        execution_id, dag_id="d", source="sweep", detection_source="api"
    )
    return opened.incident.id


def _diagnosis(clock: FakeClock, *, over_by: float | None) -> Diagnosis:
    """A diagnosis made now of a run that crossed its timeout `over_by` seconds ago (None: no timeout)."""
    now = clock.now()
    started = now - timedelta(seconds=TIMEOUT_SECONDS + (over_by or 0.0))
    evidence = {"started_at": started.isoformat(), "timeout_seconds": TIMEOUT_SECONDS if over_by else None}
    return Diagnosis(
        execution_id="exec-1",
        started_at=now,
        completed_at=now,
        findings=[
            Finding(step=1, name="execution", status=StepStatus.PROBLEM, summary="over", evidence=evidence),
            Finding(step=4, name="agent", status=StepStatus.PROBLEM, summary="agent hung"),
        ],
        likely_cause="agent_unresponsive",
        cause_evidence=["agent calc answers nothing for 12 min"],
        agent_id="calc",
    )


@contextlib.asynccontextmanager
async def _responder(
    store: WatchdogStore, clock: FakeClock, mode: Mode, metrics: WatchdogMetrics
) -> AsyncIterator[Responder]:
    """A responder over `store` in `mode` (its orchestrator is unreachable: nothing here asks it)."""
    async with OrchestratorClient("http://127.0.0.1:9", timeout=0.5) as orchestrator:
        yield responder_over(store, clock, orchestrator, mode=mode, metrics=metrics)


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    s = await WatchdogStore.open(database_url, clock=clock)
    yield s
    await s.close()


# -- the circuit breaker ---------------------------------------------------------------------------------


async def test_breaker_gauge_opens_with_the_failures_and_closes_when_they_leave_the_window(
    store: WatchdogStore, clock: FakeClock
) -> None:
    breaker = CircuitBreaker(failures=2, window_seconds=600)
    limits = RemediationLimits(store, Limits(circuit_breaker=breaker), clock)
    metrics = WatchdogMetrics()
    incidents = IncidentService(store, metrics, breaker=breaker)

    async def failure() -> None:
        async with store.transaction() as tx:
            await limits.count_failure_in(tx)

    await failure()
    await incidents.refresh_gauges()
    assert _value(metrics, "gl_watchdog_circuit_breaker_open") == 0
    clock.advance(300)
    await failure()
    await incidents.refresh_gauges()
    assert _value(metrics, "gl_watchdog_circuit_breaker_open") == 1
    clock.advance(301)  # the first failure left the window: one is not enough
    await incidents.refresh_gauges()
    assert _value(metrics, "gl_watchdog_circuit_breaker_open") == 0


# -- pending approvals -------------------------------------------------------------------------------------


async def test_pending_approvals_report_the_oldest_age_and_those_past_their_expiry(
    store: WatchdogStore, clock: FakeClock
) -> None:
    metrics = WatchdogMetrics()
    async with _responder(store, clock, Mode.RECOMMEND, metrics) as responder:
        for execution_id in ("e1", "e2"):  # prompts expire after 600 s
            incident = await _incident(responder, execution_id)
            outcome = await responder.handle_diagnosed(incident, _diagnosis(clock, over_by=60))
            assert outcome.status == "awaiting_approval"
            clock.advance(400)
    await responder.incidents.refresh_gauges()
    assert _value(metrics, "gl_watchdog_pending_approvals") == 2
    assert _value(metrics, "gl_watchdog_oldest_pending_approval_age_seconds") == 800
    assert _value(metrics, "gl_watchdog_approvals_past_expiry") == 1  # the first expired at 600 s


async def test_no_pending_approval_is_an_age_of_zero(store: WatchdogStore) -> None:
    metrics = WatchdogMetrics()
    await IncidentService(store, metrics).refresh_gauges()
    assert _value(metrics, "gl_watchdog_oldest_pending_approval_age_seconds") == 0
    assert _value(metrics, "gl_watchdog_approvals_past_expiry") == 0


# -- time to detect, diagnose, remediate ---------------------------------------------------------------------


class CrossedDiagnose:
    """Diagnoses a run that crossed its timeout `over_by` seconds before the diagnosis ends."""

    def __init__(self, clock: FakeClock, over_by: float | None) -> None:
        self.clock = clock
        self.over_by = over_by

    async def __call__(self, execution_id: str) -> Diagnosis:
        self.clock.advance(30)  # the diagnosis takes 30 s
        return _diagnosis(self.clock, over_by=self.over_by)


async def _watchdog(database_url: str, clock: FakeClock, over_by: float | None) -> Watchdog:
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=1.0,
    )
    diagnose = CrossedDiagnose(clock, over_by)
    return await build_watchdog(settings, clock=clock, diagnose=diagnose, on_diagnosed=RecordingRemediate())


async def test_first_diagnosis_measures_detection_and_diagnosis_from_the_timeout_crossing(
    _no_pending_tasks: None, database_url: str, clock: FakeClock
) -> None:
    wd = await _watchdog(database_url, clock, over_by=730)  # opened 700 s after the crossing
    try:
        opened = await wd.incidents.open_or_join("exec-1", dag_id="d", source="sweep", detection_source="api")
        await wd.diagnosis.diagnose_incident(opened.incident.id, actor="sweep")
        await wd.diagnosis.diagnose_incident(opened.incident.id, actor="cli")  # again: not counted
        await asyncio.wait_for(wd.jobs.wait_idle(), 10)
    finally:
        await wd.aclose()
    metrics = wd.metrics
    assert _value(metrics, "gl_watchdog_time_to_detect_seconds_count") == 1
    assert _value(metrics, "gl_watchdog_time_to_detect_seconds_sum") == 700
    assert _value(metrics, "gl_watchdog_time_to_diagnose_seconds_sum") == 730
    assert _value(metrics, "gl_watchdog_time_to_detect_seconds_bucket", {"le": "600.0"}) == 0
    assert _value(metrics, "gl_watchdog_time_to_detect_seconds_bucket", {"le": "900.0"}) == 1


async def test_a_run_without_a_timeout_has_no_time_to_detect(
    _no_pending_tasks: None, database_url: str, clock: FakeClock
) -> None:
    wd = await _watchdog(database_url, clock, over_by=None)
    try:
        opened = await wd.incidents.open_or_join("exec-1", dag_id="d", source="sweep", detection_source="api")
        await wd.diagnosis.diagnose_incident(opened.incident.id, actor="sweep")
    finally:
        await wd.aclose()
    assert _value(wd.metrics, "gl_watchdog_time_to_detect_seconds_count") == 0
    assert _value(wd.metrics, "gl_watchdog_time_to_diagnose_seconds_count") == 0


async def test_a_verified_remediation_measures_the_time_to_remediate(
    store: WatchdogStore, clock: FakeClock
) -> None:
    metrics = WatchdogMetrics()
    async with _responder(store, clock, Mode.AUTO, metrics) as responder:
        incident_id = await _incident(responder, "e1")
        diagnosis = _diagnosis(clock, over_by=900)
        await responder.incidents.update(
            incident_id, kind="diagnosis", actor="test", diagnosis=diagnosis.model_dump(mode="json")
        )
        clock.advance(100)
        outcome = await responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "resolved"
    assert _value(metrics, "gl_watchdog_time_to_remediate_seconds_count") == 1
    assert _value(metrics, "gl_watchdog_time_to_remediate_seconds_sum") == 1000


async def test_a_human_decision_measures_the_time_its_prompt_waited(
    store: WatchdogStore, clock: FakeClock
) -> None:
    metrics = WatchdogMetrics()
    async with _responder(store, clock, Mode.RECOMMEND, metrics) as responder:
        incident_id = await _incident(responder, "e1")
        outcome = await responder.handle_diagnosed(incident_id, _diagnosis(clock, over_by=900))
        assert outcome.status == "awaiting_approval"
        prompt = await responder.approvals.pending_of(incident_id)
        assert prompt is not None
        clock.advance(90)
        denied = await responder.approvals.decide(prompt.id, Decision.DENY, actor="bob", authenticated=True)
        await responder.on_decision(denied)
    assert _value(metrics, "gl_watchdog_approvals_total", {"decision": "denied"}) == 1
    assert _value(metrics, "gl_watchdog_time_to_decide_seconds_count") == 1
    assert _value(metrics, "gl_watchdog_time_to_decide_seconds_sum") == 90


# -- time to close without a remediation ------------------------------------------------------------


def _closed(metrics: WatchdogMetrics, outcome: str) -> tuple[float, float]:
    """(count, sum) of `gl_watchdog_incident_time_to_close_seconds{outcome}`."""
    labels = {"outcome": outcome}
    name = "gl_watchdog_incident_time_to_close_seconds"
    return _value(metrics, f"{name}_count", labels), _value(metrics, f"{name}_sum", labels)


async def _deliver(wd: Watchdog, status: str) -> str:
    body = json.dumps(payload(alert("exec-1", status=status), status=status)).encode()
    [outcome] = await wd.intake.handle(parse_payload(body).payload)
    await asyncio.wait_for(wd.jobs.wait_idle(), 10)
    return outcome.outcome


@pytest.mark.parametrize(("over_by", "expected"), [(730, 1000.0), (None, 300.0)])
async def test_an_incident_closed_by_its_resolved_alert_measures_its_time_to_close_once(
    _no_pending_tasks: None, database_url: str, clock: FakeClock, over_by: float | None, expected: float
) -> None:
    """From the crossing its diagnosis names (700 s before the opening), else from its opening."""
    wd = await _watchdog(database_url, clock, over_by=over_by)
    try:
        assert await _deliver(wd, "firing") == "opened"  # diagnosed 30 s later, nothing acts
        clock.advance(270)
        assert await _deliver(wd, "resolved") == "closed"
        assert await _deliver(wd, "resolved") == "duplicate"  # Alertmanager repeats itself
    finally:
        await wd.aclose()
    assert _closed(wd.metrics, "resolved_without_action") == (1, expected)


async def test_a_run_found_not_stuck_measures_its_time_to_close(
    store: WatchdogStore, clock: FakeClock
) -> None:
    metrics = WatchdogMetrics()
    async with _responder(store, clock, Mode.AUTO, metrics) as responder:
        incident_id = await _incident(responder, "e1")
        clock.advance(120)
        ended = _diagnosis(clock, over_by=900).model_copy(update={"likely_cause": "not_stuck"})
        assert (await responder.handle_diagnosed(incident_id, ended)).status == "resolved"
    assert _closed(metrics, "not_stuck") == (1, 120)  # no stored diagnosis: from the opening


async def test_an_incident_closed_by_hand_measures_its_time_to_close(
    store: WatchdogStore, clock: FakeClock
) -> None:
    metrics = WatchdogMetrics()
    incidents = IncidentService(store, metrics)
    opened = await incidents.open_or_join("e1", dag_id="d", source="manual", detection_source="api")
    clock.advance(45)
    await incidents.close_if_not_acted(opened.incident.id, actor="alice", reason="refused")
    assert _closed(metrics, "closed_by_hand") == (1, 45)
    assert (
        metrics.registry.get_sample_value("gl_watchdog_time_to_remediate_seconds_count") == 0
    )  # not a remediation
