"""The watchdog's durable state: incidents, alert deliveries, audit log, approvals, actions, rate events.

On the foundation both services share, `gl_common.db.Database` (engine and pool from
`WatchdogSettings.db_pool()`, SQLite pragmas and WAL, bounded transactions, error mapping, the bounded
close): one code path for SQLite (aiosqlite; `BEGIN IMMEDIATE` for a transaction that may write, so
concurrent writers queue instead of failing, a deferred `BEGIN` for `read()`) and PostgreSQL
(asyncpg). `WatchdogStore.open()` applies `watchdog.migrations.SCHEMA` through `gl_common.migrations`
before returning. Used by `watchdog.incidents` (open/join/close with audit),
`watchdog.intake` (episode dedup), the API and CLI (reads), and the remediation side (approvals,
actions, rate events).

Every query lives on `Tx`, one open transaction (the approvals, actions and rate events in its base,
`watchdog.store_remediation.RemediationRows`): `async with store.transaction() as tx: ...` commits
on success and rolls back on error, so a state change and its audit entry are written together or not
at all. Conflicts on unique keys are answered with `None` ("someone else got there first"), never by
check-then-insert. SQLAlchemy/driver errors come out as `StoreError`/`StoreUnavailable`.
Documents are JSON columns; the `Plan` of an incident and of an approval is parsed into its model
here on the way out, and dumped here on the way in. The clock is injected; every timestamp the store
writes comes from it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.clock import Clock, SystemClock
from gl_common.db import Database, PoolSettings, StoreErrors
from watchdog.errors import StoreError, StoreUnavailable
from watchdog.migrations import (
    SCHEMA,
    TERMINAL_INCIDENT_STATUSES,
    alert_deliveries,
    audit_log,
    incidents,
)
from watchdog.plan import Plan
from watchdog.records import AlertDelivery, AuditEntry, Incident
from watchdog.store_remediation import RemediationRows, model_of
from watchdog.write_turns import NoTurn, WriteTurns

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 10.0  # without pool settings (tools, tests): see WatchdogSettings
ERRORS: Final = StoreErrors(error=StoreError, unavailable=StoreUnavailable)


def _new_rows(table: sa.Table) -> dict[str, Any]:
    """`INSERT ... ON CONFLICT DO NOTHING RETURNING *` into `table`, by dialect name."""
    return {
        name: insert(table).on_conflict_do_nothing().returning(*table.c)
        for name, insert in (("sqlite", sqlite_dialect.insert), ("postgresql", pg_dialect.insert))
    }


# The inserts of the intake and of every audit entry: statements built once and run with a parameter
# set per row, so SQLAlchemy compiles each once (per set of columns given), and sends a batch of any
# size (`insert_deliveries`, `insert_incidents`, `add_audits`) as multi-row VALUES ("insertmanyvalues").
# A `.values([...])` of the rows instead is a new statement per batch size, compiled anew each time
# (issue 11: ~30% of the intake's event loop), and a `.values(...)` per call builds the statement and
# its cache key again.
_NEW_DELIVERIES: Final = _new_rows(alert_deliveries)
_NEW_INCIDENTS: Final = _new_rows(incidents)
_AUDITS: Final = audit_log.insert()
_AUDIT: Final = audit_log.insert().returning(audit_log.c.id)
# `link_deliveries`: one row per parameter set (SQLite), or every link in one statement (PostgreSQL).
_LINK_ONE: Final = (
    sa.update(alert_deliveries)
    .where(alert_deliveries.c.id == sa.bindparam("delivery_id"))
    .values(incident_id=sa.bindparam("linked_incident_id"))
)
_LINKS: Final = (
    sa.func.unnest(
        sa.bindparam("delivery_ids", type_=pg_dialect.ARRAY(sa.Integer)),
        sa.bindparam("incident_ids", type_=pg_dialect.ARRAY(sa.Integer)),
    )
    .table_valued(sa.column("delivery_id", sa.Integer), sa.column("incident_id", sa.Integer))
    .render_derived(name="links")
)
_LINK_ARRAYS: Final = (
    sa.update(alert_deliveries)
    .where(alert_deliveries.c.id == _LINKS.c.delivery_id)
    .values(incident_id=_LINKS.c.incident_id)
)


# -- the transaction --------------------------------------------------------------------------------


class Tx(RemediationRows):
    """Queries inside one open transaction (from `WatchdogStore.transaction()`): incidents, the audit
    log and alert deliveries here; approvals, actions and rate events from `RemediationRows`."""

    def __init__(self, conn: AsyncConnection, clock: Clock) -> None:
        self.conn = conn
        self.clock = clock

    # -- incidents

    async def insert_incident(
        self,
        *,
        execution_id: str,
        dag_id: str | None,
        source: str,
        detection_source: str,
        summary: str | None = None,
        status: str = "open",
    ) -> Incident | None:
        """Insert an open incident; None when one is already open for `execution_id` (unique index)."""
        now = self.clock.now()
        row = {
            "execution_id": execution_id,
            "dag_id": dag_id,
            "status": status,
            "source": source,
            "detection_source": detection_source,
            "opened_at": now,
            "updated_at": now,
            "summary": summary,
        }
        result = await self.conn.execute(_NEW_INCIDENTS[self.conn.dialect.name], row)
        incident: Incident | None = model_of(Incident, result.first())
        return incident

    async def insert_incidents(self, rows: list[dict[str, Any]]) -> list[Incident]:
        """Open incidents in one statement (`insert_incident`'s columns, one dict per execution); the
        ones inserted, in no particular order (an execution with an open incident is left out)."""
        now = self.clock.now()
        if not rows:
            return []
        values = [
            {"status": "open", "summary": None, **row, "opened_at": now, "updated_at": now} for row in rows
        ]
        result = await self.conn.execute(_NEW_INCIDENTS[self.conn.dialect.name], values)
        return [Incident.model_validate(dict(r._mapping)) for r in result]

    async def get_incident(self, incident_id: int) -> Incident | None:
        """The incident with this id, or None."""
        result = await self.conn.execute(sa.select(incidents).where(incidents.c.id == incident_id))
        incident: Incident | None = model_of(Incident, result.first())
        return incident

    async def get_open_incident(self, execution_id: str) -> Incident | None:
        """The open incident of `execution_id`, if any (there is at most one)."""
        result = await self.conn.execute(
            sa.select(incidents).where(
                incidents.c.execution_id == execution_id,
                incidents.c.status.not_in(TERMINAL_INCIDENT_STATUSES),
            )
        )
        incident: Incident | None = model_of(Incident, result.first())
        return incident

    async def list_incidents(
        self,
        *,
        statuses: Collection[str] | None = None,
        execution_id: str | None = None,
        before_id: int | None = None,
        limit: int | None = 500,
    ) -> list[Incident]:
        """Incidents, newest first, optionally filtered by status and execution id; with `before_id`,
        only those whose id is below it (the next keyset page after an incident); `limit` None: all."""
        stmt = sa.select(incidents).order_by(incidents.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(incidents.c.id < before_id)
        if statuses is not None:
            stmt = stmt.where(incidents.c.status.in_(list(statuses)))
        if execution_id is not None:
            stmt = stmt.where(incidents.c.execution_id == execution_id)
        result = await self.conn.execute(stmt)
        return [Incident.model_validate(dict(r._mapping)) for r in result]

    async def list_open_pages(self, *, before_id: int | None = None, limit: int) -> list[Incident]:
        """Escalated incidents whose page is open (`page_open`), newest first, below `before_id` when
        given (the next keyset page): an index range (`ix_incidents_page_open`), whatever the number
        of escalated incidents with their page closed."""
        stmt = (
            sa.select(incidents)
            .where(incidents.c.page_open == sa.true(), incidents.c.status == "escalated")
            .order_by(incidents.c.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            stmt = stmt.where(incidents.c.id < before_id)
        result = await self.conn.execute(stmt)
        return [Incident.model_validate(dict(r._mapping)) for r in result]

    async def count_unfinished_incidents(self) -> list[tuple[str, str | None, int]]:
        """How many incidents are not yet resolved, escalated or closed, by (status, held kind): one
        grouped query for the open-incident and held-incident gauges."""
        result = await self.conn.execute(
            sa.select(incidents.c.status, incidents.c.held_kind, sa.func.count())
            .where(incidents.c.status.not_in(TERMINAL_INCIDENT_STATUSES))
            .group_by(incidents.c.status, incidents.c.held_kind)
        )
        return [(str(row[0]), row[1], int(row[2])) for row in result]

    async def update_incident(
        self, incident_id: int, *, expected_status: Collection[str] | None = None, **values: Any
    ) -> Incident | None:
        """Set columns (and `updated_at`); with `expected_status`, only if the status is one of them.

        Returns the updated incident, or None when no row matched (missing or in another status):
        compare-and-set, so two writers cannot both move an incident out of the same state.
        """
        stmt = sa.update(incidents).where(incidents.c.id == incident_id)
        if expected_status is not None:
            stmt = stmt.where(incidents.c.status.in_(list(expected_status)))
        if isinstance(values.get("plan"), Plan):
            values["plan"] = values["plan"].model_dump(mode="json")
        result = await self.conn.execute(
            stmt.values(updated_at=self.clock.now(), **values).returning(*incidents.c)
        )
        incident: Incident | None = model_of(Incident, result.first())
        return incident

    async def hold_incident(self, incident_id: int, kind: str, held_by: list[dict[str, Any]]) -> None:
        """Record on the row what holds an incident (`watchdog.suppression`, with its `suppressed`
        audit entry); `updated_at` is left alone, as an audit entry alone would."""
        await self.conn.execute(
            sa.update(incidents).where(incidents.c.id == incident_id).values(held_kind=kind, held_by=held_by)
        )

    async def release_incident(self, incident_id: int) -> None:
        """Clear what held an incident (its next decision, a `plan`, is being recorded); nothing is
        written when it was not held."""
        await self.conn.execute(
            sa.update(incidents)
            .where(incidents.c.id == incident_id, incidents.c.held_kind.is_not(None))
            .values(held_kind=None, held_by=sa.null())
        )

    async def set_page_open(self, incident_id: int, page_open: bool) -> None:
        """Record on the row whether the incident's page is open (with the audit entry that opened or
        closed it: `watchdog.incidents.IncidentService.record`); `updated_at` is left alone."""
        await self.conn.execute(
            sa.update(incidents).where(incidents.c.id == incident_id).values(page_open=page_open)
        )

    async def set_pages_closed(self, incident_ids: Collection[int]) -> None:
        """Take incidents out of `list_open_pages` (their escalation paged no paging service)."""
        await self.conn.execute(
            sa.update(incidents).where(incidents.c.id.in_(list(incident_ids))).values(page_open=False)
        )

    # -- audit log

    async def add_audit(
        self,
        incident_id: int | None,
        kind: str,
        *,
        phase: str = "after",
        actor: str = "watchdog",
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one audit entry; returns its id."""
        entry = {
            "incident_id": incident_id,
            "at": self.clock.now(),
            "kind": kind,
            "phase": phase,
            "actor": actor,
            "data": dict(data or {}),
        }
        result = await self.conn.execute(_AUDIT, entry)
        return int(result.scalar_one())

    async def add_audits(self, entries: list[dict[str, Any]]) -> None:
        """Append audit entries in one statement (`add_audit`'s arguments, one dict per entry)."""
        if not entries:
            return
        now = self.clock.now()
        values = [{"phase": "after", "actor": "watchdog", **entry, "at": now} for entry in entries]
        await self.conn.execute(_AUDITS, values)

    async def list_audit(self, incident_id: int) -> list[AuditEntry]:
        """The audit entries of one incident, oldest first."""
        result = await self.conn.execute(
            sa.select(audit_log).where(audit_log.c.incident_id == incident_id).order_by(audit_log.c.id)
        )
        return [AuditEntry.model_validate(dict(r._mapping)) for r in result]

    async def list_audits(
        self, incident_ids: Collection[int], *, kinds: Collection[str] | None = None
    ) -> dict[int, list[AuditEntry]]:
        """The audit entries of several incidents (of `kinds` only, when given) in one query, oldest
        first, by incident (an incident without any is left out)."""
        stmt = sa.select(audit_log).where(audit_log.c.incident_id.in_(list(incident_ids)))
        if kinds is not None:
            stmt = stmt.where(audit_log.c.kind.in_(list(kinds)))
        found: dict[int, list[AuditEntry]] = {}
        for row in await self.conn.execute(stmt.order_by(audit_log.c.id)):
            entry = AuditEntry.model_validate(dict(row._mapping))
            found.setdefault(row.incident_id, []).append(entry)
        return found

    # -- alert deliveries

    async def insert_delivery(
        self,
        *,
        fingerprint: str,
        starts_at: datetime,
        alertname: str,
        execution_id: str | None,
        status: str,
        labels_digest: str | None = None,
    ) -> AlertDelivery | None:
        """Record a new alert episode; None when (fingerprint, starts_at) was already recorded."""
        now = self.clock.now()
        row = {
            "fingerprint": fingerprint,
            "starts_at": starts_at,
            "alertname": alertname,
            "execution_id": execution_id,
            "status": status,
            "received_at": now,
            "last_received_at": now,
            "resolved_at": now if status == "resolved" else None,
            "repeats": 0,
            "labels_digest": labels_digest,
        }
        result = await self.conn.execute(_NEW_DELIVERIES[self.conn.dialect.name], row)
        delivery: AlertDelivery | None = model_of(AlertDelivery, result.first())
        return delivery

    async def insert_deliveries(self, rows: list[dict[str, Any]]) -> list[AlertDelivery]:
        """Record new alert episodes in one statement (`insert_delivery`'s columns, one dict per
        episode); the rows inserted, in no particular order (those recorded before are left out)."""
        if not rows:
            return []
        now = self.clock.now()
        values = [
            {
                **row,
                "received_at": now,
                "last_received_at": now,
                "resolved_at": now if row["status"] == "resolved" else None,
                "repeats": 0,
            }
            for row in rows
        ]
        result = await self.conn.execute(_NEW_DELIVERIES[self.conn.dialect.name], values)
        return [AlertDelivery.model_validate(dict(r._mapping)) for r in result]

    async def link_deliveries(self, links: Mapping[int, int]) -> None:
        """Set the incident of recorded episodes (delivery id -> incident id), in one round trip: on
        PostgreSQL one statement over two arrays, on SQLite an executemany."""
        if not links:
            return
        if self.conn.dialect.name == "postgresql":
            arrays = {"delivery_ids": list(links), "incident_ids": list(links.values())}
            await self.conn.execute(_LINK_ARRAYS, arrays)
            return
        params = [{"delivery_id": d, "linked_incident_id": i} for d, i in links.items()]
        await self.conn.execute(_LINK_ONE, params)

    async def get_delivery(self, fingerprint: str, starts_at: datetime) -> AlertDelivery | None:
        """The recorded episode, or None."""
        result = await self.conn.execute(
            sa.select(alert_deliveries).where(
                alert_deliveries.c.fingerprint == fingerprint, alert_deliveries.c.starts_at == starts_at
            )
        )
        delivery: AlertDelivery | None = model_of(AlertDelivery, result.first())
        return delivery

    async def update_delivery(self, delivery_id: int, **values: Any) -> AlertDelivery | None:
        """Set columns of a delivery; returns it, or None if it does not exist."""
        result = await self.conn.execute(
            sa.update(alert_deliveries)
            .where(alert_deliveries.c.id == delivery_id)
            .values(**values)
            .returning(*alert_deliveries.c)
        )
        delivery: AlertDelivery | None = model_of(AlertDelivery, result.first())
        return delivery

    async def note_repeat(self, delivery_id: int) -> None:
        """Count one more delivery of an already-recorded episode."""
        await self.conn.execute(
            sa.update(alert_deliveries)
            .where(alert_deliveries.c.id == delivery_id)
            .values(repeats=alert_deliveries.c.repeats + 1, last_received_at=self.clock.now())
        )

    async def add_repeats(self, counts: Mapping[int, tuple[int, datetime]]) -> None:
        """Count repeats answered without the store, in one batch: delivery id -> (how many, last at)."""
        await self.conn.execute(
            sa.update(alert_deliveries)
            .where(alert_deliveries.c.id == sa.bindparam("delivery_id"))
            .values(
                repeats=alert_deliveries.c.repeats + sa.bindparam("more", type_=sa.Integer),
                last_received_at=sa.bindparam("last_at"),
            ),
            [{"delivery_id": key, "more": more, "last_at": at} for key, (more, at) in counts.items()],
        )

    async def count_deliveries(self) -> int:
        """How many alert episodes are recorded."""
        result = await self.conn.execute(sa.select(sa.func.count()).select_from(alert_deliveries))
        return int(result.scalar_one())


# -- the store --------------------------------------------------------------------------------------


class WatchdogStore:
    """The watchdog's database. Build with `await WatchdogStore.open(url, clock=...)`, end with `close()`."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.engine = database.engine
        self.clock = clock
        self.dialect = database.dialect
        # On SQLite the process' writers take turns in the event loop, the intake first (one write
        # lock per file; see watchdog.write_turns).
        self.turns = WriteTurns(serialize=self.dialect == "sqlite")

    @classmethod
    async def open(
        cls, database_url: str, *, clock: Clock | None = None, pool: PoolSettings | None = None
    ) -> WatchdogStore:
        """Connect, run pending migrations (`watchdog.migrations.SCHEMA`), and return the store.

        Raises StoreUnavailable when the database cannot be reached within the pool's timeout and
        StoreError for an unsupported URL or a failed migration.
        """
        pool = pool or PoolSettings(timeout_seconds=DEFAULT_TIMEOUT_SECONDS, sqlite_begin="immediate")
        database = Database.connect(database_url, pool, errors=ERRORS, only_database_errors=True)
        clock = clock or SystemClock()
        try:
            database.require_returning()
            await database.migrate(SCHEMA, clock.now())
        except BaseException:
            await database.close()
            raise
        return cls(database, clock)

    async def close(self) -> None:
        """Let transactions under way end (each bounded by the pool's timeout), then close the pool.

        Later transactions get `StoreUnavailable`."""
        await self.database.close()

    @contextlib.asynccontextmanager
    async def transaction(self, what: str = "watchdog store", *, urgent: bool = False) -> AsyncIterator[Tx]:
        """One transaction that may write: commit when the block ends, roll back when it raises. On
        SQLite it begins with `BEGIN IMMEDIATE` once this process' earlier writers are done: they take
        turns (`self.turns`), `urgent` ones (the intake's) first; other processes' writers queue on the
        busy timeout.

        Database errors come out as StoreUnavailable (cannot connect, no answer in time) or StoreError
        (anything else); other exceptions of the block come out unchanged.
        """
        try:
            await self.turns.acquire(urgent=urgent, wait_seconds=self.database.timeout_seconds)
        except NoTurn as exc:
            raise StoreUnavailable(f"{what}: {exc} (this process' other writers held the store)") from exc
        try:
            async with self.database.transaction(what) as conn:
                yield Tx(conn, self.clock)
        finally:
            self.turns.release()

    @contextlib.asynccontextmanager
    async def read(self, what: str = "watchdog store read") -> AsyncIterator[Tx]:
        """One transaction that only reads: on SQLite a deferred `BEGIN` (a snapshot, without the write
        lock that writers queue on). Writing in it is a bug (on SQLite it may fail as busy)."""
        async with self.database.transaction(what, read_only=True) as conn:
            yield Tx(conn, self.clock)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a trivial query succeeds (readiness)."""
        await self.database.ping()

    # Convenience reads, one transaction each.

    async def get_incident(self, incident_id: int) -> Incident | None:
        """The incident with this id, or None."""
        async with self.read() as tx:
            return await tx.get_incident(incident_id)

    async def list_incidents(
        self, *, statuses: Collection[str] | None = None, limit: int = 500
    ) -> list[Incident]:
        """Incidents, newest first."""
        async with self.read() as tx:
            return await tx.list_incidents(statuses=statuses, limit=limit)
