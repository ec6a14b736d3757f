"""The diagnoses of a burst share the orchestrator-wide reads; a run's own reads are never shared."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from tests.watchdog.orchestrators import ORCH_BASE, execution_json
from watchdog.diagnostics.shared_reads import SharedReads
from watchdog_sdk.clients.orchestrator import ExecutionQuery, OrchestratorClient
from watchdog_sdk.errors import WatchdogError

METRICS = {"active_executions": 3, "max_concurrent_executions": 50, "queued_executions": 0}


class Now:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture
async def shared() -> AsyncIterator[tuple[SharedReads, Now]]:
    now = Now()
    client = SharedReads(OrchestratorClient(ORCH_BASE, "t"), ttl_seconds=1.0, now=now)
    yield client, now
    await client.aclose()


async def test_diagnoses_asking_at_once_share_one_metrics_request(
    orch: respx.MockRouter, shared: tuple[SharedReads, Now]
) -> None:
    client, _ = shared
    route = orch.get("/metrics").respond(json=METRICS)
    answers = await asyncio.gather(*(client.get_metrics() for _ in range(5)))
    assert route.call_count == 1 and {a.active_executions for a in answers} == {3}


async def test_a_shared_answer_is_read_again_once_older_than_its_ttl(
    orch: respx.MockRouter, shared: tuple[SharedReads, Now]
) -> None:
    client, now = shared
    route = orch.get("/executions").respond(json={"items": [], "next_cursor": None, "total": 7})
    query = ExecutionQuery("running")
    assert await client.count_executions(query) == 7
    now.value += 0.5
    assert await client.count_executions(query) == 7 and route.call_count == 1
    now.value += 1.0
    await client.count_executions(query)
    assert route.call_count == 2
    await client.count_executions(ExecutionQuery("running", over_timeout=True))  # another query
    assert route.call_count == 3


async def test_a_failed_read_is_not_shared(orch: respx.MockRouter, shared: tuple[SharedReads, Now]) -> None:
    client, _ = shared
    route = orch.get("/metrics").mock(
        side_effect=[httpx.Response(500, json={"error": "x"}), httpx.Response(200, json=METRICS)]
    )
    with pytest.raises(WatchdogError):
        await client.get_metrics()
    assert (await client.get_metrics()).active_executions == 3 and route.call_count == 2


async def test_a_runs_own_reads_are_never_shared(
    orch: respx.MockRouter, shared: tuple[SharedReads, Now]
) -> None:
    client, _ = shared
    route = orch.get("/executions/ex-1").respond(json=execution_json())
    await asyncio.gather(client.get_execution("ex-1"), client.get_execution("ex-1"))
    assert route.call_count == 2


async def test_a_waiter_reads_again_when_the_shared_read_is_cancelled(
    orch: respx.MockRouter, shared: tuple[SharedReads, Now]
) -> None:
    client, _ = shared
    started, release, calls = asyncio.Event(), asyncio.Event(), []

    async def slow_then_fast(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if not started.is_set():
            started.set()
            await release.wait()
        return httpx.Response(200, json=METRICS)

    orch.get("/metrics").mock(side_effect=slow_then_fast)
    first = asyncio.create_task(client.get_metrics())
    await started.wait()
    waiter = asyncio.create_task(client.get_metrics())
    await asyncio.sleep(0)
    first.cancel()  # its step timed out
    assert (await waiter).active_executions == 3 and len(calls) == 2
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()


async def test_the_agents_and_a_dags_definition_are_shared_like_the_metrics(
    orch: respx.MockRouter, shared: tuple[SharedReads, Now]
) -> None:
    client, now = shared
    agents = orch.get("/agents").respond(json={"items": [{"agent_id": "a", "restarts": 1}]})
    dag = orch.get("/dags/d1").respond(json={"dag_id": "d1", "nodes": {}})
    other = orch.get("/dags/d2").respond(json={"dag_id": "d2", "nodes": {}})
    await asyncio.gather(client.list_agents(), client.list_agents(), client.get_dag("d1"))
    now.value += 0.5
    assert [a.agent_id for a in await client.list_agents()] == ["a"]
    assert (await client.get_dag("d1"))["dag_id"] == "d1" and (await client.get_dag("d2"))["dag_id"] == "d2"
    assert (agents.call_count, dag.call_count, other.call_count) == (1, 1, 1)
    now.value += 1.0
    await client.list_agents()
    assert agents.call_count == 2


async def test_the_same_log_read_of_a_run_is_sent_once_while_in_flight_and_never_reused_after(
    orch: respx.MockRouter, shared: tuple[SharedReads, Now]
) -> None:
    client, _ = shared
    started, release = asyncio.Event(), asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        started.set()
        await release.wait()
        return httpx.Response(200, json={"lines": [{"message": "m"}]})

    route = orch.get("/executions/ex-1/logs").mock(side_effect=held)
    first = asyncio.create_task(client.get_logs("ex-1", limit=500))
    await started.wait()
    second = asyncio.create_task(client.get_logs("ex-1", limit=500))  # step 8 while step 7's is out
    other_node = asyncio.create_task(client.get_logs("ex-1", node_id="n1", limit=500))
    release.set()
    answers = await asyncio.gather(first, second, other_node)
    assert route.call_count == 2 and [[line.message for line in a] for a in answers] == [["m"]] * 3
    await client.get_logs("ex-1", limit=500)  # asked again once answered, at the same instant
    assert route.call_count == 3
