"""`store.commits`: a running execution's fenced batch commits, on real SQLite and PostgreSQL.

On a SQLite file the batch commits on the committer's own connection (in the event loop while the
write lock is free, else in its thread); these tests read the result back through the store's other
connections, or with a plain `sqlite3` connection of their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import (
    DagNotFound,
    ExecutionNotFound,
    InvalidState,
    StaleFencingToken,
    StoreUnavailable,
)
from orchestrator_core.provenance import ChainBuilder, genesis_hash
from orchestrator_core.records import CheckpointRecord, ExecutionOptions, ExecutionRecord, NodeTrace
from orchestrator_core.store import Store, WriteBatch

NOW = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url)
    try:
        await store.dags.save(
            DagDefinition.from_document({"dag_id": "d", "nodes": {"a": {"agent_id": "builtin.echo"}}})
        )
        record = ExecutionRecord("e1", "d", 1, "queued", None, ExecutionOptions(), NOW)
        await store.executions.create(record, claim=("r1", 3))
        yield store
    finally:
        await store.close()


def _batch(status: str = "completed") -> WriteBatch:
    trace = NodeTrace("a", "builtin.echo", status, 0, NOW, NOW, 1.5, 1, None, "in-hash", 10.0)
    checkpoint = CheckpointRecord("e1", "a", "completed", {"x": [1, 2]}, "in-hash", "out-hash", NOW)
    chain = ChainBuilder(genesis_hash("d", None), [])
    return WriteBatch([trace], [checkpoint], [chain.append("a", "in-hash", "out-hash", "completed")])


async def test_a_batch_stores_the_trace_checkpoint_and_chain_record_and_moves_the_chain_head(
    store: Store,
) -> None:
    batch = _batch()
    await store.commits.write_batch("e1", 3, batch)
    assert (await store.runs.traces("e1"))["a"] == batch.traces[0]
    assert await store.runs.checkpoints("e1") == list(batch.checkpoints)
    assert await store.runs.provenance("e1") == (list(batch.provenance), batch.provenance[0].hash, 1)


async def test_a_resent_batch_replaces_its_own_rows(store: Store) -> None:
    await store.commits.write_batch("e1", 3, _batch(status="running"))
    await store.commits.write_batch("e1", 3, _batch())
    await store.commits.write_batch("e1", 3, _batch())
    assert (await store.runs.traces("e1"))["a"].status == "completed"
    assert len(await store.runs.checkpoints("e1")) == 1
    assert len((await store.runs.provenance("e1"))[0]) == 1


@pytest.mark.parametrize(
    ("execution_id", "token", "stop", "refusal"),
    [
        ("e1", 2, False, StaleFencingToken),  # another owner claimed it since (token 3 now)
        ("e1", 3, True, InvalidState),  # cancelled elsewhere
        ("nope", 3, False, ExecutionNotFound),
    ],
)
async def test_a_fenced_out_batch_is_refused_and_writes_nothing(
    store: Store, execution_id: str, token: int, stop: bool, refusal: type[Exception]
) -> None:
    if stop:
        await store.executions.set_status("e1", status="cancelled", expected={"running"})
    with pytest.raises(refusal):
        await store.commits.write_batch(execution_id, token, _batch())
    assert await store.runs.traces("e1") == {}
    assert await store.runs.checkpoints("e1") == []
    assert await store.runs.provenance("e1") == ([], None, 0)


async def test_a_commit_is_durable_for_another_connection_when_it_returns(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    try:
        await store.dags.save(
            DagDefinition.from_document({"dag_id": "d", "nodes": {"a": {"agent_id": "builtin.echo"}}})
        )
        await store.executions.create(
            ExecutionRecord("e1", "d", 1, "queued", None, ExecutionOptions(), NOW), claim=("r1", 3)
        )
        await store.commits.write_batch("e1", 3, _batch())
        other = sqlite3.connect(sqlite_url.split(":///", 1)[1])
        try:
            stored = other.execute("SELECT node_id, output FROM checkpoints WHERE execution_id = 'e1'")
            assert stored.fetchall() == [("a", '{"x":[1,2]}')]
            head = other.execute("SELECT provenance_length FROM executions WHERE execution_id = 'e1'")
            assert head.fetchone() == (1,)
        finally:
            other.close()
    finally:
        await store.close()


def _new_run(dag: DagDefinition) -> ExecutionRecord:
    return ExecutionRecord("e2", dag.dag_id, dag.version, "queued", {"y": 2}, ExecutionOptions(), NOW)


WRITES: dict[str, Callable[[Store], Awaitable[object]]] = {
    "batch": lambda store: store.commits.write_batch("e1", 3, _batch()),
    "finish": lambda store: store.commits.finish("e1", 3, status="completed", error=None, batch=_batch()),
    "create": lambda store: store.commits.create_run("d", _new_run, claim=("r1", None)),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_write_waits_for_the_write_lock_within_the_timeout_then_gives_up(
    sqlite_url: str, write: str
) -> None:
    await (await Store.open(sqlite_url)).close()  # migrated first: alone, that can take over 0.3 s
    store = await Store.open(sqlite_url, timeout_seconds=0.3)
    try:
        await store.dags.save(
            DagDefinition.from_document({"dag_id": "d", "nodes": {"a": {"agent_id": "builtin.echo"}}})
        )
        await store.executions.create(
            ExecutionRecord("e1", "d", 1, "queued", None, ExecutionOptions(), NOW), claim=("r1", 3)
        )
        holder = sqlite3.connect(sqlite_url.split(":///", 1)[1], isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreUnavailable):  # locked past the busy timeout, or no answer in time
                await WRITES[write](store)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await WRITES[write](store)  # the lock is free again
        if write == "create":
            assert (await store.executions.get("e2")).status == "running"
        else:
            assert [c.node_id for c in await store.runs.checkpoints("e1")] == ["a"]
    finally:
        await store.close()


async def test_creating_a_run_claims_it_on_the_dags_latest_version(store: Store) -> None:
    await store.dags.save(
        DagDefinition.from_document({"dag_id": "d", "nodes": {"b": {"agent_id": "builtin.echo"}}})
    )
    claimed = await store.commits.create_run("d", _new_run, claim=("r9", 7))
    assert claimed.dag.version == 2 and list(claimed.dag.nodes) == ["b"] and claimed.data is None
    assert claimed.record == await store.executions.get("e2")
    assert (claimed.record.status, claimed.record.owner, claimed.record.fencing_token) == ("running", "r9", 7)
    assert claimed.record.dag_version == 2 and claimed.record.input_data == {"y": 2}
    assert claimed.record.started_at is not None and claimed.record.created_at == NOW
    with pytest.raises(DagNotFound):
        await store.commits.create_run("missing", _new_run, claim=("r9", None))


async def test_finishing_a_run_stores_its_end_and_its_run_document(store: Store) -> None:
    batch = _batch()
    whole = WriteBatch(batch.traces, (), batch.provenance, whole_run=True)
    final = await store.commits.finish("e1", 3, status="failed", error="boom", batch=whole)
    assert final == await store.executions.get("e1")
    assert (final.status, final.error, final.completed_at is not None) == ("failed", "boom", True)
    assert (await store.runs.traces("e1"))["a"] == batch.traces[0]
    assert await store.runs.provenance("e1") == (list(batch.provenance), batch.provenance[0].hash, 1)
    with pytest.raises(InvalidState):  # over: a second end is refused
        await store.commits.finish("e1", 3, status="completed", error=None, batch=WriteBatch())


async def test_a_closed_store_refuses_a_batch(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.commits.write_batch("e1", 3, _batch())
