"""End to end (issue 16): the real orchestrator service (its API on loopback, its store, its node history
and progress reports) and the real watchdog (store, sweeper, diagnosis, responder with the shipped
policy, `auto` mode), with short thresholds. A node that hangs in a DAG with a long timeout gets a
`node_stalling` incident within seconds of crossing its stall threshold; a node that reports progress
does not; each other stuck state (a retry storm, a run queued too long, a cancel that never completes,
a resume loop, an owner replica gone) opens its incident once, with its cause, and the plan the
shipped policy makes for it is the one docs/architecture.md states. Sweeps are one-shot and polled
within a bound; nothing sleeps to wait for a state."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator_core.agents import AgentContext
from orchestrator_core.errors import RetryableAgentError
from tests.faults.orchestrator_serve import OrchestratorServe
from tests.orchestrator.service_harness import TOKEN, Harness, make_registry, make_settings, running_service
from tests.watchdog.conftest import WATCHDOG_TOKEN
from tests.watchdog.documented_plans import documented_plans
from watchdog.assembly import Watchdog, build_watchdog
from watchdog.records import Incident
from watchdog.settings import Mode, WatchdogSettings
from watchdog.sweeps import SweepReport
from watchdog_sdk.stall import StallSettings
from watchdog_sdk.stuck import StuckSettings

pytestmark = [pytest.mark.slow]

# Short thresholds: a node that normally takes milliseconds is stalling after a second without progress.
SHORT = StuckSettings(
    stall=StallSettings(min_history=3, floor_seconds=1.0, multiple=3.0, no_progress_seconds=1.0),
    queued_max_seconds=0.5,
    cancel_grace_seconds=0.5,
    resume_loop_count=3,
    retry_storm_attempts=3,
)
LONG_TIMEOUT = 7200  # the DAG timeout: far beyond anything the tests wait for


class Agents:
    """In-process agents of the tests, released at the end so that no attempt outlives its test."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def mode(self, ctx: AgentContext) -> Any:
        """`fast` returns at once; `hang` waits silently; `progress` reports progress every 0.1 s."""
        mode = (ctx.input_data or {}).get("mode", "fast")
        if mode == "hang":
            await self.released.wait()
        while mode == "progress" and not self.released.is_set():
            ctx.report_progress(message="still counting", fraction=0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 0.1)
        return {"mode": mode}

    async def storm(self, ctx: AgentContext) -> Any:
        """Fails its first two attempts (retryable), then waits: a node caught at its third attempt."""
        if ctx.attempt < 3:
            raise RetryableAgentError(f"attempt {ctx.attempt} failed")
        await self.released.wait()
        return {}

    async def stubborn(self, ctx: AgentContext) -> Any:
        """Ignores cancellation until released (or for a minute at most, so that a failing test still
        ends): a cancel of its run never completes."""
        give_up = time.monotonic() + 60
        while not self.released.is_set() and time.monotonic() < give_up:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.released.wait(), 1.0)
        return {}

    def registry_extra(self) -> dict[str, Callable[[AgentContext], Awaitable[Any]]]:
        return {"test.mode": self.mode, "test.storm": self.storm, "test.stubborn": self.stubborn}


@contextlib.asynccontextmanager
async def orchestrator_with_agents(database_url: str, **settings: Any) -> AsyncIterator[Harness]:
    """The orchestrator service with the tests' agents, which are released before it shuts down
    (however the test ends)."""
    agents = Agents()
    registry = make_registry(extra=agents.registry_extra())
    async with running_service(
        make_settings(database_url, **settings), registry=registry, start_loop=True
    ) as orch:
        try:
            yield orch
        finally:
            agents.released.set()


def one_node_dag(dag_id: str, agent_id: str, **node: Any) -> dict[str, Any]:
    return {
        "dag_id": dag_id,
        "execution_timeout_seconds": LONG_TIMEOUT,
        "nodes": {"work": {"agent_id": agent_id, **node}},
    }


def watchdog_settings(tmp_path: Path, orchestrator_url: str) -> WatchdogSettings:
    return WatchdogSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}",
        orchestrator_url=orchestrator_url,
        orchestrator_token=TOKEN,
        api_tokens=[WATCHDOG_TOKEN],
        mode=Mode.AUTO,
        stuck_runs=SHORT,
        max_run_age_seconds=None,
        step_timeout_seconds=5,
    )


@contextlib.asynccontextmanager
async def watchdog_of(settings: WatchdogSettings) -> AsyncIterator[Watchdog]:
    """The whole watchdog (diagnosis and responder running), its sweeps driven by the test."""
    wd = await build_watchdog(settings)
    await wd.start(sweeps=False)
    try:
        yield wd
    finally:
        await wd.aclose()


async def sweep_until(
    wd: Watchdog, found: Callable[[SweepReport], bool], what: str, within: float = 20.0
) -> SweepReport:
    """One-shot sweeps, polled until one's report satisfies `found` (bounded)."""
    deadline = time.monotonic() + within
    while True:
        report = await wd.sweeper.sweep_once()
        assert report.result == "ok", report.as_json()
        if found(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"no sweep within {within:g}s found {what}: {report.as_json()}")
        await asyncio.sleep(0.1)


async def settled(wd: Watchdog, incident: Incident) -> Incident:
    """The incident once its diagnosis and plan are done (the background jobs idle)."""
    await wd.jobs.wait_idle()
    current = await wd.store.get_incident(incident.id)
    assert current is not None
    return current


def assert_documented_plan(incident: Incident, cause: str) -> None:
    """Diagnosed with `cause`, planned as docs/architecture.md says, and nothing acted on."""
    rule, playbook, approval = documented_plans()[cause]
    assert incident.diagnosis is not None and incident.diagnosis["likely_cause"] == cause, incident
    assert incident.plan is not None and incident.plan.rule == rule, incident.plan
    assert incident.plan.playbook == playbook and incident.plan.requires_approval == approval
    assert incident.status == ("awaiting_approval" if approval else "escalated"), incident.status


async def run_of(orch: Harness, dag_id: str, mode: str | None = None) -> str:
    return str((await orch.execute(dag_id, None if mode is None else {"mode": mode}))["execution_id"])


async def failed_times(orch: Harness, execution_id: str, times: int) -> None:
    """Wait until the run has failed at its node `times` times in a row (polled, bounded)."""
    async with asyncio.timeout(10):
        while True:
            record = (await orch.api("GET", f"/executions/{execution_id}")).json()
            streak = record["failure_streak"] or {}
            if record["status"] == "failed" and streak.get("count") == times:
                return
            await asyncio.sleep(0.02)


async def node_started_at(orch: Harness, execution_id: str) -> datetime:
    """When the run's node started, once it runs (polled, bounded)."""
    async with asyncio.timeout(10):
        while True:
            trace = (await orch.api("GET", f"/executions/{execution_id}/trace")).json()
            node = trace["node_traces"]["work"]
            if node["status"] == "running" and node["started_at"]:
                return datetime.fromisoformat(node["started_at"].replace("Z", "+00:00"))
            await asyncio.sleep(0.02)


async def test_a_hung_node_gets_an_incident_within_seconds_of_its_stall_threshold_and_a_progressing_one_none(
    _no_pending_tasks: None, tmp_path: Path, sqlite_url: str
) -> None:
    async with orchestrator_with_agents(sqlite_url) as orch:
        await orch.register(one_node_dag("work", "test.mode"))
        for _ in range(3):  # the node's history: three runs of a few milliseconds
            await orch.wait_status(await run_of(orch, "work", "fast"), "completed")
        hung = await run_of(orch, "work", "hang")
        slow = await run_of(orch, "work", "progress")
        hung_started = await node_started_at(orch, hung)
        slow_started = await node_started_at(orch, slow)
        async with watchdog_of(watchdog_settings(tmp_path, orch.base_url)) as wd:
            report = await sweep_until(
                wd, lambda r: any(i.execution_id == hung for i in r.opened), "the hang"
            )
            [incident] = report.opened
            # The threshold is max(floor 1 s, 3 x p95 of milliseconds) = 1 s, and no progress for 1 s.
            crossed = hung_started.timestamp() + 1.0
            assert incident.opened_at.timestamp() - crossed < 3.0
            assert incident.summary is not None
            assert incident.summary.startswith(
                "[warning] node_stalling: node work (agent test.mode) stalling: "
            )
            # The progressing node has run past the same threshold for a while: still no incident.
            await sweep_until(
                wd, lambda r: time.time() > slow_started.timestamp() + 3.0, "three seconds of progress"
            )
            incidents = await wd.store.list_incidents()
            assert [i.execution_id for i in incidents] == [hung], [(i.status, i.summary) for i in incidents]
            settled_incident = await settled(wd, incident)
    assert_documented_plan(settled_incident, "node_stalling")
    assert settled_incident.diagnosis is not None
    [step3] = [f for f in settled_incident.diagnosis["findings"] if f["step"] == 3]
    assert "(normally p50 " in step3["summary"] and ", 3 runs)" in step3["summary"]
    assert step3["evidence"]["stall_reason"] == "stalled"


async def test_each_other_stuck_state_opens_its_incident_once_with_its_cause_and_the_documented_plan(
    _no_pending_tasks: None, tmp_path: Path, sqlite_url: str
) -> None:
    async with orchestrator_with_agents(sqlite_url, max_concurrent_executions=3) as orch:
        await orch.register(one_node_dag("failing", "builtin.fail", params={"error": "boom"}))
        await orch.register(one_node_dag("stubborn", "test.stubborn"))
        await orch.register(
            one_node_dag(
                "storm",
                "test.storm",
                retry_policy={"max_retries": 10, "strategy": "fixed", "base_delay": 0.0, "max_delay": 0.0},
            )
        )
        await orch.register(one_node_dag("work", "test.mode"))
        # A resume loop: the run fails at the same node on its first attempt and after two resumes.
        loop = await run_of(orch, "failing")
        await failed_times(orch, loop, 1)
        for times in (2, 3):
            resumed = await orch.api("POST", f"/executions/{loop}/resume")
            assert resumed.status_code == 200, resumed.text
            await failed_times(orch, loop, times)
        # A cancel that never completes, a retry storm, and a third run holding the last slot...
        stubborn = await run_of(orch, "stubborn")
        await orch.wait_status(stubborn, "running")
        cancel = await orch.api("POST", f"/executions/{stubborn}/cancel")
        assert cancel.status_code == 409 and "did not stop" in cancel.text, cancel.text  # asked, not done
        storm = await run_of(orch, "storm")
        holder = await run_of(orch, "work", "hang")
        for admitted in (storm, holder):  # the three slots taken before the last run is submitted
            await orch.wait_status(admitted, "running")
        # ... so that this one waits in the admission queue.
        queued = await run_of(orch, "work", "fast")
        expected = {
            loop: "resume_loop",
            stubborn: "cancel_not_completing",
            storm: "retry_storm",
            queued: "queued_too_long",
        }
        async with watchdog_of(watchdog_settings(tmp_path, orch.base_url)) as wd:
            opened: dict[str, Incident] = {}

            def all_found(report: SweepReport) -> bool:
                opened.update({i.execution_id: i for i in report.opened})
                return set(opened) >= set(expected)

            await sweep_until(wd, all_found, "every stuck state")
            again = await wd.sweeper.sweep_once()  # once per run: a later sweep opens nothing new
            every = [
                (i.execution_id[:6], i.status, (i.diagnosis or {}).get("likely_cause"), i.summary)
                for i in await wd.store.list_incidents()
            ]
            assert again.opened == [], every
            incidents = {run: await settled(wd, opened[run]) for run in expected}
            assert holder not in opened  # running, no history: nothing to say about it yet
    for run, cause in expected.items():
        summary = opened[run].summary  # as the sweep opened it (the escalation replaces it later)
        assert summary is not None and f"] {cause}: " in summary, summary
        assert_documented_plan(incidents[run], cause)
    assert len({i.id for i in incidents.values()}) == 4


async def test_a_run_whose_owner_replica_died_with_its_lock_alive_gets_an_owner_gone_incident(
    _no_pending_tasks: None, tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    """Replica A (a `gl-orchestrator serve` process) runs the run and is SIGKILLed: its heartbeat
    expires, its run stays `running` under its lock. Replica B (in-process, same store and Redis, not
    taking runs over) answers the watchdog."""
    replica_a = OrchestratorServe(tmp_path, postgres_url, redis_url)
    replica_a.env["GL_ORCHESTRATOR_LOCK_TTL_SECONDS"] = "60"
    replica_a.env["GL_ORCHESTRATOR_HEARTBEAT_TTL_SECONDS"] = "1"
    replica_a.start()
    try:
        orphan = await replica_a.start_paused_run()
        replica_a.stop(signal.SIGKILL)
        settings = make_settings(postgres_url, redis_url=redis_url, replica_id="replica-b")
        async with (
            running_service(settings, start_loop=False) as replica_b,
            watchdog_of(watchdog_settings(tmp_path, replica_b.base_url)) as wd,
        ):
            report = await sweep_until(wd, lambda r: bool(r.opened), "the orphaned run")
            [incident] = report.opened
            assert incident.execution_id == orphan
            assert incident.summary is not None and incident.summary.startswith(
                "[critical] owner_gone: its owner replica orchestrator-1 has no heartbeat"
            )
            assert (await wd.sweeper.sweep_once()).opened == []
            incident = await settled(wd, incident)
    finally:
        await replica_a.close()
    assert_documented_plan(incident, "owner_gone")
