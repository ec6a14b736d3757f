"""OrchestratorService: FIFO admission, live limits, ownership locks (renewal, self-fencing, takeover),
graceful shutdown, HTTP agents through the engine, and spans of a real run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from aiohttp import web

from orchestrator_core import ownership as ownership_module
from orchestrator_core.errors import LockBackendUnavailable, ServiceUnavailable
from orchestrator_core.locks import InProcessLockBackend, InProcessLockSpace, lock_key
from orchestrator_core.service import OrchestratorService
from orchestrator_core.settings import OrchestratorSettings, load_settings
from orchestrator_core.store.schema import executions
from tests.conftest import free_port
from tests.orchestrator.conftest import wait_until
from tests.orchestrator.service_harness import (
    Gates,
    Harness,
    chain_dag,
    make_registry,
    make_settings,
    running_service,
)


@pytest.fixture
def service_settings(sqlite_url: str) -> OrchestratorSettings:
    return make_settings(sqlite_url, max_concurrent_executions=1)


def gate_dag(dag_id: str, gate: str | None = None, **fields: Any) -> dict[str, Any]:
    dag = chain_dag(dag_id, "test.gate", **fields)
    if gate:
        dag["nodes"]["n1"]["params"] = {"gate": gate}
    return dag


# -- admission --------------------------------------------------------------------------------------


async def test_runs_over_the_limit_queue_and_start_in_fifo_order(h: Harness, gates: Gates) -> None:
    await h.register(gate_dag("a", gate="a"))
    await h.register(gate_dag("b", gate="b"))
    await h.register(gate_dag("c", gate="c"))
    first = await h.execute("a")
    second = await h.execute("b")
    third = await h.execute("c")
    assert first["status"] == "running"
    assert second["status"] == "queued" and third["status"] == "queued"
    metrics = (await h.api("GET", "/metrics")).json()
    assert metrics["active_executions"] == 1 and metrics["queued_executions"] == 2
    exposition = (await h.client.get("/metrics")).text
    assert "gl_orchestrator_queued_executions 2.0" in exposition

    gates.open("a")
    await h.wait_status(first["execution_id"], "completed")
    await h.wait_status(second["execution_id"], "running")
    assert (await h.service.engine.get_execution(third["execution_id"])).status == "queued"
    gates.open("b")
    gates.open("c")
    await h.wait_status(third["execution_id"], "completed")
    assert [call[0] for call in gates.calls] == [e["execution_id"] for e in (first, second, third)]


async def test_submits_recorded_while_an_admission_pass_waits_share_that_pass(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submits that arrive while a pass is under way join the one pass waiting to start (it reads the
    queue after their runs were recorded) instead of each queueing a pass of its own."""
    settings = make_settings(sqlite_url, max_concurrent_executions=10)
    async with running_service(settings, registry=make_registry(gates)) as h:
        await h.register(gate_dag("shared", gate="shared"))
        reads = entered = 0
        read_queue = h.service.engine.store.executions.oldest_queued
        pump_soon = h.service.admission.pump_soon

        async def counted_read(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await read_queue(*args, **kwargs)

        async def counted_pump() -> None:
            nonlocal entered
            entered += 1
            await pump_soon()

        monkeypatch.setattr(h.service.engine.store.executions, "oldest_queued", counted_read)
        monkeypatch.setattr(h.service.admission, "pump_soon", counted_pump)
        async with h.service.admission.lock:  # a pass under way
            submits = [asyncio.create_task(h.service.submit("shared")) for _ in range(5)]
            await wait_until(lambda: entered == 5)
        records = await asyncio.gather(*submits)
        assert [record.status for record in records] == ["running"] * 5
        assert reads == 1
        assert h.service.admission.queued == 0  # the pass read the queue to its end: nothing left
        gates.open("shared")


async def test_a_held_run_keeps_no_task_but_its_own(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates
) -> None:
    """Owning a run waits on nothing: its lock is let go of from its task's done-callback (a task per
    held run waiting for its end was ~1.5 KB of memory each at 10,000 held runs)."""
    settings = make_settings(sqlite_url, max_concurrent_executions=3)
    async with running_service(settings, registry=make_registry(gates)) as h:
        await h.register(gate_dag("held", gate="held"))
        before = asyncio.all_tasks()

        def added() -> set[asyncio.Task[Any]]:
            return {task for task in asyncio.all_tasks() - before if not task.done()}

        for _ in range(3):
            await h.service.submit("held")
        await gates.wait_started(3)
        await wait_until(lambda: len(added()) == 3)
        assert sorted(task.get_name().split(":")[0] for task in added()) == ["execution"] * 3
        assert len(h.service.owned_executions()) == 3
        gates.open("held")
        await wait_until(lambda: not h.service.owned_executions())  # let go of once ended


async def test_with_more_than_500_queued_the_oldest_is_admitted_first_and_the_queue_counted_exactly(
    h: Harness,
) -> None:
    await h.register(gate_dag("backlog", gate="backlog"))
    now = datetime.now(UTC)
    rows = [  # ids in the reverse of their age: the FIFO order is by created_at, never by id
        {
            "execution_id": f"q{699 - index:04d}",
            "dag_id": "backlog",
            "dag_version": 1,
            "status": "queued",
            "input_data": "null",
            "options": "{}",
            "created_at": now - timedelta(seconds=1000 - index),
            "updated_at": now,
        }
        for index in range(700)
    ]
    async with h.service.engine.store.engine.begin() as conn:
        await conn.execute(executions.insert(), rows)
    assert await h.service.pump_once() == ["q0699"]  # the oldest, though 699 newer ones wait
    figures = (await h.api("GET", "/metrics")).json()
    assert figures["queued_executions"] == 699 and figures["active_executions"] == 1
    exposition = (await h.client.get("/metrics")).text
    assert "gl_orchestrator_queued_executions 699.0" in exposition
    await h.service.cancel("q0699")
    await h.wait_status("q0699", "cancelled")
    async with asyncio.timeout(10):  # the run's end admits the next oldest
        while (await h.service.engine.get_execution("q0698")).status != "running":  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_admission_reads_the_queue_from_its_index(_no_pending_tasks: None, sqlite_url: str) -> None:
    async with running_service(make_settings(sqlite_url)) as h:
        engine = h.service.engine.store.engine
        plans = []
        for query in (
            sa.select(executions.c.execution_id)
            .where(executions.c.status == "queued")
            .order_by(executions.c.created_at, executions.c.execution_id)
            .limit(10),
            sa.select(sa.func.count()).select_from(executions).where(executions.c.status == "queued"),
        ):
            compiled = query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
            async with engine.connect() as conn:
                rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")).all()
            plans.append(" ".join(str(row[-1]) for row in rows))
    assert all("ix_executions_status_created" in plan for plan in plans), plans
    assert all("TEMP B-TREE" not in plan for plan in plans), plans  # no sort: the index's order


async def test_raising_the_limit_live_admits_queued_runs(h: Harness, gates: Gates) -> None:
    await h.register(gate_dag("g"))
    runs = [await h.execute("g") for _ in range(3)]
    assert [run["status"] for run in runs] == ["running", "queued", "queued"]
    response = await h.api("PUT", "/admin/limits", json={"max_concurrent_executions": 3})
    assert response.status_code == 200
    assert response.json()["active_executions"] == 3 and response.json()["queued_executions"] == 0
    for run in runs:
        assert (await h.service.engine.get_execution(run["execution_id"])).status == "running"
    gates.open("n1")
    for run in runs:
        await h.wait_status(run["execution_id"], "completed")


async def test_lowering_max_parallel_nodes_live_limits_a_level(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates
) -> None:
    dag = {
        "dag_id": "wide",
        "nodes": {f"w{i}": {"agent_id": "test.gate", "params": {"gate": "w"}} for i in range(4)},
    }
    async with running_service(make_settings(sqlite_url), registry=make_registry(gates)) as h:
        await h.register(dag)
        response = await h.api("PUT", "/admin/limits", json={"max_parallel_nodes": 2})
        assert response.json()["max_parallel_nodes"] == 2
        run = await h.execute("wide")
        await gates.wait_started(2)
        trace = (await h.api("GET", f"/executions/{run['execution_id']}/trace")).json()
        statuses = sorted(t["status"] for t in trace["node_traces"].values())
        assert statuses == ["pending", "pending", "running", "running"]
        gates.open("w")
        await h.wait_status(run["execution_id"], "completed")
        assert len(gates.calls) == 4


async def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("GL_ORCHESTRATOR_MAX_PARALLEL_NODES", "5")
    monkeypatch.setenv("GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS", "25")
    monkeypatch.setenv("GL_ORCHESTRATOR_DATABASE_URL", sqlite_url)
    settings = load_settings()
    service = await OrchestratorService.open(settings, registry=make_registry())
    try:
        limits = await service.limits_json()
        assert limits["max_parallel_nodes"] == 5 and limits["max_concurrent_executions"] == 25
    finally:
        await service.shutdown(grace_seconds=0)


# -- ownership --------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_running_run_holds_its_redis_lock_and_releases_it(
    _no_pending_tasks: None, sqlite_url: str, redis_url: str, gates: Gates
) -> None:
    settings = make_settings(sqlite_url, redis_url=redis_url, pod_name="pod-a")
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        async with running_service(settings, registry=make_registry(gates)) as h:
            await h.register(gate_dag("locked"))
            run = await h.execute("locked")
            value = json.loads(await raw.get(lock_key(run["execution_id"])))
            assert value["owner"] == "replica-test" and value["pod"] == "pod-a"
            assert value["token"] >= 1 and 0 < await raw.pttl(lock_key(run["execution_id"])) <= 5000
            await h.service.heartbeat_once()
            assert json.loads(await raw.get("gl:orchestrator:heartbeat:replica-test"))["pod"] == "pod-a"
            await raw.pexpire(lock_key(run["execution_id"]), 1500)
            assert await h.service.renew_once() == []
            assert await raw.pttl(lock_key(run["execution_id"])) > 1500
            gates.open("n1")
            await h.wait_status(run["execution_id"], "completed")
            async with asyncio.timeout(5):
                # released by the run's supervisor right after the final status is written
                while await raw.exists(lock_key(run["execution_id"])):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
    finally:
        await raw.aclose()


async def test_renewal_goes_in_batches_and_the_loop_serves_other_work_between_them(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownership_module, "RENEW_BATCH", 2)
    async with running_service(make_settings(sqlite_url), registry=make_registry(gates)) as h:
        await h.register(gate_dag("batched"))
        ids = [(await h.execute("batched"))["execution_id"] for _ in range(5)]
        await gates.wait_started(5)
        renewer = asyncio.current_task()
        events: list[int | str] = []
        renew_many = h.service.locks.renew_many

        async def recorded(leases: Any, ttl: float) -> list[bool]:
            if asyncio.current_task() is renewer:  # not the maintenance loop's own renewal
                events.append(len(leases))
            return await renew_many(leases, ttl)

        async def other_work() -> None:
            events.append("other")

        monkeypatch.setattr(h.service.locks, "renew_many", recorded)
        probe = asyncio.get_running_loop().create_task(other_work())  # runs once the renewal yields
        assert await h.service.renew_once() == []
        await probe
        assert events == [2, "other", 2, 1]
        gates.open("n1")
        for execution_id in ids:
            await h.wait_status(execution_id, "completed")


@pytest.mark.redis
async def test_lost_lock_self_fences_run_as_interrupted_and_resumable(
    _no_pending_tasks: None, sqlite_url: str, redis_url: str, gates: Gates
) -> None:
    settings = make_settings(sqlite_url, redis_url=redis_url)
    raw = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        async with running_service(settings, registry=make_registry(gates)) as h:
            await h.register(chain_dag("fence", "builtin.echo", "test.gate"))
            run = await h.execute("fence")
            await gates.wait_started(1)
            # It expired while Redis was partitioned, and another replica took it meanwhile.
            taken = {"owner": "replica-other", "pod": "other", "token": 10**9, "acquired_at": "now"}
            await raw.set(lock_key(run["execution_id"]), json.dumps(taken), px=60_000)
            assert await h.service.renew_once() == [run["execution_id"]]
            record = await h.wait_status(run["execution_id"], "interrupted")
            exposition = (await h.client.get("/metrics")).text
            assert 'gl_orchestrator_self_fenced_executions_total{reason="lost"} 1.0' in exposition
            assert "ownership lock" in (record["error"] or "")
            assert h.service.owned_executions() == []
            gates.open("n2")
            await raw.delete(lock_key(run["execution_id"]))  # the other replica let it go
            resumed = (await h.api("POST", f"/executions/{run['execution_id']}/resume")).json()
            assert resumed["nodes_skipped"] == ["n1"] and resumed["nodes_remaining"] == ["n2"]
            await h.wait_status(run["execution_id"], "completed")
    finally:
        await raw.aclose()


@pytest.mark.redis
async def test_an_expired_lock_nobody_took_is_set_again_and_the_run_goes_on(
    _no_pending_tasks: None, sqlite_url: str, redis_url: str, gates: Gates
) -> None:
    settings = make_settings(sqlite_url, redis_url=redis_url)
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        async with running_service(settings, registry=make_registry(gates)) as h:
            await h.register(gate_dag("slowtick"))
            run = await h.execute("slowtick")
            key = lock_key(run["execution_id"])
            before = json.loads(await raw.get(key))
            await raw.delete(key)  # the renewal came too late: expired, but nobody took the run
            assert await h.service.renew_once() == []
            assert json.loads(await raw.get(key)) == before  # the same lease, same token
            assert await raw.pttl(key) > 4000
            gates.open("n1")
            await h.wait_status(run["execution_id"], "completed")
            exposition = (await h.client.get("/metrics")).text
            assert "gl_orchestrator_self_fenced_executions_total{" not in exposition
    finally:
        await raw.aclose()


async def test_each_maintenance_loop_round_is_timed_in_a_histogram(h: Harness) -> None:
    await h.service.tick_once()
    await h.service.lease_tick_once()
    exposition = (await h.client.get("/metrics")).text
    assert 'gl_orchestrator_maintenance_tick_seconds_count{part="leases"} 2.0' in exposition
    assert 'gl_orchestrator_maintenance_tick_seconds_count{part="runs"} 1.0' in exposition


async def test_unreachable_lock_backend_fences_after_a_full_ttl(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates
) -> None:
    class FlakyLocks(InProcessLockBackend):
        down = False

        async def renew(self, lease: Any, ttl_seconds: float) -> bool:
            if self.down:
                raise LockBackendUnavailable("redis timeout")
            return await super().renew(lease, ttl_seconds)

    now = [100.0]
    space = InProcessLockSpace(clock=lambda: now[0])
    locks = FlakyLocks("replica-test", "pod", space)
    settings = make_settings(sqlite_url, lock_ttl_seconds=5.0)
    async with running_service(
        settings, registry=make_registry(gates), locks=locks, monotonic=lambda: now[0]
    ) as h:
        await h.register(gate_dag("flaky"))
        run = await h.execute("flaky")
        await gates.wait_started(1)
        locks.down = True
        now[0] += 3
        assert await h.service.renew_once() == []  # still within the TTL: keep running
        assert (await h.service.engine.get_execution(run["execution_id"])).status == "running"
        now[0] += 3
        assert await h.service.renew_once() == [run["execution_id"]]
        await h.wait_status(run["execution_id"], "interrupted")


async def test_takeover_resumes_orphaned_run_without_rerunning_completed_nodes(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates
) -> None:
    now = [100.0]
    space = InProcessLockSpace(clock=lambda: now[0])
    dag = chain_dag("orphan", "builtin.echo", "test.gate", "builtin.echo")
    registry_a, registry_b = make_registry(gates), make_registry(gates)
    settings_a = make_settings(sqlite_url, replica_id="replica-a")
    settings_b = make_settings(sqlite_url, replica_id="replica-b")
    async with (
        running_service(
            settings_a, registry=registry_a, locks=InProcessLockBackend("replica-a", "a", space)
        ) as a,
        running_service(
            settings_b, registry=registry_b, locks=InProcessLockBackend("replica-b", "b", space)
        ) as b,
    ):
        await a.register(dag)
        run = await a.execute("orphan")
        execution_id = run["execution_id"]
        await gates.wait_started(1)
        assert await b.service.takeover_once() == []  # A holds the lock: nothing to take
        # Replica A "dies": its run stops without writing anything and its lock TTL runs out.
        await a.service.engine.detach(execution_id)
        a.service.ownership.owned.clear()
        now[0] += 10
        gates.open("n2")
        assert await b.service.takeover_once() == [execution_id]
        record = await b.wait_status(execution_id, "completed")
        assert record["owner"] == "replica-b"
        trace = (await b.api("GET", f"/executions/{execution_id}/trace")).json()
        assert trace["node_traces"]["n1"]["attempt_count"] == 1
        assert [call[1] for call in gates.calls] == ["n2", "n2"]  # n2 was not finished: run again
        provenance = (await b.api("GET", f"/executions/{execution_id}/provenance")).json()
        assert provenance["chain_valid"] is True
        logs = (await b.api("GET", f"/executions/{execution_id}/logs")).json()["lines"]
        assert any("took over" in line["message"] for line in logs)


# -- shutdown ---------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_shutdown_interrupts_unfinished_runs_releases_locks_and_refuses_new_work(
    _no_pending_tasks: None, sqlite_url: str, redis_url: str, gates: Gates
) -> None:
    settings = make_settings(sqlite_url, redis_url=redis_url, max_concurrent_executions=1)
    service = await OrchestratorService.open(settings, registry=make_registry(gates))
    raw = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        await service.engine.register_dag(gate_dag("slow", gate="slow"))
        await service.engine.register_dag(gate_dag("quick", gate="quick"))
        slow = await service.submit("slow")
        await gates.wait_started(1)
        # A run that finishes inside the grace period completes normally.
        limits = await service.set_limits(max_concurrent_executions=2)
        assert limits["max_concurrent_executions"] == 2
        quick = await service.submit("quick")
        await gates.wait_started(2)
        asyncio.get_running_loop().call_later(0.1, gates.open, "quick")
        interrupted = await service.shutdown(grace_seconds=1.0)
        assert interrupted == [slow.execution_id]
        with pytest.raises(ServiceUnavailable):
            await service.submit("quick")
        assert not await raw.exists(lock_key(slow.execution_id))
        assert not await raw.exists(lock_key(quick.execution_id))
        assert not await raw.exists("gl:orchestrator:heartbeat:replica-test")
    finally:
        await raw.aclose()
        gates.open("slow")
    reopened = await OrchestratorService.open(settings, registry=make_registry(gates))
    try:
        assert (await reopened.engine.get_execution(slow.execution_id)).status == "interrupted"
        assert (await reopened.engine.get_execution(quick.execution_id)).status == "completed"
    finally:
        await reopened.shutdown(grace_seconds=0)


async def test_shutdown_lets_an_ended_runs_admission_pass_end_before_closing_the_store(
    _no_pending_tasks: None, sqlite_url: str, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its run ends, a supervisor leaves the owned runs and admits the next queued run (a store
    transaction). Shutdown must end that pass before it closes the store: a connection returned to the
    disposed pool is never closed (CI saw it as an unclosed aiosqlite connection in a later test)."""
    service = await OrchestratorService.open(make_settings(sqlite_url), registry=make_registry(gates))
    # Shutdown waits at most db_timeout_seconds for supervisors; short here, but only once the store is
    # open (its migrations on a loaded machine may take longer than that).
    monkeypatch.setattr(service.settings, "db_timeout_seconds", 0.2)
    order: list[str] = []
    in_admission = asyncio.Event()

    async def hanging_admission_pass() -> None:
        in_admission.set()
        try:
            await asyncio.Event().wait()  # never ends by itself: shutdown must wait, then cancel it
        except asyncio.CancelledError:
            order.append("admission pass cancelled")
            raise

    close_store = service.engine.store.close

    async def recording_close() -> None:
        order.append("store closed")
        await close_store()

    monkeypatch.setattr(service.engine.store, "close", recording_close)
    try:
        await service.engine.register_dag(gate_dag("ends", gate="ends"))
        await service.submit("ends")
        await gates.wait_started(1)
        monkeypatch.setattr(service, "pump_soon", hanging_admission_pass)
        gates.open("ends")
        async with asyncio.timeout(5):
            await in_admission.wait()
    finally:
        await service.shutdown(grace_seconds=0)
    assert order == ["admission pass cancelled", "store closed"]


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        ("locks", "queued"),  # still taking the run's lock: left queued for another replica
        ("engine", "interrupted"),  # already claiming the run: it starts, then is interrupted
    ],
)
async def test_shutdown_during_an_admission_pass_leaves_the_run_queued_or_interrupted(
    _no_pending_tasks: None,
    sqlite_url: str,
    gates: Gates,
    monkeypatch: pytest.MonkeyPatch,
    held: str,
    expected: str,
) -> None:
    """SIGTERM while an admission pass is starting a queued run: the run must not slip past shutdown
    (started after shutdown looked at the owned runs, on a store about to close)."""
    service = await OrchestratorService.open(make_settings(sqlite_url), registry=make_registry(gates))
    starting, go_on, contended = asyncio.Event(), asyncio.Event(), asyncio.Event()
    target = service.locks if held == "locks" else service.engine
    name = "acquire" if held == "locks" else "start_execution"
    original = getattr(target, name)

    async def held_call(*args: Any, **kwargs: Any) -> Any:
        starting.set()
        await go_on.wait()
        return await original(*args, **kwargs)

    class ContendedLock(asyncio.Lock):
        async def acquire(self) -> bool:
            if self.locked():
                contended.set()
            return await super().acquire()

    monkeypatch.setattr(target, name, held_call)
    monkeypatch.setattr(service.admission, "lock", ContendedLock())
    await service.engine.register_dag(gate_dag("late", gate="late"))
    submitted = asyncio.create_task(service.submit("late"))
    async with asyncio.timeout(5):
        await starting.wait()
    stopping = asyncio.create_task(service.shutdown(grace_seconds=0))
    waiting = asyncio.create_task(contended.wait())
    # shutdown either waits for the admission pass (then let it finish) or has already finished
    await asyncio.wait([stopping, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    go_on.set()
    record, interrupted, _ = await asyncio.gather(submitted, stopping, waiting, return_exceptions=True)
    assert not isinstance(record, BaseException)
    assert interrupted == ([record.execution_id] if expected == "interrupted" else [])
    reopened = await OrchestratorService.open(make_settings(sqlite_url), registry=make_registry(gates))
    try:
        assert (await reopened.engine.get_execution(record.execution_id)).status == expected
        assert await reopened.locks.holder(record.execution_id) is None
    finally:
        await reopened.shutdown(grace_seconds=0)
        gates.open("late")


# -- HTTP agents through the engine -----------------------------------------------------------------


@pytest.fixture
async def agent_port(_no_pending_tasks: None) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    release = asyncio.Event()

    async def run(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"agent": request.match_info["agent_id"], **body})
        if request.match_info["agent_id"] == "remote-hang":
            await release.wait()
        if request.match_info["agent_id"] == "remote-flaky" and body["attempt"] == 1:
            return web.json_response({"error": "warming up"}, status=503)
        return web.json_response(
            {"output": {"agent": request.match_info["agent_id"], "attempt": body["attempt"]}}
        )

    app = web.Application()
    app.router.add_post("/{agent_id}/run", run)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, seen
    release.set()
    await runner.cleanup()


async def test_http_agents_run_nodes_retry_5xx_and_hanging_agent_times_out(
    sqlite_url: str, agent_port: tuple[int, list[dict[str, Any]]]
) -> None:
    port, seen = agent_port
    settings = make_settings(
        sqlite_url,
        agent_url_template=f"http://127.0.0.1:{port}/{{agent_id}}/run",
        http_agents=["remote-ok", "remote-flaky", "remote-hang"],
    )
    dag = {
        "dag_id": "remote",
        "nodes": {
            "intake": {"agent_id": "remote-ok", "params": {"rows": 3}},
            "calc": {
                "agent_id": "remote-flaky",
                "depends_on": ["intake"],
                "retry_policy": {"max_retries": 2, "strategy": "fixed", "base_delay": 0.01},
            },
            "report": {
                "agent_id": "remote-hang",
                "depends_on": ["calc"],
                "timeout_policy": {"timeout_seconds": 0.5, "on_timeout": "fail"},
            },
        },
    }
    async with running_service(settings) as h:
        kinds = {item["agent_id"]: item["kind"] for item in (await h.api("GET", "/agents")).json()["items"]}
        assert kinds["remote-ok"] == "http" and kinds["builtin.echo"] == "inprocess"
        await h.register(dag)
        run = await h.execute("remote", {"year": 2025})
        record = await h.wait_status(run["execution_id"], "failed")
        trace = (await h.api("GET", f"/executions/{run['execution_id']}/trace")).json()["node_traces"]
        assert trace["intake"]["status"] == "completed"
        assert trace["calc"]["status"] == "completed" and trace["calc"]["attempt_count"] == 2
        assert trace["report"]["status"] == "timed_out"
        assert record["error"]
        first = seen[0]
        assert first["agent"] == "remote-ok" and first["params"] == {"rows": 3}
        assert first["input_data"] == {"year": 2025} and first["deadline"] is None
        calc_call = [s for s in seen if s["agent"] == "remote-flaky"][-1]
        assert calc_call["upstream"] == {"intake": {"agent": "remote-ok", "attempt": 1}}
        hang_call = next(s for s in seen if s["agent"] == "remote-hang")
        assert hang_call["deadline"].endswith("Z")
        exposition = (await h.client.get("/metrics")).text
        assert (
            "gl_orchestrator_agent_call_duration_seconds_count"
            '{agent_id="remote-flaky",outcome="server_error"} 1.0' in exposition
        )
        assert 'gl_orchestrator_node_timeouts_total{node_id="report"} 1.0' in exposition


# -- spans ------------------------------------------------------------------------------------------


async def test_real_run_produces_execution_and_node_spans(_no_pending_tasks: None, sqlite_url: str) -> None:
    async with running_service(make_settings(sqlite_url)) as h:
        await h.register(chain_dag("traced", "builtin.echo", "builtin.echo"))
        run = await h.execute("traced")
        await h.wait_status(run["execution_id"], "completed")
        spans = h.spans.get_finished_spans()
    nodes = [s for s in spans if s.name == "dag.node"]
    executions = [s for s in spans if s.name == "dag.execution"]
    assert len(executions) == 1 and len(nodes) == 2
    assert {s.attributes["node_id"] for s in nodes if s.attributes} == {"n1", "n2"}
    for span in nodes:
        assert span.attributes is not None
        assert span.attributes["execution_id"] == run["execution_id"] and span.attributes["attempt"] == 1
        assert span.attributes["agent_id"] == "builtin.echo" and span.attributes["dag_id"] == "traced"
        assert span.parent is not None and span.parent.span_id == executions[0].context.span_id
    assert executions[0].resource.attributes["service.name"] == "orchestrator-service"
