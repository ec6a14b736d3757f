"""Job leases and the reconciler: a job holds its incident by a lease of its replica, renewed while it
runs and never past its deadline; the reconciler takes back only lapsed jobs (once, however many
leaders), retries them after a backoff and escalates them when their attempts run out; a job that was
taken back writes nothing. The faults that make jobs lapse are in tests/faults/."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.faults.conftest import T0, Rig, fault_settings, open_rig
from tests.watchdog.conftest import FakeClock
from watchdog.migrations import job_leases


@contextlib.asynccontextmanager
async def two_replicas(
    postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> AsyncIterator[tuple[Rig, Rig]]:
    """Two watchdogs on one PostgreSQL database and one Redis, at one fake time."""
    clock = FakeClock(T0)
    settings_a = fault_settings(postgres_url, redis_url, replica_id="replica-a", **overrides)
    settings_b = fault_settings(postgres_url, redis_url, replica_id="replica-b", **overrides)
    async with (
        open_rig(settings_a, monkeypatch, clock) as a,
        open_rig(settings_b, monkeypatch, clock) as b,
    ):
        yield a, b


async def _lease(rig: Rig, incident_id: int) -> Any:
    async with rig.wd.store.transaction() as tx:
        return await rig.wd.leases.of(tx, incident_id)


async def test_a_diagnosis_holds_a_lease_of_its_replica_and_drops_it_when_done(rig: Rig) -> None:
    gate = asyncio.Event()
    rig.diagnose.before_return = gate.wait
    incident = await rig.open_and_diagnose()
    await asyncio.wait_for(rig.diagnose.entered.wait(), 10)
    lease = await _lease(rig, incident.id)
    assert (lease.job, lease.owner, lease.attempts) == ("diagnosis", rig.wd.settings.replica_id, 0)
    assert lease.expires_at == rig.clock.now() + timedelta(seconds=30)
    assert rig.wd.leases.held() == [incident.id]
    gate.set()
    await rig.settle()
    assert await _lease(rig, incident.id) is None and rig.wd.leases.held() == []


async def test_renewal_extends_a_lease_but_never_past_its_deadline(rig: Rig) -> None:
    gate = asyncio.Event()
    rig.diagnose.before_return = gate.wait
    incident = await rig.open_and_diagnose()
    await asyncio.wait_for(rig.diagnose.entered.wait(), 10)
    rig.clock.advance(20)
    assert await rig.wd.leases.renew_once() == 1
    assert (await _lease(rig, incident.id)).expires_at == rig.clock.now() + timedelta(seconds=30)
    rig.clock.advance(rig.wd.diagnosis.deadline_seconds)  # past the deadline: capped there
    await rig.wd.leases.renew_once()
    async with rig.wd.store.transaction() as tx:
        deadline = (await tx.conn.execute(_deadline_of(incident.id))).scalar_one()
    assert (await _lease(rig, incident.id)).expires_at == deadline
    gate.set()
    await rig.settle()


def _deadline_of(incident_id: int) -> Any:
    return sa.select(job_leases.c.deadline_at).where(job_leases.c.incident_id == incident_id)


async def test_a_live_lease_of_another_replica_is_left_alone_until_it_lapses(
    _no_pending_tasks: None, postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_replicas(postgres_url, redis_url, monkeypatch) as (a, b):
        gate = asyncio.Event()
        a.diagnose.before_return = gate.wait
        incident = await a.open_and_diagnose()
        await asyncio.wait_for(a.diagnose.entered.wait(), 10)
        a.clock.advance(29)
        assert (await b.wd.reconciler.reconcile_once()).taken_back == []
        a.clock.advance(2)  # replica a stopped renewing (as if it died): its lease lapsed
        report = await b.wd.reconciler.reconcile_once()
        assert report.taken_back == [incident.id]
        assert (await b.incident(incident.id)).status == "open"
        gate.set()  # replica a's job wakes up and finds it was taken back: it writes nothing
        await a.settle()
        after = await b.incident(incident.id)
        assert after.status == "open" and after.diagnosis is None
        assert a.wd.metrics.job_save_failures.labels(job="diagnosis")._value.get() == 0


async def test_two_leaders_at_once_take_an_incident_back_once(
    _no_pending_tasks: None, postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_replicas(postgres_url, redis_url, monkeypatch) as (a, b):
        a.diagnose.before_return = lambda: _down(a)
        incident = await a.open_and_diagnose()
        await a.settle()
        a.faults.down = False
        a.clock.advance(31)
        reports = await asyncio.gather(a.wd.reconciler.reconcile_once(), b.wd.reconciler.reconcile_once())
        assert sorted(len(r.taken_back) for r in reports) == [0, 1]
        kinds = [e.kind for e in await a.audit(incident.id)]
        assert kinds.count("job_lost") == 1


async def _down(rig: Rig) -> None:
    rig.faults.down = True


async def test_without_redis_a_live_lease_of_another_process_is_left_and_a_restart_resumes_a_dead_ones(
    _no_pending_tasks: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Redis the reconciler still trusts a live lease (`gl-watchdog sweep` beside `serve` must
    not take the server's jobs); what a dead process left is resumed by the next start."""
    settings = fault_settings(sqlite_url, None, replica_id="new-process")
    async with open_rig(settings, monkeypatch) as rig:
        incident = (
            await rig.wd.incidents.open_or_join("run-1", dag_id=None, source="sweep", detection_source="api")
        ).incident
        async with rig.wd.store.transaction() as tx:  # what a process killed mid-diagnosis leaves
            await tx.update_incident(incident.id, status="diagnosing")
            other = type(rig.wd.leases)(rig.wd.store, rig.clock, owner="other-process", lease_seconds=30)
            await other.take_in(tx, incident.id, "diagnosis", max_seconds=60)
        assert (await rig.wd.reconciler.reconcile_once()).taken_back == []
        await rig.wd.start(sweeps=False)
        await rig.settle()
        resumed = await rig.incident(incident.id)
        assert resumed.status == "resolved" and rig.diagnose.calls == ["run-1"]


async def test_a_lost_job_is_retried_after_its_backoff_not_before(rig: Rig) -> None:
    rig.playbook.after_apply = lambda: _down(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    rig.faults.down = False
    rig.clock.advance(31)
    assert (await rig.wd.reconciler.reconcile_once()).taken_back == [incident.id]
    rig.clock.advance(29)  # the first backoff is 30 s
    waiting = await rig.wd.reconciler.reconcile_once()
    assert waiting.retried == [] and waiting.waiting == [incident.id]
    rig.clock.advance(1)
    assert (await rig.wd.reconciler.reconcile_once()).retried == [incident.id]
    await rig.settle()
    assert (await rig.incident(incident.id)).status == "resolved"


async def test_a_remediation_past_its_deadline_gives_up_its_lease_for_a_retry(
    _no_pending_tasks: None, postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fault_settings(postgres_url, redis_url, remediation_timeout_seconds=0.5)
    async with open_rig(settings, monkeypatch) as rig:
        rig.playbook.block_second_step = asyncio.Event()  # the playbook's check step never ends
        incident = await rig.open_and_diagnose()
        await rig.settle()
        lease = await _lease(rig, incident.id)
        assert (await rig.incident(incident.id)).status == "remediating"
        assert lease.owner is None and lease.attempts == 1
        assert "did not finish within 0.5s" in (lease.last_error or "")
        assert "job_timed_out" in [e.kind for e in await rig.audit(incident.id)]
        rig.playbook.block_second_step = None
        rig.clock.advance(30)
        assert (await rig.wd.reconciler.reconcile_once()).retried == [incident.id]
        await rig.settle()
        assert (await rig.incident(incident.id)).status == "resolved"
        assert rig.playbook.side_effects == 1


async def test_the_documented_bounds_follow_from_the_default_settings(rig: Rig) -> None:
    # docs/architecture.md "Bounds on transient states" states these two figures.
    assert rig.wd.transient_bound_seconds("diagnosis") == 735
    assert rig.wd.transient_bound_seconds("remediation") == 5910
