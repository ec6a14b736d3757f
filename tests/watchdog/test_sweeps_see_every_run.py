"""Sweeps see every run (issue 11): the condition, interrupted runs and runs with no timeout are asked of
the paginated `GET /executions` with server-side filters and read to the last page, oldest first;
a running run with no timeout at all gets an incident of its own once past the maximum age (issue 10
item 8). The orchestrator is `PagedOrchestrator`, the documented contract over httpx.MockTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from playbooks import checks
from tests.watchdog.conftest import FakeClock
from tests.watchdog.paged_orchestrator import PagedSweeps, paged_sweeps
from watchdog_sdk.clients import Clients
from watchdog_sdk.ledger import InMemoryLedger
from watchdog_sdk.outcomes import CheckStatus
from watchdog_sdk.playbook import PlaybookContext

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FOR = timedelta(minutes=10)
DAY = timedelta(days=1)


@pytest.fixture
async def paged(sqlite_url: str) -> AsyncIterator[PagedSweeps]:
    async with paged_sweeps(sqlite_url, FakeClock(T0)) as sweeps:
        yield sweeps


async def test_a_sweep_reads_every_page_of_stuck_runs_and_finds_the_ones_past_the_first(
    paged: PagedSweeps,
) -> None:
    # 6,000 runs that went over their timeout five seconds ago (pending: not yet for 10 minutes),
    # oldest first, then three over for most of an hour (firing): on the second page of 5,000.
    for i in range(6000):
        paged.fake.add(f"pending-{i:05d}", started_at=T0 - timedelta(hours=2), timeout=7195)
    for i in range(3):
        paged.fake.add(f"firing-{i}", started_at=T0 - timedelta(hours=1), timeout=60)
    report = await paged.sweeper().sweep_once()
    assert sorted(i.execution_id for i in report.opened) == ["firing-0", "firing-1", "firing-2"]
    assert report.condition is not None and len(report.condition.pending) == 6000
    stuck_pages = [q for q in paged.fake.requests if q.get("over_timeout") == "true"]
    assert [q.get("cursor") is None for q in stuck_pages] == [True, False]
    assert all(q["status"] == "running" and q["limit"] == "5000" for q in stuck_pages)


async def test_among_ten_thousand_running_runs_every_stuck_one_is_found_the_oldest_included(
    paged: PagedSweeps,
) -> None:
    stuck = ["stuck-oldest", "stuck-b", "stuck-c", "stuck-d", "stuck-newest"]
    paged.fake.add(stuck[0], started_at=T0 - timedelta(days=3), timeout=600)
    for i in range(10_000):
        paged.fake.add(f"fine-{i:05d}", started_at=T0 - timedelta(seconds=i % 3000), timeout=86_400)
    for n, execution_id in enumerate(stuck[1:]):
        paged.fake.add(execution_id, started_at=T0 - timedelta(hours=2 - n / 10), timeout=600)
    report = await paged.sweeper().sweep_once()
    assert [i.execution_id for i in report.opened] == stuck  # oldest first, as listed
    # Only the candidates came over the wire, not the 10,000 running runs.
    assert report.condition is not None and len(report.condition.executions) == 5


async def test_a_run_with_no_timeout_gets_an_incident_of_its_own_once_past_the_maximum_age(
    paged: PagedSweeps,
) -> None:
    paged.fake.add("ageless-old", started_at=T0 - timedelta(days=2), timeout=None)
    paged.fake.add("ageless-young", started_at=T0 - timedelta(hours=1), timeout=None)
    report = await paged.sweeper().sweep_once()
    assert report.over_max_age == ["ageless-old"]
    [incident] = report.opened
    assert incident.execution_id == "ageless-old" and incident.source == "sweep"
    assert incident.summary == "running for 172800s with no timeout, past the maximum age of 86400s"
    [asked] = [q for q in paged.fake.requests if q.get("no_timeout") == "true"]
    assert asked == {
        "status": "running",
        "no_timeout": "true",
        "started_before": "2026-02-28T12:00:00Z",
        "limit": "5000",
    }
    again = await paged.sweeper().sweep_once()
    assert again.opened == [] and again.joined == [incident.id]


async def test_a_run_under_the_orchestrators_default_timeout_is_left_to_the_condition(
    paged: PagedSweeps,
) -> None:
    # The DAG sets no timeout, the orchestrator applies its default: the timeout gauge exists, the
    # alert and the condition see the run; the maximum-age rule is for runs with no timeout at all.
    paged.fake.add("defaulted", started_at=T0 - timedelta(days=2), timeout=3600, timeout_is_default=True)
    report = await paged.sweeper().sweep_once()
    assert report.over_max_age == []
    assert [i.execution_id for i in report.opened] == ["defaulted"]  # fired by the condition


async def test_the_maximum_age_rule_is_off_when_no_maximum_is_set(paged: PagedSweeps) -> None:
    paged.fake.add("ageless-old", started_at=T0 - timedelta(days=20), timeout=None)
    report = await paged.sweeper(max_run_age=None).sweep_once()
    assert report.opened == [] and report.over_max_age == []
    assert not [q for q in paged.fake.requests if "no_timeout" in q]


async def test_interrupted_runs_are_read_to_the_last_page(paged: PagedSweeps) -> None:
    for i in range(5003):
        paged.fake.add(
            f"int-{i:05d}",
            started_at=T0 - timedelta(hours=3),
            timeout=600,
            status="interrupted",
            completed_at=T0 - (FOR if i >= 5000 else timedelta(seconds=1)),
        )
    report = await paged.sweeper().sweep_once()
    assert [i.execution_id for i in report.opened] == ["int-05000", "int-05001", "int-05002"]
    asked = [q for q in paged.fake.requests if q["status"] == "interrupted"]
    assert len(asked) == 2 and "cursor" in asked[1]


async def test_the_verification_check_sees_stuck_runs_beyond_any_page_and_counts_all_running(
    paged: PagedSweeps,
) -> None:
    for i in range(10_000):
        paged.fake.add(f"fine-{i:05d}", started_at=T0 - timedelta(seconds=i % 600), timeout=3600)
    paged.fake.add("acted-on", started_at=T0 - timedelta(days=1), timeout=60)
    paged.fake.add("other-stuck", started_at=T0 - timedelta(minutes=30), timeout=60)
    ctx = PlaybookContext(
        incident_id=1,
        execution_id="acted-on",
        clients=Clients(orchestrator=paged.client),
        ledger=InMemoryLedger(),
        clock=paged.clock,
    )
    check = await checks.no_other_stuck_runs(ctx)
    assert check.status is CheckStatus.PROBLEM
    assert check.detail == "1 other run(s) over their timeout: other-stuck"
    del paged.fake.executions["other-stuck"]
    fine = await checks.no_other_stuck_runs(ctx)
    assert fine.status is CheckStatus.OK and fine.detail == "running executions: 10001, none stuck"
