"""Sweeps find the stuck runs the timeout cannot see (issue 16): a stalling node opens an incident of
its own cause and severity long before its DAG's timeout, a node that reports progress does not, and
each other stuck state (queued too long, a cancel not completing, a resume loop, a retry storm, an
owner gone) opens its incident once. The orchestrator is `PagedOrchestrator` (the documented contract
over httpx.MockTransport), at a fixed fake time; the store is real (SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.watchdog.conftest import FakeClock
from tests.watchdog.paged_orchestrator import PagedSweeps
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.records import Incident
from watchdog.store import WatchdogStore
from watchdog.sweeps import Sweeper
from watchdog_sdk.stall import StallSettings
from watchdog_sdk.stuck import StuckSettings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# A node that normally takes about a minute: 3 x p95 (90 s) = 270 s, under the 300 s floor.
NORMAL = {"count": 40, "p50_seconds": 60.0, "p95_seconds": 90.0, "p99_seconds": 110.0}
SETTINGS = StuckSettings(
    stall=StallSettings(floor_seconds=300, no_progress_seconds=600),
    queued_max_seconds=1800,
    cancel_grace_seconds=300,
    resume_loop_count=3,
    retry_storm_attempts=5,
)


class Stuck(PagedSweeps):
    """`PagedSweeps` whose sweepers look for stuck runs (SETTINGS)."""

    def sweeper(
        self, max_run_age: timedelta | None = None, stuck: StuckSettings | None = SETTINGS
    ) -> Sweeper:
        return super().sweeper(max_run_age, stuck)

    def run(self, execution_id: str, *, status: str = "running", **signals: Any) -> None:
        """A run with a two-hour timeout that started ten minutes ago (far from its timeout)."""
        self.fake.add(execution_id, started_at=T0 - 10 * MINUTE, timeout=7200, status=status, **signals)

    async def opened_audit(self, incident: Incident) -> dict[str, Any]:
        async with self.store.read() as tx:
            entries = await tx.list_audit(incident.id)
        [opened] = [e for e in entries if e.kind == "incident_opened"]
        return dict(opened.data)


@pytest.fixture
async def stuck(sqlite_url: str) -> AsyncIterator[Stuck]:
    clock = FakeClock(T0)
    store = await WatchdogStore.open(sqlite_url, clock=clock)
    try:
        yield Stuck(store, clock)
    finally:
        await store.close()


async def test_a_hung_node_gets_a_node_stalling_incident_long_before_its_dag_timeout(stuck: Stuck) -> None:
    stuck.run("hung")
    stuck.fake.add_node("hung", "calc", started_at=T0 - 11 * MINUTE, normal_duration=NORMAL)
    report = await stuck.sweeper().sweep_once()
    [incident] = report.opened
    assert incident.execution_id == "hung" and incident.source == "sweep"
    assert incident.summary is not None
    assert incident.summary.startswith("[warning] node_stalling: node calc (agent agent-calc) stalling: ")
    assert "running 11m 00s, 7.3 x its normal p95 (normally p50 1m 00s, p95 1m 30s)" in incident.summary
    assert incident.summary.endswith("over the threshold 5m 00s (the floor 5m 00s), no progress reported")
    audit = await stuck.opened_audit(incident)
    assert audit["cause"] == "node_stalling" and audit["severity"] == "warning"
    assert audit["running_seconds"] == 660 and audit["threshold_seconds"] == 300
    assert audit["normal_p50_seconds"] == 60 and audit["history_count"] == 40
    # The condition saw nothing: the run is 110 minutes from its timeout.
    assert report.condition is not None and report.condition.firing == []


async def test_a_node_that_reports_progress_gets_no_incident(stuck: Stuck) -> None:
    stuck.run("slow")
    stuck.fake.add_node(
        "slow", "calc", started_at=T0 - 30 * MINUTE, last_progress_at=T0 - 2 * MINUTE, normal_duration=NORMAL
    )
    report = await stuck.sweeper().sweep_once()
    assert report.opened == [] and report.stuck == []


async def test_a_node_without_enough_history_or_within_its_threshold_gets_no_incident(stuck: Stuck) -> None:
    stuck.run("new-dag")
    stuck.fake.add_node(
        "new-dag", "calc", started_at=T0 - 60 * MINUTE, normal_duration={**NORMAL, "count": 3}
    )
    stuck.run("young")
    stuck.fake.add_node("young", "calc", started_at=T0 - 4 * MINUTE, normal_duration=NORMAL)
    stuck.run("no-history")
    stuck.fake.add_node("no-history", "calc", started_at=T0 - 60 * MINUTE, normal_duration=None)
    report = await stuck.sweeper().sweep_once()
    assert report.opened == []


async def test_each_other_stuck_state_opens_its_incident_with_its_cause_and_severity(stuck: Stuck) -> None:
    stuck.run("queued", status="queued", queued_at=T0 - 31 * MINUTE)
    stuck.run("cancel", cancel_requested_at=T0 - 6 * MINUTE)
    stuck.run("loop", status="failed", resume_count=2, failure_streak={"node_id": "calc", "count": 3})
    stuck.run("orphan", owner_alive=False)
    stuck.run("storm")
    # retrying since 11 minutes, its attempts reporting progress: a storm, not a stall
    stuck.fake.add_node(
        "storm",
        "calc",
        started_at=T0 - 11 * MINUTE,
        last_progress_at=T0 - MINUTE,
        attempt=5,
        normal_duration=NORMAL,
    )
    report = await stuck.sweeper().sweep_once()
    causes = {s["execution_id"]: (s["cause"], s["severity"]) for s in report.stuck}
    assert causes == {
        "queued": ("queued_too_long", "warning"),
        "cancel": ("cancel_not_completing", "warning"),
        "loop": ("resume_loop", "critical"),
        "orphan": ("owner_gone", "critical"),
        "storm": ("retry_storm", "warning"),
    }
    opened = {i.execution_id: i.summary for i in report.opened}
    assert set(opened) == set(causes)
    assert opened["loop"] == (
        "[critical] resume_loop: failed at node calc in each of its last 3 attempts (resumed 2 times): "
        "resuming again will not help"
    )
    assert opened["queued"] is not None and opened["queued"].startswith(
        "[warning] queued_too_long: queued for 31m"
    )
    # Once per execution: the next sweep joins the open incidents, it opens none.
    again = await stuck.sweeper().sweep_once()
    assert again.opened == [] and sorted(again.joined) == sorted(i.id for i in report.opened)


async def test_states_just_short_of_their_bounds_open_nothing(stuck: Stuck) -> None:
    stuck.run("queued", status="queued", queued_at=T0 - 29 * MINUTE)
    stuck.run("cancel", cancel_requested_at=T0 - 4 * MINUTE)
    stuck.run("two-failures", status="failed", resume_count=1, failure_streak={"node_id": "calc", "count": 2})
    stuck.run("alive", owner_alive=True)
    stuck.run("unknown-owner", owner_alive=None)
    stuck.run("retrying")
    stuck.fake.add_node(
        "retrying",
        "calc",
        started_at=T0 - 11 * MINUTE,
        last_progress_at=T0 - MINUTE,
        attempt=4,
        normal_duration=NORMAL,
    )
    report = await stuck.sweeper().sweep_once()
    assert report.opened == [] and report.stuck_errors == []


async def test_the_questions_ask_the_orchestrator_with_server_side_filters(stuck: Stuck) -> None:
    await stuck.sweeper().sweep_once()
    asked = [q for p, q in zip(stuck.fake.paths, stuck.fake.requests, strict=True) if p == "/executions"]
    stuck_questions = [q for q in asked if "over_timeout" not in q and q.get("status") != "interrupted"]
    assert stuck_questions == [
        {"status": "running", "owner_gone": "true"},
        {"status": "running,queued,failed,interrupted", "min_resume_count": "2"},
        {"status": "running,queued", "cancel_requested_before": "2026-03-01T11:55:00Z"},
        {"status": "queued", "queued_before": "2026-03-01T11:30:00Z"},
    ]
    assert stuck.fake.paths.count("/running-nodes") == 1


async def test_every_running_node_among_ten_thousand_is_judged_in_two_pages(stuck: Stuck) -> None:
    # 10,000 nodes old enough to stall, all reporting progress, and three hung ones.
    for i in range(10_000):
        started = T0 - 11 * MINUTE - timedelta(seconds=i % 200)
        stuck.fake.add_node(
            f"fine-{i:05d}", "calc", started_at=started, last_progress_at=T0 - MINUTE, normal_duration=NORMAL
        )
    for i in range(3):
        stuck.run(f"hung-{i}")
        stuck.fake.add_node(
            f"hung-{i}", "calc", started_at=T0 - timedelta(minutes=20 + i), normal_duration=NORMAL
        )
    report = await stuck.sweeper().sweep_once()
    assert sorted(i.execution_id for i in report.opened) == ["hung-0", "hung-1", "hung-2"]
    node_pages = [
        q for p, q in zip(stuck.fake.paths, stuck.fake.requests, strict=True) if p == "/running-nodes"
    ]
    assert [q.get("cursor") is None for q in node_pages] == [True, False, False]
    assert all(q["limit"] == "5000" for q in node_pages)


async def test_nodes_too_young_to_stall_are_not_read(stuck: Stuck) -> None:
    # No node can stall before max(floor 300 s, no progress 600 s): younger ones are left out.
    for i in range(1_000):
        stuck.fake.add_node(f"young-{i:04d}", "calc", started_at=T0 - timedelta(seconds=i % 500), attempt=9)
    report = await stuck.sweeper().sweep_once()
    assert report.opened == [] and report.stuck == []
    [asked] = [q for p, q in zip(stuck.fake.paths, stuck.fake.requests, strict=True) if p == "/running-nodes"]
    assert asked == {"limit": "5000", "started_before": "2026-03-01T11:50:00Z"}


async def test_an_orchestrator_without_running_nodes_is_reported_and_the_other_states_still_count(
    stuck: Stuck,
) -> None:
    stuck.fake.missing_routes.add("/running-nodes")
    stuck.run("orphan", owner_alive=False)
    report = await stuck.sweeper().sweep_once()
    assert report.result == "ok" and [i.execution_id for i in report.opened] == ["orphan"]
    [error] = report.stuck_errors
    assert error.startswith("running nodes: ") and "no route /running-nodes" in error


async def test_a_run_stuck_in_two_ways_gets_one_incident_under_its_most_urgent_cause(stuck: Stuck) -> None:
    stuck.run("both", owner_alive=False)
    stuck.fake.add_node("both", "calc", started_at=T0 - 30 * MINUTE, normal_duration=NORMAL)
    report = await stuck.sweeper().sweep_once()
    [incident] = report.opened
    assert incident.summary is not None and incident.summary.startswith("[critical] owner_gone: ")
    assert [s["cause"] for s in report.stuck] == ["owner_gone"]


async def test_an_escalated_run_is_left_to_on_call(stuck: Stuck) -> None:
    stuck.run("orphan", owner_alive=False)
    [incident] = (await stuck.sweeper().sweep_once()).opened
    await IncidentService(stuck.store, WatchdogMetrics()).transition(
        incident.id, "escalated", actor="test", reason="on-call owns it"
    )
    report = await stuck.sweeper().sweep_once()
    assert report.opened == [] and report.escalated == ["orphan"]
