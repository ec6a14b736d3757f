"""Listing executions: server-side filters, keyset pages in a stable order, exact counts.

Where it sits: `engine.Engine.page_executions` calls `ExecutionListing.page` for the REST API's
`GET /executions` (`api.py`, which turns a `Position` into the opaque cursor clients see). One
transaction reads a page and counts the filter, on the indexes of migration 4
(`m0004_execution_listing`).

Order: oldest first by the run's *order key* — `started_at`, or `created_at` for a run that has not
started yet — then `execution_id`. A run's key only ever grows (a claim or a resume sets `started_at`
to now), so a listing that pages through with `after=` the last position never loses a run that
matched the filter all along: a run inserted or (re)started meanwhile sorts after every run already
listed and is reached on a later page; a run whose key grew past the position may be listed twice.

Filters combine with AND: `execution_ids` (any of: the runs a caller already knows, by the primary
key), `statuses` (any of), `dag_id`, `owner`, `started_before` / `started_after`
(runs that have started, by `started_at`), `over_timeout` (running, and running for longer than its
effective timeout: its own, else `default_timeout_seconds`), `no_timeout` (the run's DAG sets no
timeout of its own, so it runs under the default, if there is one); and the other stuck states
(issue 16): `queued_before` (queued since before), `cancel_requested_before`, `min_resume_count`,
`running_owners` (running runs of these owners: the API's `owner_gone`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from gl_common.clock import Clock
from gl_common.db import Database
from orchestrator_core.records import ExecutionRecord
from orchestrator_core.store.executions import execution_record
from orchestrator_core.store.schema import executions

ORDER_KEY = sa.func.coalesce(executions.c.started_at, executions.c.created_at)


@dataclass(frozen=True)
class ExecutionFilter:
    """Which executions a listing selects (None: no condition)."""

    execution_ids: tuple[str, ...] | None = None  # any of these runs
    statuses: tuple[str, ...] | None = None
    dag_id: str | None = None
    owner: str | None = None
    started_before: datetime | None = None
    started_after: datetime | None = None
    over_timeout: bool | None = None
    no_timeout: bool | None = None
    default_timeout_seconds: float | None = None  # the effective timeout of a run without its own
    queued_before: datetime | None = None  # queued (status) since before
    cancel_requested_before: datetime | None = None
    min_resume_count: int | None = None
    running_owners: tuple[str | None, ...] | None = None  # running runs of these owners (None: no owner)


@dataclass(frozen=True)
class Position:
    """Where a page ended: the order key and id of its last run (the next page starts after it)."""

    at: datetime
    execution_id: str


@dataclass(frozen=True)
class Page:
    records: list[ExecutionRecord]
    next: Position | None  # None: this was the last page
    total: int  # runs matching the filter, counted in the same transaction


class ExecutionListing:
    """Filtered, keyset-paginated reads of `executions`."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def page(self, where: ExecutionFilter, *, after: Position | None, limit: int) -> Page:
        """At most `limit` runs matching `where` after `after` (from the start when None), oldest
        first, the position to continue from, and the exact number of runs matching `where`."""
        conditions = self._conditions(where)
        query = executions.select().where(*conditions).order_by(ORDER_KEY, executions.c.execution_id)
        if after is not None:
            at = sa.literal(after.at, type_=executions.c.created_at.type)
            query = query.where(
                sa.tuple_(ORDER_KEY, executions.c.execution_id)
                > sa.tuple_(at, sa.literal(after.execution_id))
            )
        count = sa.select(sa.func.count()).select_from(executions).where(*conditions)
        async with self.db.transaction("list executions") as conn:
            rows = (await conn.execute(query.limit(limit + 1))).all()
            total = int((await conn.execute(count)).scalar_one())
        records = [execution_record(row) for row in rows[:limit]]
        next_position = None
        if len(rows) > limit:
            last = records[-1]
            next_position = Position(last.started_at or last.created_at, last.execution_id)
        return Page(records, next_position, total)

    def _conditions(self, where: ExecutionFilter) -> Sequence[ColumnElement[bool]]:
        c = executions.c
        conditions: list[ColumnElement[bool]] = []
        if where.execution_ids is not None:
            conditions.append(c.execution_id.in_(where.execution_ids))
        if where.statuses is not None:
            conditions.append(c.status.in_(where.statuses))
        if where.dag_id is not None:
            conditions.append(c.dag_id == where.dag_id)
        if where.owner is not None:
            conditions.append(c.owner == where.owner)
        # On the order key (the index's), which equals started_at once a run has started.
        if where.started_before is not None:
            conditions += [c.started_at.is_not(None), where.started_before > ORDER_KEY]
        if where.started_after is not None:
            conditions += [c.started_at.is_not(None), where.started_after < ORDER_KEY]
        if where.over_timeout is not None:
            over = self._over_timeout(where.default_timeout_seconds)
            conditions.append(over if where.over_timeout else sa.not_(over))
        if where.no_timeout is not None:
            conditions.append(
                c.timeout_seconds.is_(None) if where.no_timeout else c.timeout_seconds.is_not(None)
            )
        return conditions + self._stuck(where)

    @staticmethod
    def _stuck(where: ExecutionFilter) -> list[ColumnElement[bool]]:
        """The conditions of the other stuck states (issue 16), on the indexes of migration 6."""
        c = executions.c
        conditions: list[ColumnElement[bool]] = []
        if where.queued_before is not None:
            conditions += [c.status == "queued", c.queued_at < where.queued_before]
        if where.cancel_requested_before is not None:
            conditions.append(c.cancel_requested_at < where.cancel_requested_before)
        if where.min_resume_count is not None:
            conditions.append(c.resume_count >= where.min_resume_count)
        if where.running_owners is not None:
            named = [owner for owner in where.running_owners if owner is not None]
            of_owners = [c.owner.in_(named)] if named else []
            if None in where.running_owners:
                of_owners.append(c.owner.is_(None))
            conditions += [c.status == "running", sa.or_(*of_owners) if of_owners else sa.false()]
        return conditions

    def _over_timeout(self, default_timeout: float | None) -> ColumnElement[bool]:
        """Running for longer than its effective timeout (never NULL, so that NOT works too)."""
        c = executions.c
        timeout: ColumnElement[Any] = (
            c.timeout_seconds
            if default_timeout is None
            else sa.func.coalesce(c.timeout_seconds, default_timeout)
        )
        return sa.and_(
            c.status == "running",
            c.started_at.is_not(None),
            timeout.is_not(None),
            self._seconds_since(c.started_at) > timeout,
        )

    def _seconds_since(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        now = sa.literal(self.clock.now(), type_=executions.c.started_at.type)
        if self.db.dialect == "postgresql":
            return sa.extract("epoch", now - column)
        # SQLite keeps UTC text; julianday() reads it (days, with sub-millisecond precision here).
        return (sa.func.julianday(now) - sa.func.julianday(column)) * 86400.0
