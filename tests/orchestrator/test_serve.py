"""`gl-orchestrator serve` as real processes: SIGTERM shutdown, and two replicas sharing PostgreSQL and
Redis — each run executes on exactly one of them; SIGKILL one mid-run and the other resumes its runs
once the lock TTL has passed, without running a completed node twice.

Agents are HTTP agents served by the test (a real aiohttp server), which counts every call per
(execution, node): that count is the proof of "exactly once"."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from orchestrator_core.locks import lock_key
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.redis]

TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/api/v1/orchestrator"
CLI = str(Path(sys.executable).with_name("gl-orchestrator"))


class AgentFarm:
    """HTTP agents: `remote.quick` answers at once, `remote.work` waits for the test's gate."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.gate = asyncio.Event()
        self.work_started: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def run(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls[(body["execution_id"], body["node_id"])] += 1
        if request.match_info["agent_id"] == "remote.work":
            await self.work_started.put((body["execution_id"], body["attempt"]))
            await self.gate.wait()
        return web.json_response({"output": {"node": body["node_id"], "attempt": body["attempt"]}})


@pytest.fixture
async def farm(_no_pending_tasks: None) -> AsyncIterator[AgentFarm]:
    agents = AgentFarm()
    app = web.Application()
    app.router.add_post("/{agent_id}/run", agents.run)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", agents.port).start()
    yield agents
    agents.gate.set()
    await runner.cleanup()


DAG = {
    "dag_id": "replicated",
    "nodes": {
        "prepare": {"agent_id": "remote.quick"},
        "work": {"agent_id": "remote.work", "depends_on": ["prepare"]},
        "finalize": {"agent_id": "remote.quick", "depends_on": ["work"]},
    },
}


class Replica:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@contextmanager
def replicas_started(tmp_path: Path, env_common: dict[str, str], names: list[str]) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for name in names:
            port = free_port()
            env = {
                **os.environ,
                **env_common,
                "GL_ORCHESTRATOR_REPLICA_ID": name,
                "GL_ORCHESTRATOR_POD_NAME": f"pod-{name}",
                "GL_ORCHESTRATOR_PORT": str(port),
            }
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [CLI, "serve", "--host", "127.0.0.1"], env=env, stdout=out, stderr=out
                )
            started.append(Replica(name, proc, port, log))
        yield started
    finally:
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGTERM)
        for replica in started:
            try:
                replica.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait(timeout=10)


async def wait_ready(replica: Replica, within: float = 30.0) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client, asyncio.timeout(within):
        while True:
            if replica.proc.poll() is not None:
                pytest.fail(f"{replica.name} exited with {replica.proc.returncode}:\n{replica.output()}")
            try:
                if (await client.get(f"{replica.url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)  # a real process is starting: poll with a deadline


async def poll(fetch: Any, check: Any, within: float = 30.0) -> Any:
    async with asyncio.timeout(within):
        while True:
            value = await fetch()
            if check(value):
                return value
            await asyncio.sleep(0.1)


def common_env(database_url: str, redis_url: str, farm: AgentFarm, **extra: str) -> dict[str, str]:
    env = {
        "GL_ORCHESTRATOR_DATABASE_URL": database_url,
        "GL_ORCHESTRATOR_REDIS_URL": redis_url,
        "GL_ORCHESTRATOR_API_TOKENS": json.dumps([TOKEN]),
        "GL_ORCHESTRATOR_LOCK_TTL_SECONDS": "2",
        "GL_ORCHESTRATOR_HEARTBEAT_TTL_SECONDS": "2",
        "GL_ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": "1",
        "GL_ORCHESTRATOR_AGENT_URL_TEMPLATE": f"http://127.0.0.1:{farm.port}/{{agent_id}}/run",
        "GL_ORCHESTRATOR_HTTP_AGENTS": json.dumps(["remote.quick", "remote.work"]),
        "GL_ORCHESTRATOR_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


async def test_sigterm_interrupts_running_runs_releases_locks_and_exits_zero(
    tmp_path: Path, sqlite_url: str, redis_url: str, farm: AgentFarm
) -> None:
    env = common_env(sqlite_url, redis_url, farm)
    raw = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        with replicas_started(tmp_path, env, ["solo"]) as (solo,):
            await wait_ready(solo)
            async with httpx.AsyncClient(base_url=solo.url, headers=AUTH, timeout=10) as client:
                assert (await client.post(f"{API}/dags", json=DAG)).status_code == 201
                run = (await client.post(f"{API}/dags/replicated/execute", json={})).json()
                await asyncio.wait_for(farm.work_started.get(), 15)
                assert await raw.exists(lock_key(run["execution_id"]))
                solo.proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(solo.proc.wait, 20)
            assert code == 0, solo.output()
            assert not await raw.exists(lock_key(run["execution_id"]))
            lines = [json.loads(line) for line in solo.output().splitlines() if line.startswith("{")]
            assert any(line.get("message") == "execution interrupted by shutdown" for line in lines)
            assert all(TOKEN not in line for line in solo.output().splitlines())
    finally:
        await raw.aclose()
    # The store says interrupted (resumable): read it with a fresh replica.
    farm.gate.set()
    with replicas_started(tmp_path, env, ["after"]) as (after,):
        await wait_ready(after)
        async with httpx.AsyncClient(base_url=after.url, headers=AUTH, timeout=10) as client:
            record = (await client.get(f"{API}/executions/{run['execution_id']}")).json()
            assert record["status"] == "interrupted"
            resumed = (await client.post(f"{API}/executions/{run['execution_id']}/resume")).json()
            assert resumed["nodes_skipped"] == ["prepare"]
            await poll(
                lambda: client.get(f"{API}/executions/{run['execution_id']}"),
                lambda r: r.json()["status"] == "completed",
            )
    assert farm.calls[(run["execution_id"], "prepare")] == 1


@pytest.mark.postgres
async def test_two_replicas_run_each_execution_once_and_take_over_after_sigkill(
    tmp_path: Path, postgres_url: str, redis_url: str, farm: AgentFarm
) -> None:
    env = common_env(postgres_url, redis_url, farm, GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS="4")
    with replicas_started(tmp_path, env, ["alpha"]) as (alpha,):
        await wait_ready(alpha)  # alpha migrates the shared schema first
        with replicas_started(tmp_path, env, ["beta"]) as (beta,):
            await wait_ready(beta)
            async with (
                httpx.AsyncClient(base_url=alpha.url, headers=AUTH, timeout=10) as a,
                httpx.AsyncClient(base_url=beta.url, headers=AUTH, timeout=10) as b,
            ):
                assert (await a.post(f"{API}/dags", json=DAG)).status_code == 201
                runs: dict[str, str] = {}
                for client in (a, b, a, b):
                    record = (await client.post(f"{API}/dags/replicated/execute", json={})).json()
                    runs[record["execution_id"]] = ""
                for _ in runs:
                    await asyncio.wait_for(farm.work_started.get(), 20)
                for execution_id in runs:
                    record = (await b.get(f"{API}/executions/{execution_id}")).json()
                    assert record["status"] == "running"
                    runs[execution_id] = record["owner"]
                assert sorted(runs.values()) == ["alpha", "alpha", "beta", "beta"]
                alpha_runs = sorted(e for e, owner in runs.items() if owner == "alpha")

                alpha.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(alpha.proc.wait, 10)

                async def owners() -> dict[str, str]:
                    items = (await b.get(f"{API}/executions", params={"status": "running"})).json()["items"]
                    return {item["execution_id"]: item["owner"] for item in items}

                taken = await poll(owners, lambda o: all(o.get(e) == "beta" for e in alpha_runs), within=30)
                assert set(taken) == set(runs)
                # beta restarted only the unfinished node of alpha's runs: wait for those attempts.
                for _ in alpha_runs:
                    await asyncio.wait_for(farm.work_started.get(), 20)
                farm.gate.set()
                for execution_id in runs:
                    await poll(
                        lambda e=execution_id: b.get(f"{API}/executions/{e}"),
                        lambda r: r.json()["status"] == "completed",
                    )
                for execution_id in runs:
                    trace = (await b.get(f"{API}/executions/{execution_id}/trace")).json()["node_traces"]
                    assert trace["prepare"]["attempt_count"] == 1
                    provenance = (await b.get(f"{API}/executions/{execution_id}/provenance")).json()
                    assert provenance["chain_valid"] is True
                    record = (await b.get(f"{API}/executions/{execution_id}")).json()
                    assert record["owner"] == "beta"

    for execution_id, first_owner in runs.items():
        assert farm.calls[(execution_id, "prepare")] == 1, "a completed node ran twice"
        assert farm.calls[(execution_id, "finalize")] == 1
        # `work` was in flight when alpha died: it runs again on beta (it had not completed).
        assert farm.calls[(execution_id, "work")] == (2 if first_owner == "alpha" else 1)
