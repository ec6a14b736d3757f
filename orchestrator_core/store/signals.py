"""The stuck-run signals in the store: node-duration sketches and the running nodes of every replica.

Where it sits: `node_history.NodeHistory` merges the durations its replica saw into `node_durations`
and reads the sketches back (`merge_durations`, `durations`); `progress.RunSignals` writes its
replica's running nodes and the progress reports it took into `running_nodes` every maintenance tick
(`sync_running`) and reads them for the API (`page_running`, `running_of`, `running_node`). Tables of
migration 6 (`m0006_stuck_run_signals`).

- Sketches merge exactly (a `DurationSketch` adds counts), so replicas share a node's history by
  read-merge-write: one transaction inserts the missing rows, locks every row it merges into (an
  `UPDATE ... RETURNING`: the row lock on PostgreSQL, the write lock on SQLite), merges and writes
  back with `revision + 1`. Readers cache parsed sketches by revision.
- A running-node row is live while its execution is `running` under the row's fencing token: every
  read joins on that, so the rows a dead replica left behind are never answered; `prune_running`
  deletes them. Progress reports arrive as deltas (how many, the latest one), so reports taken by
  several replicas add up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.clock import Clock
from gl_common.db import Database
from gl_common.quantiles import DurationSketch
from orchestrator_core.store.schema import executions, node_durations, running_nodes

DurationKey = tuple[str, str, str]  # dag_id, node_id, agent_id
NodeKey = tuple[str, str]  # execution_id, node_id
_KEYS_PER_STATEMENT = 300
_DELTAS_PER_STATEMENT = 1000  # rows of one UPDATE ... FROM (VALUES ...): 6,000 parameters
_DELTA_FIELDS = {
    "e": running_nodes.c.execution_id.type,
    "n": running_nodes.c.node_id.type,
    "reports": running_nodes.c.progress_reports.type,
    "at": running_nodes.c.last_progress_at.type,
    "message": running_nodes.c.progress_message.type,
    "fraction": running_nodes.c.progress_fraction.type,
}  # tuples per IN (...) (3 parameters each: far below the drivers' limits)
_OWNER_COLUMNS = ("dag_id", "agent_id", "owner", "fencing_token", "attempt", "started_at", "updated_at")
_PROGRESS_COLUMNS = ("last_progress_at", "progress_message", "progress_fraction")


@dataclass(frozen=True)
class StoredSketch:
    """A node's history as stored: its key, its revision and the sketch's JSON."""

    key: DurationKey
    revision: int
    sketch: str


@dataclass(frozen=True)
class RunningRow:
    """What the run's owner writes of one running node."""

    execution_id: str
    node_id: str
    dag_id: str
    agent_id: str
    owner: str | None
    fencing_token: int
    attempt: int
    started_at: datetime


@dataclass(frozen=True)
class ProgressDelta:
    """Progress reports one replica took for a node since its last flush: how many, and the last one."""

    execution_id: str
    node_id: str
    reports: int
    at: datetime
    message: str | None
    fraction: float | None

    def then(self, later: ProgressDelta) -> ProgressDelta:
        """This delta followed by `later` (same node)."""
        last = later if later.at >= self.at else self
        return ProgressDelta(
            self.execution_id,
            self.node_id,
            self.reports + later.reports,
            last.at,
            last.message,
            last.fraction,
        )


@dataclass(frozen=True)
class RunningNode:
    """A live running node as readers get it."""

    execution_id: str
    dag_id: str
    node_id: str
    agent_id: str
    owner: str | None
    attempt: int
    started_at: datetime
    last_progress_at: datetime | None
    progress_message: str | None
    progress_fraction: float | None
    progress_reports: int


@dataclass(frozen=True)
class RunningFilter:
    dag_id: str | None = None
    started_before: datetime | None = None


@dataclass(frozen=True)
class RunningPosition:
    """Where a page of running nodes ended (the next starts after it)."""

    at: datetime
    execution_id: str
    node_id: str


@dataclass(frozen=True)
class RunningPage:
    nodes: list[RunningNode]
    next: RunningPosition | None
    total: int


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _KEYS_PER_STATEMENT):
        yield items[start : start + _KEYS_PER_STATEMENT]


_DURATION_KEY = sa.tuple_(node_durations.c.dag_id, node_durations.c.node_id, node_durations.c.agent_id)
_NODE_KEY = sa.tuple_(running_nodes.c.execution_id, running_nodes.c.node_id)


def _nodes_in(keys: Sequence[NodeKey]) -> list[Any]:
    """Rows of these (execution, node) keys; the leading key column's IN lets PostgreSQL use the
    primary key's index (a row-value IN of hundreds alone was a scan of the table)."""
    return [running_nodes.c.execution_id.in_({key[0] for key in keys}), _NODE_KEY.in_(list(keys))]


def _durations_in(keys: Sequence[DurationKey]) -> list[Any]:
    """Rows of these (dag, node, agent) keys, by the primary key's index (see `_nodes_in`)."""
    return [node_durations.c.dag_id.in_({key[0] for key in keys}), _DURATION_KEY.in_(list(keys))]


# A running-node row is answered only while its run runs under the row's token.
_LIVE = sa.and_(
    executions.c.execution_id == running_nodes.c.execution_id,
    executions.c.status == "running",
    executions.c.fencing_token == running_nodes.c.fencing_token,
)
_RUNNING_COLUMNS = (
    running_nodes.c.execution_id,
    running_nodes.c.dag_id,
    running_nodes.c.node_id,
    running_nodes.c.agent_id,
    running_nodes.c.owner,
    running_nodes.c.attempt,
    running_nodes.c.started_at,
    running_nodes.c.last_progress_at,
    running_nodes.c.progress_message,
    running_nodes.c.progress_fraction,
    running_nodes.c.progress_reports,
)


def _running(row: Any) -> RunningNode:
    return RunningNode(
        row.execution_id,
        row.dag_id,
        row.node_id,
        row.agent_id,
        row.owner,
        int(row.attempt),
        row.started_at,
        row.last_progress_at,
        row.progress_message,
        row.progress_fraction,
        int(row.progress_reports),
    )


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    return (postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def _progress_params(d: ProgressDelta) -> dict[str, Any]:
    return {"e": d.execution_id, "n": d.node_id, "reports": d.reports, "at": d.at} | {
        "message": d.message,
        "fraction": d.fraction,
    }


def _progress_update(deltas: Sequence[ProgressDelta] | None, now: datetime) -> sa.Update:
    """The `UPDATE running_nodes` adding deltas to their rows (the counts add up; the last report's
    time, message and fraction are the latest one's): with `deltas`, one statement over
    `FROM (VALUES ...)` of them (PostgreSQL); without, one row's statement for an executemany."""
    if deltas is None:
        new: Any = SimpleNamespace(**{name: sa.bindparam(name) for name in _DELTA_FIELDS})
    else:
        values = sa.values(*[sa.column(name, type_) for name, type_ in _DELTA_FIELDS.items()], name="delta")
        rows = values.data([tuple(_progress_params(d).values()) for d in deltas]).c
        # Typed: PostgreSQL reads a VALUES column of NULLs as text otherwise.
        new = SimpleNamespace(**{name: sa.cast(rows[name], type_) for name, type_ in _DELTA_FIELDS.items()})
    rn = running_nodes.c
    newer = sa.or_(rn.last_progress_at.is_(None), rn.last_progress_at <= new.at)
    return (
        running_nodes.update()
        .where(rn.execution_id == new.e, rn.node_id == new.n)
        .values(
            progress_reports=rn.progress_reports + new.reports,
            last_progress_at=sa.case((newer, new.at), else_=rn.last_progress_at),
            progress_message=sa.case((newer, new.message), else_=rn.progress_message),
            progress_fraction=sa.case((newer, new.fraction), else_=rn.progress_fraction),
            updated_at=now,
        )
    )


class SignalRepository:
    """`node_durations` and `running_nodes` (see the module docstring)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    # -- node durations ----------------------------------------------------------------------------

    async def merge_durations(self, deltas: Mapping[DurationKey, DurationSketch]) -> None:
        """Add each sketch of `deltas` to its node's stored history, in one transaction."""
        if not deltas:
            return
        keys = sorted(deltas)
        now = self.clock.now()
        empty = DurationSketch().to_json()
        async with self.db.transaction("merge node durations") as conn:
            insert = _insert(conn, node_durations).on_conflict_do_nothing(
                index_elements=["dag_id", "node_id", "agent_id"]
            )
            await conn.execute(
                insert,
                [
                    {"dag_id": d, "node_id": n, "agent_id": a, "sketch": empty, "count": 0, "revision": 0}
                    | {"updated_at": now}
                    for d, n, a in keys
                ],
            )
            stored: dict[DurationKey, tuple[str, int]] = {}
            for chunk in _chunks(keys):
                lock = (
                    node_durations.update()
                    .where(*_durations_in(chunk))
                    .values(updated_at=now)
                    .returning(
                        node_durations.c.dag_id,
                        node_durations.c.node_id,
                        node_durations.c.agent_id,
                        node_durations.c.sketch,
                        node_durations.c.revision,
                    )
                )
                for row in (await conn.execute(lock)).all():
                    stored[(row.dag_id, row.node_id, row.agent_id)] = (row.sketch, int(row.revision))
            await conn.execute(
                node_durations.update()
                .where(
                    node_durations.c.dag_id == sa.bindparam("k_dag"),
                    node_durations.c.node_id == sa.bindparam("k_node"),
                    node_durations.c.agent_id == sa.bindparam("k_agent"),
                )
                .values(
                    sketch=sa.bindparam("v_sketch"),
                    count=sa.bindparam("v_count"),
                    revision=sa.bindparam("v_revision"),
                ),
                [self._merged(key, deltas[key], *stored[key]) for key in keys],
            )

    @staticmethod
    def _merged(key: DurationKey, delta: DurationSketch, text: str, revision: int) -> dict[str, Any]:
        try:
            sketch = DurationSketch.from_json(text)
            sketch.merge(delta)
        except ValueError:  # unreadable, or of another accuracy: the new durations start it afresh
            sketch = DurationSketch(delta.relative_accuracy, delta.max_bins)
            sketch.merge(delta)
        return {
            "k_dag": key[0],
            "k_node": key[1],
            "k_agent": key[2],
            "v_sketch": sketch.to_json(),
            "v_count": sketch.count,
            "v_revision": revision + 1,
        }

    async def durations(self, keys: Collection[DurationKey]) -> list[StoredSketch]:
        """The stored histories of `keys` (those that have one)."""
        wanted = sorted(set(keys))
        found: list[StoredSketch] = []
        if not wanted:
            return found
        async with self.db.transaction("node durations") as conn:
            for chunk in _chunks(wanted):
                query = sa.select(node_durations).where(*_durations_in(chunk))
                found += [self._stored(row) for row in (await conn.execute(query)).all()]
        return found

    async def durations_of_dag(self, dag_id: str) -> list[StoredSketch]:
        """Every stored history of the DAG's nodes, by node and agent."""
        query = (
            sa.select(node_durations)
            .where(node_durations.c.dag_id == dag_id)
            .order_by(node_durations.c.node_id, node_durations.c.agent_id)
        )
        async with self.db.transaction("node durations of a DAG") as conn:
            return [self._stored(row) for row in (await conn.execute(query)).all()]

    @staticmethod
    def _stored(row: Any) -> StoredSketch:
        return StoredSketch((row.dag_id, row.node_id, row.agent_id), int(row.revision), row.sketch)

    # -- running nodes -----------------------------------------------------------------------------

    async def sync_running(
        self, upserts: Sequence[RunningRow], deletes: Collection[NodeKey], progress: Sequence[ProgressDelta]
    ) -> list[ProgressDelta]:
        """One replica's changes in one transaction: its ended nodes deleted, its started (or retried)
        ones written, and the progress it took added to the rows. Returns the deltas whose node has
        no row (yet: its owner writes it on its next tick)."""
        now = self.clock.now()
        async with self.db.transaction("sync running nodes") as conn:
            for chunk in _chunks(sorted(deletes)):
                await conn.execute(running_nodes.delete().where(*_nodes_in(chunk)))
            if upserts:
                await self._upsert(conn, upserts, now)
            return await self._add_progress(conn, progress, now) if progress else []

    async def _upsert(self, conn: AsyncConnection, rows: Sequence[RunningRow], now: datetime) -> None:
        insert = _insert(conn, running_nodes)
        rn, new = running_nodes.c, insert.excluded
        same_run = rn.fencing_token == new.fencing_token
        # A row of an earlier claim of the run (a resume, a takeover) starts without its progress.
        keep = {name: sa.case((same_run, rn[name]), else_=None) for name in _PROGRESS_COLUMNS}
        keep["progress_reports"] = sa.case((same_run, rn.progress_reports), else_=0)
        statement = insert.on_conflict_do_update(
            index_elements=["execution_id", "node_id"],
            set_={**{name: new[name] for name in _OWNER_COLUMNS}, **keep},
        )
        await conn.execute(
            statement,
            [{**row.__dict__, "updated_at": now, "progress_reports": 0} for row in rows],
        )

    async def _add_progress(
        self, conn: AsyncConnection, deltas: Sequence[ProgressDelta], now: datetime
    ) -> list[ProgressDelta]:
        present: set[NodeKey] = set()
        keys = sorted({(d.execution_id, d.node_id) for d in deltas})
        for chunk in _chunks(keys):
            query = sa.select(running_nodes.c.execution_id, running_nodes.c.node_id).where(*_nodes_in(chunk))
            present |= {(row[0], row[1]) for row in (await conn.execute(query)).all()}
        merged: dict[NodeKey, ProgressDelta] = {}
        for d in deltas:
            key = (d.execution_id, d.node_id)
            if key in present:
                merged[key] = d if key not in merged else merged[key].then(d)
        found = list(merged.values())
        if found and conn.dialect.name == "postgresql":  # one statement (round trip) per 1,000 nodes
            for start in range(0, len(found), _DELTAS_PER_STATEMENT):
                await conn.execute(_progress_update(found[start : start + _DELTAS_PER_STATEMENT], now))
        elif found:  # SQLite: an executemany stays in the process
            await conn.execute(_progress_update(None, now), [_progress_params(d) for d in found])
        return [d for d in deltas if (d.execution_id, d.node_id) not in present]

    async def prune_running(self) -> int:
        """Delete the rows no run answers for any more (its run ended or was claimed again); how many."""
        alive = sa.select(executions.c.execution_id).where(_LIVE).exists()
        async with self.db.transaction("prune running nodes") as conn:
            return int((await conn.execute(running_nodes.delete().where(~alive))).rowcount or 0)

    def _live(self) -> sa.Select[Any]:
        return sa.select(*_RUNNING_COLUMNS).select_from(running_nodes.join(executions, _LIVE))

    async def running_of(self, execution_id: str) -> list[RunningNode]:
        """The live running nodes of one run."""
        query = self._live().where(running_nodes.c.execution_id == execution_id)
        async with self.db.transaction("running nodes of a run") as conn:
            return [_running(row) for row in (await conn.execute(query)).all()]

    async def page_running(
        self, where: RunningFilter, *, after: RunningPosition | None, limit: int
    ) -> RunningPage:
        """At most `limit` live running nodes matching `where`, oldest started first, after `after`;
        the position to go on from and the exact count of all that match."""
        rn = running_nodes.c
        conditions: list[Any] = []
        if where.dag_id is not None:
            conditions.append(rn.dag_id == where.dag_id)
        if where.started_before is not None:
            conditions.append(rn.started_at < where.started_before)
        query = self._live().where(*conditions).order_by(rn.started_at, rn.execution_id, rn.node_id)
        if after is not None:
            at = sa.literal(after.at, type_=rn.started_at.type)
            query = query.where(
                sa.tuple_(rn.started_at, rn.execution_id, rn.node_id)
                > sa.tuple_(at, sa.literal(after.execution_id), sa.literal(after.node_id))
            )
        count = (
            sa.select(sa.func.count()).select_from(running_nodes.join(executions, _LIVE)).where(*conditions)
        )
        async with self.db.transaction("list running nodes") as conn:
            rows = (await conn.execute(query.limit(limit + 1))).all()
            total = int((await conn.execute(count)).scalar_one())
        nodes = [_running(row) for row in rows[:limit]]
        next_position = None
        if len(rows) > limit:
            last = nodes[-1]
            next_position = RunningPosition(last.started_at, last.execution_id, last.node_id)
        return RunningPage(nodes, next_position, total)
