"""A burst of alerts (one Alertmanager group for many stuck runs) must not start as many concurrent
diagnoses: at most `max_concurrent_diagnoses` run at once, the rest wait `open` and all finish."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, ScriptedDiagnose, make_diagnosis
from tests.watchdog.orchestrators import FakeOrchestrator
from watchdog.assembly import Watchdog, build_watchdog
from watchdog.condition import ConditionEvaluator
from watchdog.diagnosis import AMID_DELIVERIES, FLOOD_MEMORY_SECONDS, OnDiagnosed, _Start
from watchdog.settings import WatchdogSettings
from watchdog.webhook import parse_payload
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.errors import OrchestratorUnavailable


class GatedDiagnose:
    """Counts how many diagnoses run at once; each waits on `gate`."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.active = 0
        self.most = 0
        self.entered = asyncio.Condition()
        self.calls: list[str] = []

    async def __call__(self, execution_id: str) -> Diagnosis:
        async with self.entered:
            self.calls.append(execution_id)
            self.active += 1
            self.most = max(self.most, self.active)
            self.entered.notify_all()
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        return make_diagnosis(execution_id)


async def _gated_watchdog(
    sqlite_url: str, diagnose: GatedDiagnose, on_diagnosed: OnDiagnosed | None = None, **settings: Any
) -> Watchdog:
    config = WatchdogSettings(
        database_url=sqlite_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        **settings,
    )
    clock = FakeClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    respond = on_diagnosed is not None
    return await build_watchdog(
        config, diagnose=diagnose, on_diagnosed=on_diagnosed, respond=respond, clock=clock
    )


def _burst(count: int) -> bytes:
    alerts = ",".join(
        '{"status": "firing", "labels": {"alertname": "OrchestratorExecutionTimeout", '
        f'"execution_id": "run-{i}"}}, "startsAt": "2026-03-01T12:00:00Z", "fingerprint": "fp-{i}"}}'
        for i in range(count)
    )
    return f'{{"version": "4", "status": "firing", "alerts": [{alerts}]}}'.encode()


async def test_a_burst_of_alerts_is_diagnosed_a_few_at_a_time(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    diagnose = GatedDiagnose()
    wd = await _gated_watchdog(sqlite_url, diagnose, max_concurrent_diagnoses=2)
    try:
        outcomes = await wd.intake.handle(parse_payload(_burst(6)).payload)
        assert [o.outcome for o in outcomes] == ["opened"] * 6
        async with asyncio.timeout(10), diagnose.entered:
            await diagnose.entered.wait_for(lambda: len(diagnose.calls) >= 2)
        waiting = await wd.store.list_incidents(statuses=["open"])
        assert len(waiting) == 4  # not yet diagnosing: waiting for a slot
        diagnose.gate.set()
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert diagnose.most == 2 and sorted(diagnose.calls) == [f"run-{i}" for i in range(6)]
        diagnosed = await wd.store.list_incidents()
        assert all(i.diagnosis is not None and i.status == "open" for i in diagnosed)
    finally:
        diagnose.gate.set()
        await wd.aclose()


def test_the_default_diagnoses_a_burst_of_thirty_alerts_in_two_rounds() -> None:
    assert WatchdogSettings().max_concurrent_diagnoses == 16


async def test_a_failed_diagnosis_is_retried_by_the_next_sweep_once(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    settings = WatchdogSettings(database_url=sqlite_url, api_tokens=[WATCHDOG_TOKEN], for_duration_seconds=0)
    diagnose = ScriptedDiagnose()
    diagnose.error = OrchestratorUnavailable("orchestrator at http://orch unreachable")
    wd = await build_watchdog(settings, diagnose=diagnose, respond=False, clock=FakeClock(now))
    fake = FakeOrchestrator()
    fake.add("run-1", "dag-1", started_at=datetime(2026, 3, 1, 11, tzinfo=UTC), timeout=600)
    client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(fake.handler))
    wd.sweeper.condition = ConditionEvaluator(client, None, for_duration=timedelta(0), clock=FakeClock(now))
    try:
        first = await wd.sweeper.sweep_once()
        await wd.jobs.wait_idle()
        [incident] = await wd.store.list_incidents()
        assert [i.id for i in first.opened] == [incident.id]
        assert incident.status == "open" and incident.diagnosis is None
        assert (incident.summary or "").startswith(
            "diagnosis failed: orchestrator at http://orch unreachable"
        )

        diagnose.error = None  # the orchestrator is back
        second = await wd.sweeper.sweep_once()
        assert wd.diagnosis.start(incident) is None  # already queued by the sweep: not twice
        await wd.jobs.wait_idle()
        assert second.joined == [incident.id] and diagnose.calls == ["run-1", "run-1"]
        [incident] = await wd.store.list_incidents()
        assert incident.diagnosis is not None

        await wd.sweeper.sweep_once()  # diagnosed now: joining again starts nothing
        await wd.jobs.wait_idle()
        assert diagnose.calls == ["run-1", "run-1"]
    finally:
        await client.aclose()
        await wd.aclose()


def _queue_settings(database_url: str, *, workers: int, waiting: int) -> WatchdogSettings:
    return WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        max_concurrent_diagnoses=workers,
        diagnosis_queue_size=waiting,
    )


async def test_a_burst_of_a_thousand_alerts_starts_a_few_diagnoses_and_queues_a_bounded_number(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    settings = _queue_settings(sqlite_url, workers=2, waiting=50)
    diagnose = GatedDiagnose()
    wd = await build_watchdog(settings, diagnose=diagnose, respond=False, clock=clock)
    try:
        outcomes = await wd.intake.handle(parse_payload(_burst(1000)).payload)
        assert [o.outcome for o in outcomes] == ["opened"] * 1000
        async with asyncio.timeout(10), diagnose.entered:
            await diagnose.entered.wait_for(lambda: len(diagnose.calls) >= 2)
        # The intake hands a delivery's incidents over once the delivery is recorded: the queue filled
        # to 50 before the two workers took the two oldest of them.
        # The intake hands each committed part's incidents over at once: the queue holds at most 50,
        # the oldest, and the workers take them oldest first (once the delivery is recorded, or after
        # waiting for it for at most a second); the rest wait for the reconciler.
        started = len(diagnose.calls)
        deferred = wd.metrics.diagnoses_deferred._value.get()
        assert wd.diagnosis.queued() <= 50 and len(wd.jobs) == 2
        assert wd.diagnosis.queued() + started + deferred == 1000 and deferred >= 950 - started
        diagnose.gate.set()
        async with asyncio.timeout(30):
            await wd.jobs.wait_idle()
        done = len(diagnose.calls)
        assert diagnose.most == 2 and done == 1000 - deferred
        assert diagnose.calls[:2] == ["run-0", "run-1"] and len(set(diagnose.calls)) == done

        clock.advance(settings.job_lease_seconds + wd.diagnosis.deadline_seconds + 1)
        report = await wd.reconciler.reconcile_once()  # the rest are queued again, oldest first
        assert len(report.retried) == 50 and wd.diagnosis.queued() <= 50
        async with asyncio.timeout(30):
            await wd.jobs.wait_idle()
        left = [f"run-{i}" for i in range(1000) if f"run-{i}" not in diagnose.calls[:done]]
        assert sorted(diagnose.calls[done:]) == sorted(left[:50])  # the oldest of those left
    finally:
        diagnose.gate.set()
        await wd.aclose()


async def test_a_full_queue_takes_an_older_incident_before_the_newest_one(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    diagnose = GatedDiagnose()
    wd = await build_watchdog(
        _queue_settings(sqlite_url, workers=1, waiting=2), diagnose=diagnose, respond=False, clock=clock
    )
    try:
        opened = {}
        for name, minutes in (("busy", 0), ("b", 2), ("c", 3), ("old", 1)):
            clock.set(datetime(2026, 3, 1, 12, minutes, tzinfo=UTC))
            incident = (
                await wd.incidents.open_or_join(name, dag_id=None, source="alert", detection_source="api")
            ).incident
            opened[name] = incident
            assert wd.diagnosis.start(incident) is not None
            if name == "busy":  # the one worker takes it and waits on the gate
                async with asyncio.timeout(10), diagnose.entered:
                    await diagnose.entered.wait_for(lambda: len(diagnose.calls) == 1)
        assert wd.diagnosis.queued() == 2  # "c", the newest, was pushed out by "old"
        assert wd.diagnosis.start(opened["c"]) is None  # and a newer one does not get back in
        diagnose.gate.set()
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert diagnose.calls == ["busy", "old", "b"]
    finally:
        diagnose.gate.set()
        await wd.aclose()


async def test_diagnoses_wait_while_alert_deliveries_are_at_the_store(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    """A burst's new incidents are diagnosed once the deliveries are recorded, not amid them."""
    diagnose = GatedDiagnose()
    diagnose.gate.set()
    wd = await _gated_watchdog(sqlite_url, diagnose)
    try:
        async with wd.intake.gate.admitted():  # a delivery at the store
            await wd.intake.handle(parse_payload(_burst(1)).payload)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2), diagnose.entered:
                    await diagnose.entered.wait_for(lambda: bool(diagnose.calls))
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert diagnose.calls == ["run-0"]
    finally:
        await wd.aclose()


class SteppedClock(FakeClock):
    """A FakeClock whose monotonic time too stays where it is put."""

    def __init__(self) -> None:
        super().__init__()
        self.monotonic_now = 1000.0

    def monotonic(self) -> float:
        return self.monotonic_now

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.monotonic_now += seconds


class BusyIntake:
    """`yield_to` of a watchdog whose intake is busy (each wait ends as after its full timeout, with
    deliveries still waiting) until `quiet` is set; counts the waits."""

    def __init__(self) -> None:
        self.quiet = False
        self.calls = 0

    async def __call__(self, max_seconds: float) -> bool:
        self.calls += 1
        return self.quiet


async def test_a_few_diagnoses_run_amid_a_stream_of_deliveries_and_its_gaps_and_all_workers_once_it_is_over(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    diagnose = GatedDiagnose()
    wd = await _gated_watchdog(sqlite_url, diagnose, max_concurrent_diagnoses=8)
    intake, clock = BusyIntake(), SteppedClock()
    wd.diagnosis.yield_to, wd.diagnosis.clock = intake, clock
    try:
        await wd.intake.handle(parse_payload(_burst(10)).payload)
        # each of the 8 workers yielded once; the 4 let through amid the deliveries once more
        async with asyncio.timeout(10), diagnose.entered:
            await diagnose.entered.wait_for(lambda: diagnose.active == AMID_DELIVERIES)
        assert intake.calls == 8 + AMID_DELIVERIES and diagnose.most == AMID_DELIVERIES
        diagnose.gate.set()
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert diagnose.most == AMID_DELIVERIES and len(diagnose.calls) == 10

        intake.quiet = True  # a gap in the stream: still a few at a time
        diagnose.gate.clear()
        calls = intake.calls
        await wd.intake.handle(parse_payload(_burst(20)).payload)  # run-10 .. run-19 are new
        async with asyncio.timeout(10), diagnose.entered:
            await diagnose.entered.wait_for(lambda: diagnose.active == AMID_DELIVERIES)
        assert intake.calls - calls == 8 + AMID_DELIVERIES and diagnose.most == AMID_DELIVERIES
        diagnose.gate.set()
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()

        clock.advance(FLOOD_MEMORY_SECONDS)  # quiet for a while: the stream is over, every worker goes
        diagnose.gate.clear()
        await wd.intake.handle(parse_payload(_burst(30)).payload)  # run-20 .. run-29 are new
        async with asyncio.timeout(10), diagnose.entered:
            await diagnose.entered.wait_for(lambda: diagnose.active == 8)
        diagnose.gate.set()
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert len(diagnose.calls) == 30
    finally:
        diagnose.gate.set()
        await wd.aclose()


async def test_the_diagnoses_of_a_burst_start_in_shared_write_transactions(
    _no_pending_tasks: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    diagnose = GatedDiagnose()
    wd = await _gated_watchdog(database_url, diagnose, max_concurrent_diagnoses=8)
    starting: list[str] = []
    transaction = wd.store.transaction

    def counted(what: str = "watchdog store", **options: Any) -> Any:
        if what == "diagnoses starting":
            starting.append(what)
        return transaction(what, **options)

    monkeypatch.setattr(wd.store, "transaction", counted)
    try:
        await wd.intake.handle(parse_payload(_burst(8)).payload)
        async with asyncio.timeout(10), diagnose.entered:
            await diagnose.entered.wait_for(lambda: diagnose.active == 8)
        # the 8 starts share one write transaction (a second when a start comes while the first
        # commits), where each diagnosis began in a transaction of its own before
        assert len(starting) in (1, 2), f"{len(starting)} transactions began the 8 diagnoses"
        incidents = await wd.store.list_incidents()
        assert {i.status for i in incidents} == {"diagnosing"} and len(incidents) == 8
        diagnose.gate.set()
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert all(i.diagnosis is not None for i in await wd.store.list_incidents())
    finally:
        diagnose.gate.set()
        await wd.aclose()


async def test_an_incident_closed_before_its_diagnosis_starts_leaves_the_others_of_its_batch_started(
    _no_pending_tasks: None, database_url: str
) -> None:
    diagnose = GatedDiagnose()
    diagnose.gate.set()
    wd = await _gated_watchdog(database_url, diagnose, max_concurrent_diagnoses=4)
    try:
        opened = [
            (
                await wd.incidents.open_or_join(
                    f"run-{i}", dag_id="d", source="manual", detection_source="api"
                )
            ).incident
            for i in range(3)
        ]
        await wd.incidents.transition(opened[1].id, "closed", actor="test", reason="resolved")
        answers = await wd.diagnosis._begin_batch([_Start(i.id, "watchdog", False) for i in opened])
        assert answers[1] is None
        started = [answer for answer in answers if isinstance(answer, tuple)]
        assert [incident.id for _, incident in started] == [opened[0].id, opened[2].id]
        statuses = [incident.status for incident in await wd.store.list_incidents()]
        assert sorted(statuses) == ["closed", "diagnosing", "diagnosing"]
    finally:
        await wd.aclose()


async def test_a_bursts_responses_start_once_its_diagnoses_are_done(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    diagnose = GatedDiagnose()
    diagnose.gate.set()
    seen: list[int] = []  # diagnoses done when each response began

    async def respond(incident_id: int, diagnosis: Diagnosis) -> None:
        seen.append(len(diagnose.calls))

    wd = await _gated_watchdog(sqlite_url, diagnose, respond, max_concurrent_diagnoses=1)
    try:
        await wd.intake.handle(parse_payload(_burst(4)).payload)
        async with asyncio.timeout(10):
            await wd.jobs.wait_idle()
        assert seen == [4, 4, 4, 4]
    finally:
        await wd.aclose()
