"""Sweeps: one-shot sweeps open incidents for firing runs, leadership through real Redis, the schedule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from playbooks.registry import default_registry
from tests.conftest import free_port
from tests.watchdog.conftest import FakeClock
from tests.watchdog.orchestrators import FakeOrchestrator, OrchestratorProcess, use_orchestrator
from watchdog.cli import main
from watchdog.condition import ConditionEvaluator
from watchdog.diagnostics.runner import likely_cause
from watchdog.errors import StoreUnavailable
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.planner import make_plan
from watchdog.policy import load_policy
from watchdog.records import Incident
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog.sweeps import Leadership, LocalLeadership, RedisLeadership, Sweeper
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

FOR = timedelta(minutes=10)


class Harness:
    def __init__(self, store: WatchdogStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.fake = FakeOrchestrator()
        self.client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(self.fake.handler))
        self.metrics = WatchdogMetrics()
        self.opened: list[Incident] = []
        self.incidents = IncidentService(store, self.metrics)

    def sweeper(
        self,
        leadership: Leadership | None = None,
        prometheus: PrometheusClient | None = None,
        interval: float = 60,
    ) -> Sweeper:
        condition = ConditionEvaluator(self.client, prometheus, for_duration=FOR, clock=self.clock)
        return Sweeper(
            condition,
            self.incidents,
            leadership or LocalLeadership(),
            self.metrics,
            self.opened.append,
            interval_seconds=interval,
            leader_ttl_seconds=30,
        )

    def stuck(self, execution_id: str = "exec-1") -> None:
        self.fake.add(
            execution_id, "dag-1", started_at=self.clock.now() - timedelta(seconds=700), timeout=600
        )


@contextlib.asynccontextmanager
async def open_harness(database_url: str) -> AsyncIterator[Harness]:
    """A sweep harness on a fresh store at a fixed fake time; closed on exit."""
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    store = await WatchdogStore.open(database_url, clock=clock)
    h = Harness(store, clock)
    try:
        yield h
    finally:
        await h.client.aclose()
        await store.close()


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    async with open_harness(database_url) as h:
        yield h


async def test_sweep_opens_an_incident_once_the_condition_fires(harness: Harness) -> None:
    harness.stuck()
    sweeper = harness.sweeper()
    first = await sweeper.sweep_once()
    assert first.result == "ok" and first.as_json()["pending"] == ["exec-1"] and first.opened == []
    harness.clock.advance(FOR.total_seconds())
    second = await sweeper.sweep_once()
    assert [i.execution_id for i in second.opened] == ["exec-1"]
    [incident] = await harness.store.list_incidents()
    assert incident.source == "sweep" and incident.detection_source == "api" and incident.dag_id == "dag-1"
    assert [i.id for i in harness.opened] == [incident.id]
    harness.clock.advance(60)
    third = await sweeper.sweep_once()
    assert third.opened == [] and third.joined == [incident.id]
    assert len(harness.opened) == 1 and len(await harness.store.list_incidents()) == 1
    assert harness.metrics.sweeps.labels(result="ok")._value.get() == 3


async def test_sweep_finds_the_stuck_run_with_prometheus_down(harness: Harness) -> None:
    harness.stuck()
    dead = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        sweeper = harness.sweeper(prometheus=dead)
        await sweeper.sweep_once()
        harness.clock.advance(FOR.total_seconds())
        report = await sweeper.sweep_once()
    finally:
        dead.close()
    assert report.result == "ok" and report.condition is not None
    assert report.as_json()["source"] == "api" and "prometheus" in (report.as_json()["fallback_reason"] or "")
    assert [i.detection_source for i in report.opened] == ["api"]


async def test_unreachable_orchestrator_is_reported_not_raised(harness: Harness) -> None:
    dead = OrchestratorClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        sweeper = harness.sweeper()
        sweeper.condition.orchestrator = dead
        report = await sweeper.sweep_once()
    finally:
        await dead.aclose()
    assert report.result == "error" and report.error is not None and "unreachable" in report.error
    assert harness.metrics.sweeps.labels(result="error")._value.get() == 1


async def test_only_the_redis_leader_sweeps(harness: Harness, redis_url: str) -> None:
    harness.stuck()
    redis_a = RedisClient(redis_url, timeout=2)
    redis_b = RedisClient(redis_url, timeout=2)
    try:
        a = harness.sweeper(RedisLeadership(redis_a, "replica-a", ttl_seconds=30))
        b = harness.sweeper(RedisLeadership(redis_b, "replica-b", ttl_seconds=30))
        assert (await a.sweep_once()).result == "ok"
        not_leader = await b.sweep_once()
        assert not_leader.result == "not_leader" and not_leader.condition is None
        assert await redis_a.current_leader() == "replica-a"
        assert (await a.sweep_once()).leader  # renewing our own leadership
        await a.shutdown()  # resigns
        assert await redis_a.current_leader() is None
        assert (await b.sweep_once()).result == "ok"
        assert await redis_b.current_leader() == "replica-b"
    finally:
        await redis_a.aclose()
        await redis_b.aclose()


async def test_unreachable_redis_means_no_sweep(harness: Harness) -> None:
    harness.stuck()
    redis = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    try:
        sweeper = harness.sweeper(RedisLeadership(redis, "replica-a", ttl_seconds=30))
        report = await sweeper.sweep_once()
    finally:
        await redis.aclose()
    assert report.result == "leader_error" and not report.leader and report.condition is None
    assert harness.metrics.is_leader._value.get() == 0


async def test_scheduler_runs_sweeps_and_shuts_down_cleanly(harness: Harness) -> None:
    harness.stuck()
    sweeper = harness.sweeper(interval=0.2)
    sweeper.start()
    try:
        deadline = time.monotonic() + 10
        while harness.metrics.sweeps.labels(result="ok")._value.get() < 2:
            assert time.monotonic() < deadline, "the scheduler did not run two sweeps in 10 s"
            await asyncio.sleep(0.05)
    finally:
        await sweeper.shutdown()
    after = harness.metrics.sweeps.labels(result="ok")._value.get()
    await asyncio.sleep(0.5)  # no more sweeps once shut down
    assert harness.metrics.sweeps.labels(result="ok")._value.get() == after
    assert harness.metrics.is_leader._value.get() == 0


async def test_an_escalated_run_is_not_reopened_by_every_sweep(harness: Harness) -> None:
    harness.stuck()
    sweeper = harness.sweeper()
    await sweeper.sweep_once()
    harness.clock.advance(FOR.total_seconds())
    [incident] = (await sweeper.sweep_once()).opened
    await harness.incidents.transition(
        incident.id, "escalated", actor="remediation", reason="verification failed"
    )
    harness.clock.advance(60)
    report = await sweeper.sweep_once()
    assert report.opened == [] and report.escalated == ["exec-1"]
    assert len(await harness.store.list_incidents()) == 1 and len(harness.opened) == 1


async def test_after_sweep_hooks_run_on_the_leader_only(harness: Harness, redis_url: str) -> None:
    calls: list[str] = []

    async def expire_prompts() -> None:
        calls.append("expire")

    redis_a = RedisClient(redis_url, timeout=2)
    redis_b = RedisClient(redis_url, timeout=2)
    try:
        leader = harness.sweeper(RedisLeadership(redis_a, "replica-a", ttl_seconds=30))
        follower = harness.sweeper(RedisLeadership(redis_b, "replica-b", ttl_seconds=30))
        leader.after_sweep.append(expire_prompts)
        follower.after_sweep.append(expire_prompts)
        await leader.sweep_once()
        await follower.sweep_once()
        assert calls == ["expire"]
    finally:
        await redis_a.aclose()
        await redis_b.aclose()


# -- interrupted runs ------------------------------------------------------------------------------------
# Runs left `interrupted` (a replica shut down mid-run, e.g. the runbook's Option 4 rollout restart)
# are not forgotten: once interrupted for the `for` duration, a sweep opens an incident, the diagnosis
# names the cause `interrupted`, and the shipped policy plans the runbook's Option 2, resume.


PAUSE_DAG: dict[str, Any] = {
    "dag_id": "pausing",
    "nodes": {
        "load": {"agent_id": "builtin.echo"},
        "pause": {"agent_id": "builtin.sleep", "depends_on": ["load"], "params": {"seconds": 60}},
        "report": {"agent_id": "builtin.echo", "depends_on": ["pause"]},
    },
}


async def test_sweep_opens_an_incident_for_a_run_interrupted_longer_than_for(harness: Harness) -> None:
    harness.fake.interrupt("exec-int", "dag-1", interrupted_at=harness.clock.now())
    sweeper = harness.sweeper()
    early = await sweeper.sweep_once()
    assert early.result == "ok" and early.opened == []  # on-call or a replica may still resume it
    harness.clock.advance(FOR.total_seconds())
    late = await sweeper.sweep_once()
    assert [i.execution_id for i in late.opened] == ["exec-int"]
    [incident] = await harness.store.list_incidents()
    assert incident.source == "sweep" and incident.detection_source == "api"
    again = await sweeper.sweep_once()
    assert again.opened == [] and again.joined == [incident.id]


def _finding(step: int, outcome: StepStatus, summary: str, **evidence: Any) -> Finding:
    return Finding(step=step, name=f"s{step}", status=outcome, summary=summary, evidence=evidence)


def test_an_interrupted_run_is_diagnosed_interrupted_not_self_resolved() -> None:
    findings = [
        _finding(1, StepStatus.PROBLEM, "run is interrupted", status="interrupted"),
        _finding(8, StepStatus.OK, "3 checkpoints, chain valid"),
    ]
    cause, evidence = likely_cause(findings)
    assert cause == "interrupted" and evidence == ["step 1 (s1): run is interrupted"]
    finished = [_finding(1, StepStatus.OK, "run is completed", status="completed")]
    assert likely_cause(finished)[0] == "not_stuck"


def _wait(orch: OrchestratorProcess, execution_id: str, node: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded poll of a real process
        trace = orch.http.get(f"/executions/{execution_id}/trace").json()
        if trace["node_traces"].get(node, {}).get("status") == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} never became {status}:\n{orch.log()}")


def test_a_run_interrupted_by_a_shutdown_gets_an_incident_and_a_resume_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "orchestrator"
    workdir.mkdir()
    first = OrchestratorProcess(workdir)
    first.start()
    try:
        assert first.http.post("/dags", json=PAUSE_DAG).status_code == 201
        started = first.http.post(
            "/dags/pausing/execute", json={"execution_options": {"checkpoint_enabled": True}}
        )
        execution_id = started.json()["execution_id"]
        _wait(first, execution_id, "pause", "running")
    finally:
        first.stop()  # SIGTERM: the 60 s node outlives the 2 s grace, so the run ends interrupted
    second = OrchestratorProcess(workdir)  # the replacement replica, same store
    second.start()
    try:
        record = second.http.get(f"/executions/{execution_id}").json()
        assert record["status"] == "interrupted"
        use_orchestrator(monkeypatch, second)
        monkeypatch.setenv("GL_WATCHDOG_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}")
        monkeypatch.setenv("GL_WATCHDOG_FOR_DURATION_SECONDS", "0")
        assert main(["sweep", "--local"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [o["execution_id"] for o in report["opened"]] == [execution_id]
        assert main(["diagnose", "--local", execution_id, "--format", "json"]) == 0
        diagnosis = json.loads(capsys.readouterr().out)
        assert diagnosis["likely_cause"] == "interrupted"
    finally:
        second.stop()

    plan = make_plan(Diagnosis.model_validate(diagnosis), load_policy(), Mode.RECOMMEND, default_registry())
    assert plan.playbook == "resume" and plan.requires_approval
    assert datetime.now(UTC) - timedelta(minutes=5) < datetime.fromisoformat(
        diagnosis["completed_at"].replace("Z", "+00:00")
    )


async def test_a_sweep_cut_short_by_shutdown_is_not_logged_as_a_failed_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    entered = asyncio.Event()

    async def hanging(request: httpx.Request) -> httpx.Response:
        entered.set()
        await asyncio.Event().wait()  # the orchestrator never answers
        raise AssertionError("unreachable")

    harness.client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(hanging))
    sweeper = harness.sweeper(interval=3600)
    sweeper.start()
    await asyncio.wait_for(entered.wait(), timeout=10)
    with caplog.at_level(logging.INFO):
        await sweeper.shutdown(grace_seconds=0.05)
    assert "in-flight sweep cancelled by shutdown" in caplog.text
    assert "Traceback" not in caplog.text and "raised an exception" not in caplog.text


async def test_the_leader_reconciles_at_every_sweep_and_a_failure_there_does_not_stop_it(
    harness: Harness, redis_url: str
) -> None:
    calls: list[str] = []

    async def reconcile() -> None:
        calls.append("reconcile")
        raise StoreUnavailable("database not reachable")

    harness.stuck()
    redis_a = RedisClient(redis_url, timeout=2)
    redis_b = RedisClient(redis_url, timeout=2)
    try:
        leader = harness.sweeper(RedisLeadership(redis_a, "replica-a", ttl_seconds=30))
        follower = harness.sweeper(RedisLeadership(redis_b, "replica-b", ttl_seconds=30))
        leader.reconcile = follower.reconcile = reconcile
        assert (await leader.sweep_once()).result == "ok"  # the stuck run is still looked at
        assert (await follower.sweep_once()).result == "not_leader"
        assert calls == ["reconcile"]
    finally:
        await redis_a.aclose()
        await redis_b.aclose()
