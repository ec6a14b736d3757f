"""Runs another replica claimed, written straight into a store: many running runs at once, and the
running-node rows their owner would write. A helper module, not a test module."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator_core.dag import DagDefinition
from orchestrator_core.records import ExecutionOptions, ExecutionRecord
from orchestrator_core.store import Store
from orchestrator_core.store.schema import executions
from orchestrator_core.store.signals import RunningRow

T0 = datetime(2026, 3, 1, tzinfo=UTC)
OWNER = "replica-b"


async def running_runs(
    store: Store, count: int, *, owner: str = OWNER, token: int = 3, prefix: str = "run"
) -> list[str]:
    """`count` runs of DAG `wide` (one node `x`, `builtin.echo`) claimed by `owner` with `token`,
    inserted in one statement; their ids (`<prefix>-00000`, ...)."""
    dag = await store.dags.save(
        DagDefinition.from_document({"dag_id": "wide", "nodes": {"x": {"agent_id": "builtin.echo"}}})
    )
    rows: list[dict[str, Any]] = []
    for index in range(count):
        record = ExecutionRecord(
            execution_id=f"{prefix}-{index:05d}",
            dag_id=dag.dag_id,
            dag_version=dag.version,
            status="queued",
            input_data=None,
            options=ExecutionOptions(),
            created_at=T0,
        )
        rows.append(store.executions.insert_values(record, (owner, token)))
    async with store.db.transaction("insert runs") as conn:
        await conn.execute(executions.insert(), rows)
    return [row["execution_id"] for row in rows]


def running_row(execution_id: str, index: int, *, token: int = 3, dag_id: str = "wide") -> RunningRow:
    """The row the owner writes for node `x` of the run, started `index % 500` seconds after T0."""
    started = T0 + timedelta(seconds=index % 500)
    return RunningRow(execution_id, "x", dag_id, "builtin.echo", OWNER, token, 1, started)
