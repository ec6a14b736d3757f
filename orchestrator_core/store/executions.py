"""The execution lifecycle: create, claim, fence, write, finish; reads of execution records.

Where it sits: `engine.Engine` creates and claims runs here (`claim_run` also reads, in the same
transaction, the DAG version and the run data a resume continues from) and stops runs nobody here
executes (`set_status`); `checkpoints.RunWriter` sends each commit of a running execution through
`write_batch`; the executor's last transaction is `finish`. Rows of run data are written by
`store.rundata.write` inside these transactions. The API's filtered, keyset-paginated listing is
`store.listing`; `list` here is the engine's own bounded read (newest first).

Fencing: every write that belongs to a running execution carries the fencing token it was claimed
with. Its transaction starts with `UPDATE executions ... WHERE execution_id = :id AND fencing_token =
:token AND status = 'running'`, which also takes the row lock (PostgreSQL) or the database write lock
(SQLite) for the rest of the transaction; if no row matches, nothing is written and `StaleFencingToken`
(another owner claimed it) or `InvalidState` (cancelled or finished elsewhere) is raised. A claim only
accepts a token higher than the stored one (or issues the next one itself when the caller has no
external fencing counter). Reads that decide a write (`claim`, `set_status`) lock the row first, with
the same kind of UPDATE, so that the read-modify-write is atomic on both databases.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.clock import Clock
from gl_common.db import Database
from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import ExecutionNotFound, InvalidState, StaleFencingToken
from orchestrator_core.hashing import canonical_json
from orchestrator_core.records import CheckpointRecord, ExecutionOptions, ExecutionRecord, NodeTrace
from orchestrator_core.store import rundata
from orchestrator_core.store.dags import DagRepository
from orchestrator_core.store.rundata import RunData, WriteBatch
from orchestrator_core.store.schema import executions

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "interrupted"})

# Which DAG version a resumed run continues on, given its own version and the latest one.
ResumeDag = Callable[[DagDefinition, DagDefinition], DagDefinition]


@dataclass(frozen=True)
class RunHead:
    """The few columns admission, takeover and reconciliation decide on (no input, no options)."""

    execution_id: str
    dag_id: str
    status: str
    owner: str | None
    fencing_token: int
    created_at: datetime
    error: str | None


_HEAD_COLUMNS = (
    executions.c.execution_id,
    executions.c.dag_id,
    executions.c.status,
    executions.c.owner,
    executions.c.fencing_token,
    executions.c.created_at,
    executions.c.error,
)
# Ids per statement of `heads` (far below SQLite's and PostgreSQL's bound-parameter limits).
_IDS_PER_STATEMENT = 900


def _head(row: Any) -> RunHead:
    return RunHead(
        row.execution_id,
        row.dag_id,
        row.status,
        row.owner,
        int(row.fencing_token),
        row.created_at,
        row.error,
    )


@dataclass(frozen=True)
class ClaimedRun:
    """A run claimed by this replica: its record as claimed, the DAG version it runs, and (for a run
    that had started before) what it continues from."""

    record: ExecutionRecord
    dag: DagDefinition
    data: RunData | None


class ExecutionRepository:
    """Execution records and their lifecycle, one transaction per call."""

    def __init__(self, db: Database, clock: Clock, dags: DagRepository) -> None:
        self.db = db
        self.clock = clock
        self.dags = dags

    # -- creating and claiming ---------------------------------------------------------------------

    async def create(
        self, record: ExecutionRecord, *, claim: tuple[str | None, int | None] | None = None
    ) -> ExecutionRecord:
        """Insert a new execution (normally `queued`).

        With `claim=(owner, token)` the new row is claimed in the same transaction, exactly as
        `claim(..., allowed_statuses={"queued"})` would right after the insert (status `running`,
        `owner`, fencing token `token` or 1, started now), and the stored row is returned: one
        transaction instead of two for a run that starts at once.
        """
        async with self.db.transaction("create execution") as conn:
            return await self._insert(conn, record, claim)

    async def create_run(
        self,
        dag_id: str,
        build: Callable[[DagDefinition], ExecutionRecord],
        *,
        claim: tuple[str | None, int | None] | None = None,
    ) -> ClaimedRun:
        """`create` of the record that `build` makes for the DAG's latest version, read in the same
        transaction (`DagNotFound` for an unknown DAG): one round trip from a DAG id to a new run."""
        async with self.db.transaction("create execution") as conn:
            dag = await self.dags.read_in(conn, dag_id)
            record = await self._insert(conn, build(dag), claim)
        return ClaimedRun(record, dag, None)

    async def _insert(
        self, conn: AsyncConnection, record: ExecutionRecord, claim: tuple[str | None, int | None] | None
    ) -> ExecutionRecord:
        values = self.insert_values(record, claim)
        statement = executions.insert().values(**values)
        if claim is None:
            await conn.execute(statement)
            return record
        return execution_record((await conn.execute(statement.returning(*executions.c))).one())  # as stored

    def insert_values(
        self, record: ExecutionRecord, claim: tuple[str | None, int | None] | None
    ) -> dict[str, Any]:
        """The columns of a new execution's row (claimed as `create` describes with `claim`)."""
        values: dict[str, Any] = {
            "execution_id": record.execution_id,
            "dag_id": record.dag_id,
            "dag_version": record.dag_version,
            "status": record.status,
            "input_data": canonical_json(record.input_data),
            "options": canonical_json(record.options.to_json()),
            "owner": record.owner,
            "fencing_token": record.fencing_token,
            "created_at": record.created_at,
            "started_at": record.started_at,
            "completed_at": record.completed_at,
            "updated_at": record.created_at,
            "timeout_seconds": record.timeout_seconds,
            "error": record.error,
            "queued_at": record.queued_at or record.created_at,
        }
        if claim is None:
            return values
        if record.status != "queued":
            raise InvalidState(f"execution {record.execution_id} is {record.status}")
        owner, token = claim
        values.update(self._claim_values(record.execution_id, record.fencing_token, owner, token))
        return values

    async def claim(
        self,
        execution_id: str,
        *,
        owner: str | None,
        token: int | None,
        allowed_statuses: Iterable[str],
        dag_version: int | None = None,
    ) -> ExecutionRecord:
        """Make `owner` the runner of the execution: status `running`, a new fencing token, started now.

        `token` must be higher than the stored one (else `StaleFencingToken`); None issues stored + 1.
        The current status must be in `allowed_statuses` (else `InvalidState`).
        """
        allowed = set(allowed_statuses)
        async with self.db.transaction("claim execution") as conn:
            row = await _locked_row(conn, execution_id, self.clock.now(), allowed)
            values = self._claim_values(execution_id, int(row.fencing_token), owner, token)
            if dag_version is not None:
                values["dag_version"] = dag_version
            return await _update(conn, execution_id, values)

    async def claim_run(
        self,
        execution_id: str,
        *,
        owner: str | None,
        token: int | None,
        allowed: Collection[str],
        action: str,
        resume_dag: ResumeDag,
    ) -> ClaimedRun:
        """Claim the run (status in `allowed`, else `InvalidState` naming `action`) and read what it
        runs, in one transaction: the DAG version, and for a run that had started before (a resume)
        its checkpoints, chain and traces, on the version `resume_dag(own, latest)` picks."""
        async with self.db.transaction("claim execution") as conn:
            row = await _locked_row(conn, execution_id, self.clock.now(), None)
            if row.status not in allowed:
                raise InvalidState(
                    f"execution {execution_id} is {row.status}; only {sorted(allowed)} can {action}"
                )
            values = self._claim_values(execution_id, int(row.fencing_token), owner, token)
            data = None
            dag = await self.dags.read_in(conn, row.dag_id, row.dag_version)
            if row.status != "queued" or row.started_at is not None:  # it ran before: a resume
                dag = resume_dag(dag, await self.dags.read_in(conn, row.dag_id))
                data = await rundata.read_run(conn, execution_id)
                values["dag_version"] = dag.version
                values["resume_count"] = int(row.resume_count) + 1
            record = await _update(conn, execution_id, values)
        return ClaimedRun(record, dag, data)

    async def requeue(
        self, execution_id: str, *, allowed: Collection[str], resume_dag: ResumeDag
    ) -> tuple[DagDefinition, list[CheckpointRecord]]:
        """Put a stopped run (status in `allowed`) back in the admission queue (`queued`, checkpoints
        kept), in one transaction that also reads the DAG version its resume will run and its
        checkpoints."""
        now = self.clock.now()
        async with self.db.transaction("queue resume") as conn:
            row = await _locked_row(conn, execution_id, now, None)
            if row.status not in allowed:
                raise InvalidState(
                    f"execution {execution_id} is {row.status}; only {sorted(allowed)} can resume"
                )
            own = await self.dags.read_in(conn, row.dag_id, row.dag_version)
            dag = resume_dag(own, await self.dags.read_in(conn, row.dag_id))
            checkpoints = await rundata.read_checkpoints(conn, execution_id)
            values = {
                "status": "queued",
                "error": None,
                "completed_at": None,
                "updated_at": now,
                "queued_at": now,
                "cancel_requested_at": None,
            }
            await _update(conn, execution_id, values)
        return dag, checkpoints

    def _claim_values(
        self, execution_id: str, stored_token: int, owner: str | None, token: int | None
    ) -> dict[str, Any]:
        if token is None:
            token = stored_token + 1
        elif token <= stored_token:
            raise StaleFencingToken(
                f"fencing token {token} is not newer than {stored_token} of execution {execution_id}"
            )
        now = self.clock.now()
        return {
            "status": "running",
            "owner": owner,
            "fencing_token": token,
            "started_at": now,
            "completed_at": None,
            "error": None,
            "updated_at": now,
            "cancel_requested_at": None,  # a claimed run starts afresh: no cancel pending
        }

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, execution_id: str) -> ExecutionRecord:
        async with self.db.transaction("get execution") as conn:
            row = (
                await conn.execute(executions.select().where(executions.c.execution_id == execution_id))
            ).first()
        if row is None:
            raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
        return execution_record(row)

    async def list(
        self, *, status: str | None = None, dag_id: str | None = None, limit: int = 500
    ) -> list[ExecutionRecord]:
        """The newest executions first (at most `limit`), filtered by status and DAG."""
        query = (
            executions.select()
            .order_by(executions.c.created_at.desc(), executions.c.execution_id)
            .limit(limit)
        )
        if status is not None:
            query = query.where(executions.c.status == status)
        if dag_id is not None:
            query = query.where(executions.c.dag_id == dag_id)
        async with self.db.transaction("list executions") as conn:
            rows = (await conn.execute(query)).all()
        return [execution_record(row) for row in rows]

    # -- admission, takeover and reconciliation (service): index range scans, light rows ----------

    async def oldest_queued(
        self, limit: int, *, after: tuple[datetime, str] | None = None
    ) -> Sequence[RunHead]:
        """The oldest queued runs (FIFO: `created_at`, then id), at most `limit`, after the keyset
        position `after`; a range scan of `ix_executions_status_created`."""
        query = (
            sa.select(*_HEAD_COLUMNS)
            .where(executions.c.status == "queued")
            .order_by(executions.c.created_at, executions.c.execution_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                sa.tuple_(executions.c.created_at, executions.c.execution_id) > sa.tuple_(*after)
            )
        async with self.db.transaction("oldest queued executions") as conn:
            return [_head(row) for row in (await conn.execute(query)).all()]

    async def count_status(self, status: str) -> int:
        """The exact number of runs in `status` (from the index, however many)."""
        query = sa.select(sa.func.count()).select_from(executions).where(executions.c.status == status)
        async with self.db.transaction("count executions") as conn:
            return int((await conn.execute(query)).scalar_one())

    async def running_owners(self) -> dict[str | None, int]:
        """How many `running` runs each owner has (from `ix_executions_status_owner`)."""
        query = (
            sa.select(executions.c.owner, sa.func.count())
            .where(executions.c.status == "running")
            .group_by(executions.c.owner)
        )
        async with self.db.transaction("running executions by owner") as conn:
            return {row[0]: int(row[1]) for row in (await conn.execute(query)).all()}

    async def running_of(self, owners: Collection[str | None], limit: int) -> Sequence[RunHead]:
        """The `running` runs of `owners` (None: no owner), oldest first, at most `limit`."""
        named = [o for o in owners if o is not None]
        clauses = [executions.c.owner.in_(named)] if named else []
        if None in owners:
            clauses.append(executions.c.owner.is_(None))
        if not clauses:
            return []
        query = (
            sa.select(*_HEAD_COLUMNS)
            .where(executions.c.status == "running", sa.or_(*clauses))
            .order_by(executions.c.created_at, executions.c.execution_id)
            .limit(limit)
        )
        async with self.db.transaction("running executions of owners") as conn:
            return [_head(row) for row in (await conn.execute(query)).all()]

    async def heads(self, execution_ids: Collection[str], *, status: str | None = None) -> Sequence[RunHead]:
        """The runs among `execution_ids` (in `status`, when given): one transaction, by primary key."""
        ids = sorted(execution_ids)
        found: builtins.list[RunHead] = []
        if not ids:
            return found
        async with self.db.transaction("executions by id") as conn:
            for start in range(0, len(ids), _IDS_PER_STATEMENT):
                query = sa.select(*_HEAD_COLUMNS).where(
                    executions.c.execution_id.in_(ids[start : start + _IDS_PER_STATEMENT])
                )
                if status is not None:
                    query = query.where(executions.c.status == status)
                found += [_head(row) for row in (await conn.execute(query)).all()]
        return found

    # -- the stuck-state columns (issue 16) -------------------------------------------------------

    async def request_cancel(self, execution_id: str) -> None:
        """Record that a cancel was asked for (`cancel_requested_at`, the first request's time) on a
        run that may still be cancelled; nothing for a finished one (the cancel answers 409).
        `ExecutionNotFound` for an unknown id."""
        c = executions.c
        statement = (
            executions.update()
            .where(c.execution_id == execution_id, c.status.in_(("queued", "running", "interrupted")))
            .values(cancel_requested_at=sa.func.coalesce(c.cancel_requested_at, self.clock.now()))
        )
        async with self.db.transaction("request cancel") as conn:
            if (await conn.execute(statement)).rowcount == 0:
                found = await conn.execute(sa.select(c.status).where(c.execution_id == execution_id))
                if found.first() is None:
                    raise ExecutionNotFound(f"execution {execution_id!r} does not exist")

    async def record_failure(self, execution_id: str, node_id: str) -> None:
        """The run failed at `node_id`: its failure streak grows when its last failure was there too,
        else starts again at 1 (`failure_node`, `failure_streak`)."""
        c = executions.c
        statement = (
            executions.update()
            .where(c.execution_id == execution_id)
            .values(
                failure_streak=sa.case((c.failure_node == node_id, c.failure_streak + 1), else_=1),
                failure_node=node_id,
            )
        )
        async with self.db.transaction("record failure") as conn:
            await conn.execute(statement)

    # -- running and ending ------------------------------------------------------------------------

    async def write_batch(self, execution_id: str, token: int, batch: WriteBatch) -> None:
        """Fenced write of traces, checkpoints and provenance records in one transaction."""
        async with self.db.transaction("write batch") as conn:
            await _fence(conn, execution_id, token, self.clock.now(), returning=False, **batch.head())
            await rundata.write(conn, execution_id, batch, self.clock)

    async def finish(
        self,
        execution_id: str,
        token: int,
        *,
        status: str,
        error: str | None,
        batch: WriteBatch | None = None,
    ) -> ExecutionRecord:
        """Fenced: write the last batch and set a final (or `interrupted`) status."""
        now = self.clock.now()
        head = batch.head() if batch else {}
        async with self.db.transaction("finish execution") as conn:
            # The fencing UPDATE sets the final status and the chain's head itself, and returns the
            # row; the batch follows in the same transaction, so either all of it lands or none.
            row = await _fence(
                conn,
                execution_id,
                token,
                now,
                returning=True,
                status=status,
                error=error,
                completed_at=now,
                **head,
            )
            if batch:
                await rundata.write(conn, execution_id, batch, self.clock)
        assert row is not None  # a fenced-out UPDATE raised
        return execution_record(row)

    async def set_status(
        self,
        execution_id: str,
        *,
        status: str,
        expected: Iterable[str],
        error: str | None = None,
        traces: Sequence[NodeTrace] = (),
    ) -> ExecutionRecord:
        """Unfenced status change for runs nobody here is executing (cancel a queued or remote run,
        mark an orphan `interrupted`). `InvalidState` unless the current status is in `expected`."""
        now = self.clock.now()
        async with self.db.transaction("set execution status") as conn:
            await _locked_row(conn, execution_id, now, set(expected))
            completed = now if status in FINAL_STATUSES else None
            values = {"status": status, "error": error, "completed_at": completed, "updated_at": now}
            record = await _update(conn, execution_id, values)
            if traces:
                await rundata.write(conn, execution_id, WriteBatch(traces=traces), self.clock)
        return record


def execution_record(row: Any) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=row.execution_id,
        dag_id=row.dag_id,
        dag_version=row.dag_version,
        status=row.status,
        input_data=json.loads(row.input_data),
        options=ExecutionOptions.from_json(json.loads(row.options)),
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        timeout_seconds=row.timeout_seconds,
        error=row.error,
        owner=row.owner,
        fencing_token=int(row.fencing_token),
        queued_at=row.queued_at,
        cancel_requested_at=row.cancel_requested_at,
        resume_count=int(row.resume_count or 0),
        failure_node=row.failure_node,
        failure_streak=int(row.failure_streak or 0),
    )


async def _locked_row(
    conn: AsyncConnection, execution_id: str, now: datetime, allowed: set[str] | None
) -> sa.Row[Any]:
    """Lock the execution's row (row lock on PostgreSQL, write lock on SQLite) and read it, in one
    statement: `ExecutionNotFound`, or `InvalidState` unless its status is in `allowed`."""
    statement = (
        executions.update()
        .where(executions.c.execution_id == execution_id)
        .values(updated_at=now)
        .returning(*executions.c)
    )
    row = (await conn.execute(statement)).first()
    if row is None:
        raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
    if allowed is not None and row.status not in allowed:
        raise InvalidState(f"execution {execution_id} is {row.status}")
    return row


async def _update(conn: AsyncConnection, execution_id: str, values: dict[str, Any]) -> ExecutionRecord:
    """Set `values` on the (locked) row; the record as stored."""
    statement = (
        executions.update()
        .where(executions.c.execution_id == execution_id)
        .values(**values)
        .returning(*executions.c)
    )
    return execution_record((await conn.execute(statement)).one())


async def _fence(
    conn: AsyncConnection, execution_id: str, token: int, now: datetime, *, returning: bool, **values: Any
) -> sa.Row[Any] | None:
    """Check the fencing token (and take the row/write lock); `values` are set on the row too. With
    `returning`, the updated row comes back from the same statement (`UPDATE ... RETURNING`); without,
    nothing is read back (a commit of a running run does not need its row)."""
    statement = (
        executions.update()
        .where(
            executions.c.execution_id == execution_id,
            executions.c.fencing_token == token,
            executions.c.status == "running",
        )
        .values(updated_at=now, **values)
    )
    if returning:
        row = (await conn.execute(statement.returning(*executions.c))).first()
        if row is not None:
            return row
    elif (await conn.execute(statement)).rowcount == 1:
        return None
    current = (
        await conn.execute(
            sa.select(executions.c.fencing_token, executions.c.status).where(
                executions.c.execution_id == execution_id
            )
        )
    ).first()
    if current is None:
        raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
    if int(current.fencing_token) != token:
        raise StaleFencingToken(
            f"execution {execution_id} is now owned with fencing token {current.fencing_token}, not {token}"
        )
    raise InvalidState(f"execution {execution_id} is {current.status}")
