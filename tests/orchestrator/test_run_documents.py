"""A run without checkpoints stores its node traces and provenance chain as one run document (one
`run_documents` row) at its end, on SQLite and PostgreSQL: what it stores, how it reads back, how
tampering with it is detected, and how it continues across a resume and a schema upgrade."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import StoreError
from orchestrator_core.migrations import SCHEMA
from orchestrator_core.records import ExecutionOptions, ExecutionRecord, NodeTrace
from orchestrator_core.store import Store, WriteBatch
from orchestrator_core.store.schema import node_traces, provenance, run_documents
from tests.orchestrator.conftest import Harness, wait_until

DAG = {
    "dag_id": "doc",
    "nodes": {
        "a": {"agent_id": "test.record"},
        "b": {"agent_id": "test.record", "depends_on": ["a"]},
        "c": {"agent_id": "test.record", "depends_on": ["a"]},
        "d": {"agent_id": "test.record", "depends_on": ["b", "c"]},
    },
}


async def _count(harness: Harness, table: sa.Table, execution_id: str) -> int:
    async with harness.engine.store.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.execution_id == execution_id)
        return int((await conn.execute(query)).scalar_one())


async def _document(harness: Harness, execution_id: str) -> dict[str, Any]:
    async with harness.engine.store.engine.connect() as conn:
        text = (
            await conn.execute(
                sa.select(run_documents.c.provenance).where(run_documents.c.execution_id == execution_id)
            )
        ).scalar_one()
    return json.loads(text)  # type: ignore[no-any-return]


async def _rewrite_chain(
    harness: Harness, execution_id: str, change: Callable[[list[list[Any]]], None]
) -> None:
    document = await _document(harness, execution_id)
    change(document["rows"])
    async with harness.engine.store.engine.begin() as conn:
        await conn.execute(
            run_documents.update()
            .where(run_documents.c.execution_id == execution_id)
            .values(provenance=json.dumps(document))
        )


async def test_a_run_without_checkpoints_writes_one_document_and_no_node_rows(harness: Harness) -> None:
    record = await harness.run(DAG, {"year": 2025}, checkpoint_enabled=False)
    assert record.status == "completed"
    execution_id = record.execution_id
    assert await _count(harness, run_documents, execution_id) == 1
    assert await _count(harness, node_traces, execution_id) == 0
    assert await _count(harness, provenance, execution_id) == 0
    trace = await harness.engine.get_trace(execution_id)
    assert {n: t.status for n, t in trace.node_traces.items()} == dict.fromkeys("abcd", "completed")
    for t in trace.node_traces.values():
        assert t.started_at is not None and t.started_at.tzinfo is not None
        assert t.completed_at is not None and t.completed_at >= t.started_at
        assert t.input_hash is not None and len(t.input_hash) == 64
        assert t.attempt_count == 1 and t.agent_id == "test.record"
    assert [t.level for t in trace.node_traces.values()] == [0, 1, 1, 2]
    report = await harness.engine.get_provenance(execution_id)
    assert report.chain_valid, report.problems
    assert [(e.seq, e.node_id) for e in report.chain] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    # The same chain, byte for byte, as a run that stored rows (checkpoints on).
    with_rows = await harness.run(DAG, {"year": 2025})
    rows_report = await harness.engine.get_provenance(with_rows.execution_id)
    assert [e.hash for e in rows_report.chain] == [e.hash for e in report.chain]
    assert await _count(harness, run_documents, with_rows.execution_id) == 0


def _alter(rows: list[list[Any]]) -> None:
    rows[1][3] = "0" * 64  # output_hash of seq 2


def _remove(rows: list[list[Any]]) -> None:
    del rows[1]


def _reorder(rows: list[list[Any]]) -> None:
    rows[1][1:], rows[2][1:] = rows[2][1:], rows[1][1:]  # swap contents, keep each seq


def _truncate(rows: list[list[Any]]) -> None:
    del rows[-1]


@pytest.mark.parametrize(
    ("change", "found"),
    [(_alter, "altered"), (_remove, "removed"), (_reorder, "reordered"), (_truncate, "records removed")],
    ids=["altered", "removed", "reordered", "truncated"],
)
async def test_tampering_with_the_document_is_detected(
    harness: Harness, change: Callable[[list[list[Any]]], None], found: str
) -> None:
    record = await harness.run(DAG, {"year": 2025}, checkpoint_enabled=False)
    await _rewrite_chain(harness, record.execution_id, change)
    report = await harness.engine.get_provenance(record.execution_id)
    assert not report.chain_valid
    assert any(found in p for p in report.problems), report.problems


async def test_a_resumed_run_without_checkpoints_reruns_everything_and_continues_its_chain(
    harness: Harness,
) -> None:
    dag = {
        "dag_id": "doc-resume",
        "nodes": {"a": {"agent_id": "test.record"}, "gate": {"agent_id": "test.gate", "depends_on": ["a"]}},
    }
    await harness.engine.register_dag(dag)
    record = await harness.engine.execute("doc-resume", None, ExecutionOptions(checkpoint_enabled=False))
    await wait_until(lambda: harness.calls.count("gate") == 1)
    await harness.engine.cancel(record.execution_id)
    first = await harness.engine.get_provenance(record.execution_id)
    assert [e.node_id for e in first.chain] == ["a"]
    assert (await harness.engine.get_trace(record.execution_id)).node_traces["gate"].status == "cancelled"
    result = await harness.engine.resume(record.execution_id)
    assert result.nodes_skipped == [] and result.nodes_remaining == ["a", "gate"]
    async with asyncio.timeout(10):
        final = await harness.engine.wait(record.execution_id)
    assert final.status == "completed"
    assert await _count(harness, run_documents, record.execution_id) == 1  # replaced, not added
    report = await harness.engine.get_provenance(record.execution_id)
    assert report.chain_valid, report.problems
    assert [e.node_id for e in report.chain] == ["a", "a", "gate"]
    assert report.chain[0] == first.chain[0]
    trace = await harness.engine.get_trace(record.execution_id)
    assert {n: t.status for n, t in trace.node_traces.items()} == {"a": "completed", "gate": "completed"}


async def _store_with_a_running_execution(
    database_url: str, schema_version: int | None = None
) -> tuple[Store, ExecutionRecord]:
    store = await Store.open(database_url, schema_version=schema_version)
    await store.dags.save(DagDefinition.from_document({"dag_id": "d", "nodes": {"a": {"agent_id": "x"}}}))
    record = ExecutionRecord(
        execution_id="e1",
        dag_id="d",
        dag_version=1,
        status="queued",
        input_data=None,
        options=ExecutionOptions(checkpoint_enabled=False),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return store, await store.executions.create(record, claim=("me", None))


async def test_stamps_and_fields_read_back_exactly(database_url: str) -> None:
    store, record = await _store_with_a_running_execution(database_url)
    try:
        started = datetime(2026, 11, 28, 3, 4, 5, 123457, tzinfo=UTC)
        trace = NodeTrace(
            node_id="a",
            agent_id="x",
            status="failed",
            level=0,
            started_at=started,
            completed_at=datetime(2026, 11, 28, 3, 4, 6, 999999, tzinfo=UTC),
            duration_ms=1876.542,
            attempt_count=3,
            error='ValueError: caf\u00e9 "quoted"',
            input_hash="f" * 64,
            timeout_seconds=2.5,
        )
        batch = WriteBatch(traces=[trace], whole_run=True)
        await store.executions.finish("e1", record.fencing_token, status="failed", error="x", batch=batch)
        assert await store.runs.traces("e1") == {"a": trace}
        assert await store.runs.provenance("e1") == ([], None, 0)
    finally:
        await store.close()


async def test_a_document_in_an_unknown_format_is_a_store_error(database_url: str) -> None:
    store, record = await _store_with_a_running_execution(database_url)
    try:
        await store.executions.finish(
            "e1", record.fencing_token, status="completed", error=None, batch=WriteBatch(whole_run=True)
        )
        async with store.engine.begin() as conn:
            await conn.execute(
                run_documents.update().values(node_traces='{"fields": ["node_id"], "rows": []}')
            )
        with pytest.raises(StoreError, match=r"run document has fields \['node_id'\]"):
            await store.runs.traces("e1")
    finally:
        await store.close()


async def test_a_store_at_schema_2_is_upgraded_and_its_row_based_runs_still_read(database_url: str) -> None:
    old = await Store.open(database_url, schema_version=2)
    # The rows as a release at schema 2 wrote them (its tables: later columns did not exist yet).
    tables = SCHEMA.metadata(2).tables
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    trace = NodeTrace(node_id="a", agent_id="x", status="completed", attempt_count=1)
    try:
        assert await old.schema_version() == 2
        await old.dags.save(DagDefinition.from_document({"dag_id": "d", "nodes": {"a": {"agent_id": "x"}}}))
        async with old.db.transaction("write as schema 2") as conn:
            await conn.execute(
                tables["executions"]
                .insert()
                .values(
                    execution_id="e1",
                    dag_id="d",
                    dag_version=1,
                    status="running",
                    input_data="null",
                    options=json.dumps(ExecutionOptions().to_json()),
                    owner="me",
                    fencing_token=1,
                    created_at=stamp,
                    started_at=stamp,
                    updated_at=stamp,
                )
            )
            await conn.execute(
                tables["node_traces"]
                .insert()
                .values(
                    execution_id="e1", node_id="a", agent_id="x", status="completed", level=0, attempt_count=1
                )
            )
    finally:
        await old.close()
    store = await Store.open(database_url)
    try:
        assert await store.schema_version() == SCHEMA.head >= 3
        assert await store.runs.traces("e1") == {"a": trace}
    finally:
        await store.close()


async def test_a_sqlite_without_returning_is_refused_at_open(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SQLiteDialect_aiosqlite, "update_returning", False)  # what SQLite < 3.35 reports
    with pytest.raises(StoreError, match=r"SQLite 3\.35 or newer"):
        await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
