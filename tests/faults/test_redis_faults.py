"""Redis stopped and restarted in the middle of a sweep (issue 10), on PostgreSQL with a private
`redis-server` the test starts, stops and starts again on the same port.

While Redis is gone the replica is not the leader and does not sweep (a confirmed leader only),
`/readyz` stays ready but names Redis degraded, and the incident the interrupted sweep opened is still
diagnosed, remediated and resolved (its jobs need the store, not Redis). Once Redis is back the next
sweep is the leader's again. One incident, one remediation, nothing repeated.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest

from tests.conftest import free_port, missing_service, redis_server_argv, wait_for_port
from tests.faults.conftest import Rig, fault_settings, open_rig
from tests.watchdog.paged_orchestrator import PagedOrchestrator
from watchdog.condition import ConditionEvaluator
from watchdog_sdk.clients.orchestrator import OrchestratorClient


class RedisProcess:
    """A `redis-server` of this test on a fixed loopback port: start, stop, start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing_service("no redis-server binary")
        self.binary = str(binary)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="gl-fault-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            redis_server_argv(self.binary, self.port, self.workdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for_port(self.port), "redis-server did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    try:
        yield process
    finally:
        process.stop()
        shutil.rmtree(process.workdir, ignore_errors=True)


@pytest.fixture
async def redis_rig(
    _no_pending_tasks: None, postgres_url: str, redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    settings = fault_settings(
        postgres_url, redis_process.url, redis_timeout_seconds=1.0, for_duration_seconds=0
    )
    async with open_rig(settings, monkeypatch) as rig:
        yield rig


async def test_redis_stopped_mid_sweep_and_restarted_leaves_one_incident_resolved_once(
    redis_rig: Rig, redis_process: RedisProcess
) -> None:
    rig = redis_rig
    orchestrator = PagedOrchestrator(rig.clock.now)
    orchestrator.add("stuck-run", started_at=rig.clock.now() - timedelta(hours=1), timeout=600)

    stops = [True]  # once: the first sweep's listing

    def list_then_stop_redis(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("over_timeout") == "true" and stops:
            stops.pop()
            redis_process.stop()  # Redis goes away in the middle of the sweep
        return orchestrator.handler(request)

    client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(list_then_stop_redis))
    rig.wd.sweeper.condition = ConditionEvaluator(client, None, for_duration=timedelta(0), clock=rig.clock)

    async def the_run_recovers() -> None:
        del orchestrator.executions["stuck-run"]  # what the remediation did to the run

    rig.playbook.after_apply = the_run_recovers
    try:
        first = await rig.wd.sweeper.sweep_once()
        assert first.result == "ok" and [i.execution_id for i in first.opened] == ["stuck-run"]
        [incident] = first.opened
        await rig.settle()
        assert (await rig.incident(incident.id)).status == "resolved"

        readiness = await rig.wd.readiness.check_once()
        assert readiness.ready and "redis" in readiness.degraded  # (the orchestrator is a fake: down too)
        assert rig.wd.metrics.dependency_up.labels(dependency="redis")._value.get() == 0

        blind = await rig.wd.sweeper.sweep_once()  # no Redis: not a confirmed leader, no sweep
        assert blind.result == "leader_error" and not blind.leader

        redis_process.start()
        back = await rig.wd.sweeper.sweep_once()
        assert back.result == "ok" and back.leader and back.opened == []
        assert "redis" not in (await rig.wd.readiness.check_once()).degraded

        incidents = await rig.wd.store.list_incidents()
        assert [(i.execution_id, i.status) for i in incidents] == [("stuck-run", "resolved")]
        assert rig.playbook.side_effects == 1 and rig.diagnose.calls == ["stuck-run"]
    finally:
        await client.aclose()
