"""Run data: node traces, checkpoints and the provenance chain of an execution, in two layouts.

Where it sits: `store.executions` writes a `WriteBatch` with `write()` inside its fenced transactions
(`checkpoints.RunWriter` sends one per commit; the final write of a run sends the rest), and reads a
run's data for a resume with `read_run()` inside the transaction that claims it; the API's reads go
through `RunDataRepository`.

Layouts:

- Rows: a run with checkpoints writes one `node_traces` row per node, one `checkpoints` row per
  completed node and one `provenance` row per chain record, as it goes: one upsert statement per table
  (`batch_rows`, `store.bulk`), so a re-sent batch replaces its own rows (writes are idempotent).
- Document: a run without checkpoints writes nothing per node while it runs; its final transaction
  stores every trace and the whole chain as one `run_documents` row (`WriteBatch.whole_run`). Per
  column the document is `{"fields": [...], "rows": [[...], ...]}`; stamps and `duration_ms` are
  integer microseconds (exact, and integers encode several times faster than floats). The fields are
  the row tables' columns without `execution_id` (and the records' `created_at`).

A reader gets the same records from either layout. `batch_rows` is the one place that turns a batch
into rows: `write` sends them through SQLAlchemy's connection, `store.commits` through its own SQLite
connection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.clock import Clock
from gl_common.db import Database
from orchestrator_core.errors import ExecutionNotFound, StoreError
from orchestrator_core.hashing import canonical_json
from orchestrator_core.records import CheckpointRecord, NodeTrace, ProvenanceEntry
from orchestrator_core.store.bulk import StampConverter, stamp_converter, upsert_many
from orchestrator_core.store.database import upsert
from orchestrator_core.store.schema import (
    CHECKPOINT_COLUMNS,
    PROVENANCE_COLUMNS,
    TRACE_COLUMNS,
    checkpoints,
    executions,
    node_traces,
    provenance,
    run_documents,
)

_DOCUMENT_TRACE_FIELDS = TRACE_COLUMNS[1:]
_DOCUMENT_PROVENANCE_FIELDS = PROVENANCE_COLUMNS[1:-1]
_DOCUMENT_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TraceFields(Protocol):
    """What the store reads from a trace to write it: a `NodeTrace`, or the executor's live node state
    for the final write of a run (saves building one frozen record per node)."""

    @property
    def node_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def level(self) -> int: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def duration_ms(self) -> float | None: ...
    @property
    def attempt_count(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def input_hash(self) -> str | None: ...
    @property
    def timeout_seconds(self) -> float | None: ...


@dataclass(frozen=True)
class WriteBatch:
    """Writes of one execution that commit together (one transaction, fenced)."""

    traces: Sequence[TraceFields] = ()
    checkpoints: Sequence[CheckpointRecord] = ()
    provenance: Sequence[ProvenanceEntry] = ()
    # True: `traces` and `provenance` are the whole run (every node, the whole chain), as a run without
    # checkpoints writes them once at its end; stored as one `run_documents` row, replacing any earlier.
    whole_run: bool = False

    def __bool__(self) -> bool:
        return bool(self.traces or self.checkpoints or self.provenance or self.whole_run)

    def head(self) -> dict[str, Any]:
        """What the batch's chain records make of the chain's head on the execution row."""
        if not self.provenance:
            return {}
        # A whole run's chain is in seq order; queued records may not be.
        last = self.provenance[-1] if self.whole_run else max(self.provenance, key=lambda p: p.seq)
        return {"provenance_head": last.hash, "provenance_length": last.seq}


@dataclass(frozen=True)
class RunData:
    """What an execution has stored of its nodes: what a resume continues from."""

    checkpoints: list[CheckpointRecord]
    chain: list[ProvenanceEntry]
    traces: dict[str, NodeTrace]


class RunDataRepository:
    """Reads of run data, one transaction each (the writes belong to the fenced execution lifecycle)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def traces(self, execution_id: str) -> dict[str, NodeTrace]:
        """Stored node traces: the rows of a run with checkpoints, or the run document of one without."""
        async with self.db.transaction("get traces") as conn:
            document = await _read_document(conn, execution_id, run_documents.c.node_traces)
            if document is not None:
                return {trace.node_id: trace for trace in _document_traces(document)}
            return await _trace_rows(conn, execution_id)

    async def checkpoints(self, execution_id: str) -> list[CheckpointRecord]:
        async with self.db.transaction("load checkpoints") as conn:
            return await read_checkpoints(conn, execution_id)

    async def provenance(self, execution_id: str) -> tuple[list[ProvenanceEntry], str | None, int]:
        """The chain in `seq` order, plus the head hash and length recorded on the execution row."""
        async with self.db.transaction("get provenance") as conn:
            head = (
                await conn.execute(
                    sa.select(executions.c.provenance_head, executions.c.provenance_length).where(
                        executions.c.execution_id == execution_id
                    )
                )
            ).first()
            if head is None:
                raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
            document = await _read_document(conn, execution_id, run_documents.c.provenance)
            if document is not None:
                chain = _document_chain(document)
            else:
                chain = await _chain_rows(conn, execution_id)
        return chain, head.provenance_head, int(head.provenance_length)


async def read_run(conn: AsyncConnection, execution_id: str) -> RunData:
    """Everything stored of the run's nodes, inside the caller's transaction."""
    document = (
        await conn.execute(
            sa.select(run_documents.c.node_traces, run_documents.c.provenance).where(
                run_documents.c.execution_id == execution_id
            )
        )
    ).first()
    if document is not None:
        traces_list = _document_traces(json.loads(document.node_traces))
        traces = {trace.node_id: trace for trace in traces_list}
        chain = _document_chain(json.loads(document.provenance))
    else:
        traces = await _trace_rows(conn, execution_id)
        chain = await _chain_rows(conn, execution_id)
    return RunData(await read_checkpoints(conn, execution_id), chain, traces)


# What a batch turns into: per table, the columns and the rows to upsert (see `store.bulk`).
TableRows = tuple[sa.Table, Sequence[str], list[tuple[Any, ...]]]


async def write(conn: AsyncConnection, execution_id: str, batch: WriteBatch, clock: Clock) -> None:
    """The batch's rows or document (the caller's fencing UPDATE has already set `batch.head()`)."""
    if batch.whole_run:
        await _write_document(conn, execution_id, batch, clock)
        batch = WriteBatch(checkpoints=batch.checkpoints)
    for table, names, rows in batch_rows(execution_id, batch, stamp_converter(conn), clock.now()):
        await upsert_many(conn, table, names, rows)


def batch_rows(execution_id: str, batch: WriteBatch, stamp: StampConverter, now: datetime) -> list[TableRows]:
    """The rows of a batch in the row layout, one list per table that has any (a node's latest trace
    wins; `now` stamps the chain records), datetimes bound with `stamp`."""
    tables: list[TableRows] = []
    if batch.traces:
        traces = {t.node_id: t for t in batch.traces}  # the latest state of a node wins
        rows: list[tuple[Any, ...]] = [
            (
                execution_id,
                node_id,
                t.agent_id,
                t.status,
                t.level,
                stamp(t.started_at),
                stamp(t.completed_at),
                t.duration_ms,
                t.attempt_count,
                t.error,
                t.input_hash,
                t.timeout_seconds,
            )
            for node_id, t in traces.items()
        ]
        tables.append((node_traces, TRACE_COLUMNS, rows))
    if batch.checkpoints:
        latest = {cp.node_id: cp for cp in batch.checkpoints}
        rows = [
            (
                execution_id,
                cp.node_id,
                cp.status,
                "null" if cp.output is None else canonical_json(cp.output),
                cp.input_hash,
                cp.output_hash,
                stamp(cp.created_at),
            )
            for cp in latest.values()
        ]
        tables.append((checkpoints, CHECKPOINT_COLUMNS, rows))
    if batch.provenance:
        created = stamp(now)
        by_seq = {p.seq: p for p in batch.provenance}
        tables.append(
            (provenance, PROVENANCE_COLUMNS, [(execution_id, *p, created) for p in by_seq.values()])
        )
    return tables


async def _write_document(conn: AsyncConnection, execution_id: str, batch: WriteBatch, clock: Clock) -> None:
    """Store the run's traces and chain as one `run_documents` row (replacing the previous one)."""
    statement = upsert(conn, run_documents, [run_documents.c.execution_id], list(DOCUMENT_COLUMNS[1:]))
    row = document_row(execution_id, batch, clock.now())
    await conn.execute(statement, dict(zip(DOCUMENT_COLUMNS, row, strict=True)))


DOCUMENT_COLUMNS = ("execution_id", "node_traces", "provenance", "written_at")


def document_row(execution_id: str, batch: WriteBatch, written_at: Any) -> tuple[Any, ...]:
    """The `run_documents` row of a whole-run batch, in `DOCUMENT_COLUMNS` order (`written_at` as the
    caller binds it)."""
    traces = _encode_document(
        _DOCUMENT_TRACE_FIELDS,
        [
            (
                t.node_id,
                t.agent_id,
                t.status,
                t.level,
                _epoch_us(t.started_at),
                _epoch_us(t.completed_at),
                None if t.duration_ms is None else round(t.duration_ms * 1000),
                t.attempt_count,
                t.error,
                t.input_hash,
                t.timeout_seconds,
            )
            for t in batch.traces
        ],
    )
    chain = _encode_document(_DOCUMENT_PROVENANCE_FIELDS, [tuple(p) for p in batch.provenance])
    return execution_id, traces, chain, written_at


async def _trace_rows(conn: AsyncConnection, execution_id: str) -> dict[str, NodeTrace]:
    rows = (
        await conn.execute(
            node_traces.select()
            .where(node_traces.c.execution_id == execution_id)
            .order_by(node_traces.c.level, node_traces.c.node_id)
        )
    ).all()
    return {row.node_id: NodeTrace(**_without_key(row._mapping)) for row in rows}


async def read_checkpoints(conn: AsyncConnection, execution_id: str) -> list[CheckpointRecord]:
    rows = (
        await conn.execute(
            checkpoints.select()
            .where(checkpoints.c.execution_id == execution_id)
            .order_by(checkpoints.c.created_at, checkpoints.c.node_id)
        )
    ).all()
    return [CheckpointRecord(**{**row._mapping, "output": json.loads(row.output)}) for row in rows]


async def _chain_rows(conn: AsyncConnection, execution_id: str) -> list[ProvenanceEntry]:
    rows = (
        await conn.execute(
            sa.select(*(provenance.c[name] for name in _DOCUMENT_PROVENANCE_FIELDS))
            .where(provenance.c.execution_id == execution_id)
            .order_by(provenance.c.seq)
        )
    ).all()
    return [ProvenanceEntry._make(row) for row in rows]


def _without_key(mapping: Any) -> dict[str, Any]:
    return {name: value for name, value in mapping.items() if name != "execution_id"}


def _encode_document(fields: Sequence[str], rows: list[tuple[Any, ...]]) -> str:
    return _DOCUMENT_ENCODER.encode({"fields": fields, "rows": rows})


def _epoch_us(value: datetime | None) -> int | None:
    if value is None:
        return None
    # Exact: a timestamp of this era is a double with sub-microsecond spacing.
    return round((value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp() * 1_000_000)


def _stamp_from_epoch_us(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


async def _read_document(conn: AsyncConnection, execution_id: str, column: sa.Column[Any]) -> Any:
    """One column of the execution's run document, decoded; None when the run has none."""
    text = (
        await conn.execute(sa.select(column).where(run_documents.c.execution_id == execution_id))
    ).scalar()
    return None if text is None else json.loads(text)


def _document_rows(document: Any, fields: Sequence[str]) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or list(document.get("fields", ())) != list(fields):
        raise StoreError(
            f"run document has fields {document.get('fields') if isinstance(document, dict) else None}, "
            f"expected {list(fields)}"
        )
    return [dict(zip(fields, row, strict=True)) for row in document["rows"]]


def _document_traces(document: Any) -> list[NodeTrace]:
    traces = []
    for row in _document_rows(document, _DOCUMENT_TRACE_FIELDS):
        row["started_at"] = _stamp_from_epoch_us(row["started_at"])
        row["completed_at"] = _stamp_from_epoch_us(row["completed_at"])
        if row["duration_ms"] is not None:
            row["duration_ms"] /= 1000
        traces.append(NodeTrace(**row))
    traces.sort(key=lambda t: (t.level, t.node_id))
    return traces


def _document_chain(document: Any) -> list[ProvenanceEntry]:
    return [ProvenanceEntry(**row) for row in _document_rows(document, _DOCUMENT_PROVENANCE_FIELDS)]
