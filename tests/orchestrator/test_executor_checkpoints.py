"""Checkpoint commits: shared by the nodes that finish together, each node waiting for its own, and a
save that fails is retried with backoff, counted, and blocks progress until it lands.

The failures are real: another connection holds the database's write lock (SQLite `BEGIN EXCLUSIVE`)
or an exclusive lock on the checkpoints table (PostgreSQL `LOCK TABLE`), so the store's writes wait or
time out; or a trigger refuses checkpoint rows, so the commit fails inside its transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from orchestrator_core.agents import AgentContext
from orchestrator_core.engine import Engine
from orchestrator_core.events import CheckpointEvent, LogEvent, RecordingObserver
from orchestrator_core.executor import Executor
from orchestrator_core.records import ExecutionRecord
from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.store import Store
from tests.orchestrator.conftest import Calls, FakeClock, Harness, make_registry, wait_until


async def start_at_gate(engine: Engine, calls: Calls) -> tuple[ExecutionRecord, Executor]:
    """Run a (`test.gate`) -> b until a is called and every write queued so far is committed."""
    await engine.register_dag(
        {
            "dag_id": "cp",
            "nodes": {
                "a": {"agent_id": "test.gate"},
                "b": {"agent_id": "test.record", "depends_on": ["a"]},
            },
        }
    )
    record = await engine.execute("cp")
    executor = engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: calls.count("a") == 1)
    await executor.writer.flush()
    return record, executor


def save_errors(observer: RecordingObserver) -> list[CheckpointEvent]:
    return [e for e in observer.of_type(CheckpointEvent) if e.status == "error"]


def held_agent(harness: Harness, node_ids: str) -> dict[str, asyncio.Event]:
    """Register `test.held`: the nodes named return (their id) once their event is set."""
    events = {node_id: asyncio.Event() for node_id in node_ids}

    async def held(ctx: AgentContext) -> str:
        harness.calls.entries.append((ctx.agent_id, ctx.node_id, ctx.attempt))
        await events[ctx.node_id].wait()
        return ctx.node_id

    harness.engine.registry.register("test.held", held)
    return events


def commits(harness: Harness, execution_id: str) -> list[int]:
    """Checkpoints per successful commit of the run, in order."""
    events = harness.observer.of_type(CheckpointEvent)
    return [e.nodes for e in events if e.execution_id == execution_id and e.status == "ok"]


@asynccontextmanager
async def database_write_lock(database_url: str) -> AsyncIterator[None]:
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        conn = sqlite3.connect(path, timeout=5, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn, timeout=5)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()
            await conn.close()


async def test_failed_checkpoint_save_is_retried_counted_and_blocks_progress(database_url: str) -> None:
    calls = Calls()
    observer = RecordingObserver()
    # Migrate first: on a loaded machine the migrations alone can take longer than the 0.3 s below.
    await (await Store.open(database_url)).close()
    settings = OrchestratorSettings(
        database_url=database_url,
        db_timeout_seconds=0.3,  # a blocked write gives up quickly (and is retried)
        checkpoint_retry_base_delay=0.01,
        checkpoint_retry_max_delay=0.02,
    )
    engine = await Engine.open(settings, registry=make_registry(calls), observer=observer, clock=FakeClock())
    try:
        record, executor = await start_at_gate(engine, calls)

        def errors() -> list[CheckpointEvent]:
            return save_errors(observer)

        release: Callable[[], None] = calls.contexts[-1].state["release"].set
        async with database_write_lock(database_url):
            release()
            await wait_until(lambda: len(errors()) >= 2, within=20)
            # a's result is not durable yet, so the run has not advanced
            assert calls.count("b") == 0
            assert executor.states["b"].status == "pending"
        async with asyncio.timeout(20):
            final = await engine.wait(record.execution_id)
        assert final.status == "completed"
        assert calls.count("a") == 1 and calls.count("b") == 1
        assert [c.node_id for c in await engine.list_checkpoints(record.execution_id)] == ["a", "b"]
        assert errors()[0].operation == "save" and errors()[0].execution_id == record.execution_id
        assert any(e.status == "ok" for e in observer.of_type(CheckpointEvent))
        assert any("checkpoint save failed" in e.message for e in observer.of_type(LogEvent))
    finally:
        await engine.close()


async def test_nodes_that_finish_together_share_one_commit(harness: Harness) -> None:
    events = held_agent(harness, "ab")
    release = asyncio.Event()
    events["a"], events["b"] = release, release  # both wake in the same turn of the loop
    await harness.engine.register_dag(
        {
            "dag_id": "together",
            "nodes": {
                "a": {"agent_id": "test.held"},
                "b": {"agent_id": "test.held"},
                "c": {"agent_id": "builtin.echo", "depends_on": ["a", "b"]},
            },
        }
    )
    record = await harness.engine.execute("together")
    await wait_until(lambda: harness.calls.count("a") == 1 and harness.calls.count("b") == 1)
    release.set()
    async with asyncio.timeout(20):
        assert (await harness.engine.wait(record.execution_id)).status == "completed"
    assert commits(harness, record.execution_id) == [2, 1]
    stored = await harness.engine.list_checkpoints(record.execution_id)
    assert sorted(c.node_id for c in stored) == ["a", "b", "c"]


async def test_nodes_finishing_during_a_commit_join_the_next_and_each_waits_for_its_own(
    harness: Harness,
) -> None:
    events = held_agent(harness, "abc")
    await harness.engine.register_dag(
        {
            "dag_id": "in-flight",
            "nodes": {
                **{n: {"agent_id": "test.held"} for n in "abc"},
                "d": {"agent_id": "builtin.echo", "depends_on": ["a", "b", "c"]},
            },
        }
    )
    record = await harness.engine.execute("in-flight")
    executor = harness.engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: all(harness.calls.count(n) == 1 for n in "abc"))
    await executor.writer.flush()  # the nodes' "running" traces are stored
    async with database_write_lock(harness.database_url):
        events["a"].set()  # a's commit starts and waits for the lock
        await wait_until(lambda: executor.states["a"].status == "completed")
        events["b"].set()
        events["c"].set()
        await wait_until(lambda: all(executor.states[n].status == "completed" for n in "bc"))
        # finished, but none of them is done before its checkpoint is committed: the level holds
        assert not {"a", "b", "c"} & executor.outputs.keys()
        assert executor.states["d"].status == "pending"
        assert commits(harness, record.execution_id) == []
    async with asyncio.timeout(20):
        assert (await harness.engine.wait(record.execution_id)).status == "completed"
    # a's commit, then b and c together (they finished while a's was in flight), then d
    assert commits(harness, record.execution_id) == [1, 2, 1]
    assert not save_errors(harness.observer)


async def test_a_commit_refused_inside_its_transaction_writes_nothing_and_blocks_the_level(
    sqlite_url: str,
) -> None:
    calls = Calls()
    observer = RecordingObserver()
    settings = OrchestratorSettings(
        database_url=sqlite_url, checkpoint_retry_base_delay=0.01, checkpoint_retry_max_delay=0.02
    )
    engine = await Engine.open(settings, registry=make_registry(calls), observer=observer, clock=FakeClock())
    db = sqlite3.connect(sqlite_url.split(":///", 1)[1], timeout=5, isolation_level=None)
    try:
        record, executor = await start_at_gate(engine, calls)
        db.execute(
            "CREATE TRIGGER refuse_checkpoints BEFORE INSERT ON checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'injected checkpoint failure'); END"
        )

        def errors() -> list[CheckpointEvent]:
            return save_errors(observer)

        calls.contexts[-1].state["release"].set()
        await wait_until(lambda: len(errors()) >= 2, within=20)
        assert "injected checkpoint failure" in (errors()[0].error or "")
        assert calls.count("b") == 0 and "a" not in executor.outputs
        # nothing of the refused transaction landed: not the checkpoint, not the trace it carried
        assert db.execute("SELECT count(*) FROM checkpoints").fetchone() == (0,)
        assert db.execute("SELECT status FROM node_traces WHERE node_id = 'a'").fetchone() == ("running",)
        db.execute("DROP TRIGGER refuse_checkpoints")
        async with asyncio.timeout(20):
            assert (await engine.wait(record.execution_id)).status == "completed"
        assert [c.node_id for c in await engine.list_checkpoints(record.execution_id)] == ["a", "b"]
    finally:
        db.close()
        await engine.close()


async def test_a_checkpoint_records_the_node_s_hashes_output_and_completion(harness: Harness) -> None:
    """Each completed node's checkpoint (chain and wide levels alike) holds its output, the input hash
    and completion time of its trace, and the hash of its output, as its provenance record does."""
    dag = {
        "dag_id": "cp-fields",
        "nodes": {
            "a": {"agent_id": "test.record", "params": {"value": 1}},
            "b": {"agent_id": "test.record", "depends_on": ["a"], "params": {"value": 2}},
            "c": {"agent_id": "test.record", "depends_on": ["a"], "params": {"value": 3}},
        },
    }
    record = await harness.run(dag)
    assert record.status == "completed"
    checkpoints = {cp.node_id: cp for cp in await harness.engine.list_checkpoints(record.execution_id)}
    traces = (await harness.engine.get_trace(record.execution_id)).node_traces
    chain = {
        entry.node_id: entry for entry in (await harness.engine.get_provenance(record.execution_id)).chain
    }
    assert sorted(checkpoints) == ["a", "b", "c"]
    for node_id, cp in checkpoints.items():
        assert (cp.execution_id, cp.status) == (record.execution_id, "completed")
        assert cp.output["node"] == node_id
        assert cp.input_hash == traces[node_id].input_hash == chain[node_id].input_hash
        assert cp.output_hash == chain[node_id].output_hash != cp.input_hash
        assert cp.created_at == traces[node_id].completed_at
