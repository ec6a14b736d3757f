"""Incidents: idempotent open-or-join under concurrency, audited transitions, close only before acting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.watchdog.conftest import make_plan
from watchdog.errors import IncidentNotFound, InvalidTransition
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.store import WatchdogStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[WatchdogStore]:
    s = await WatchdogStore.open(database_url)
    yield s
    await s.close()


async def test_concurrent_opens_from_two_replicas_give_one_incident(database_url: str) -> None:
    replica_a = await WatchdogStore.open(database_url)
    replica_b = await WatchdogStore.open(database_url)
    try:
        services = [IncidentService(replica_a), IncidentService(replica_b)]
        results = await asyncio.gather(
            *(
                services[i % 2].open_or_join(
                    "exec-1", dag_id="d", source="alert", detection_source="prometheus"
                )
                for i in range(10)
            )
        )
        assert sum(r.created for r in results) == 1
        assert len({r.incident.id for r in results}) == 1
        assert len(await replica_a.list_incidents()) == 1
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_open_and_join_are_audited_and_counted(store: WatchdogStore) -> None:
    metrics = WatchdogMetrics()
    service = IncidentService(store, metrics)
    first = await service.open_or_join("e1", dag_id="d", source="sweep", detection_source="api")
    second = await service.open_or_join("e1", dag_id="d", source="alert", detection_source="prometheus")
    silent = await service.open_or_join(
        "e1", dag_id="d", source="sweep", detection_source="api", audit_join=False
    )
    assert first.created and not second.created and not silent.created
    detail = await service.detail(first.incident.id)
    assert [a.kind for a in detail.audit] == ["incident_opened", "incident_joined"]
    assert detail.incident.source == "sweep" and detail.incident.detection_source == "api"
    assert metrics.incidents_opened.labels(source="sweep")._value.get() == 1
    await service.refresh_gauges()  # a store-wide count, read at scrape time
    assert metrics.open_incidents._value.get() == 1


async def test_transitions_follow_the_table_and_are_audited(store: WatchdogStore) -> None:
    service = IncidentService(store)
    inc = (await service.open_or_join("e1", dag_id=None, source="manual", detection_source="api")).incident
    await service.transition(inc.id, "diagnosing", actor="t", reason="start")
    await service.transition(inc.id, "awaiting_approval", actor="t", reason="plan needs approval")
    await service.transition(inc.id, "remediating", actor="alice", reason="approved")
    with pytest.raises(InvalidTransition, match="remediating"):
        await service.transition(inc.id, "closed", actor="t", reason="nope")
    done = await service.transition(inc.id, "resolved", actor="t", reason="verified")
    assert done.closed_at is not None and not done.is_open
    audit = (await service.detail(inc.id)).audit
    moves = [(a.data["from"], a.data["to"], a.actor) for a in audit if a.kind == "state"]
    assert moves == [
        ("open", "diagnosing", "t"),
        ("diagnosing", "awaiting_approval", "t"),
        ("awaiting_approval", "remediating", "alice"),
        ("remediating", "resolved", "t"),
    ]
    with pytest.raises(InvalidTransition):
        await service.transition(inc.id, "open", actor="t", reason="terminal")


async def test_expected_status_guards_the_move(store: WatchdogStore) -> None:
    service = IncidentService(store)
    inc = (await service.open_or_join("e1", dag_id=None, source="manual", detection_source="api")).incident
    with pytest.raises(InvalidTransition):
        await service.transition(inc.id, "open", actor="t", reason="x", expected=["diagnosing"])
    with pytest.raises(IncidentNotFound):
        await service.transition(999, "closed", actor="t", reason="x")


async def test_close_if_not_acted_closes_and_expires_pending_approvals(store: WatchdogStore) -> None:
    service = IncidentService(store)
    inc = (
        await service.open_or_join("e1", dag_id=None, source="alert", detection_source="prometheus")
    ).incident
    async with store.transaction() as tx:
        await tx.insert_approval(
            approval_id="a1",
            incident_id=inc.id,
            plan=make_plan(),
            summary="s",
            token_nonce="n",
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
        )
    closed = await service.close_if_not_acted(inc.id, actor="alertmanager", reason="alert resolved")
    assert closed.status == "closed" and closed.closed_at is not None
    detail = await service.detail(inc.id)
    assert [a.state for a in detail.approvals] == ["expired"]
    assert "approval_expired" in [a.kind for a in detail.audit]
    # a new episode for the same execution can open a fresh incident
    again = await service.open_or_join("e1", dag_id=None, source="alert", detection_source="prometheus")
    assert again.created and again.incident.id != inc.id


async def test_close_if_not_acted_refuses_an_incident_that_acted(store: WatchdogStore) -> None:
    service = IncidentService(store)
    inc = (
        await service.open_or_join("e1", dag_id=None, source="alert", detection_source="prometheus")
    ).incident
    async with store.transaction() as tx:
        await tx.insert_action(incident_id=inc.id, playbook="cancel", step="cancel", idempotency_key="k")
    with pytest.raises(InvalidTransition, match="already acted"):
        await service.close_if_not_acted(inc.id, actor="alertmanager", reason="alert resolved")
    assert (await service.get(inc.id)).status == "open"
