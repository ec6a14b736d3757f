"""The watchdog's durable state: incidents, alert deliveries, audit log, approvals, actions, rate events.

SQLAlchemy Core async with one code path for SQLite (aiosqlite, WAL, `BEGIN IMMEDIATE` so concurrent
writers queue instead of failing) and PostgreSQL (asyncpg). `WatchdogStore.open()` runs the migrations of
`watchdog.migrations` before returning. Used by `watchdog.incidents` (open/join/close with audit),
`watchdog.intake` (episode dedup), the API and CLI (reads), and the remediation side (approvals,
actions, rate events).

Every query lives on `Tx`, one open transaction: `async with store.transaction() as tx: ...` commits
on success and rolls back on error, so a state change and its audit entry are written together or not
at all. Conflicts on unique keys are answered with `None` ("someone else got there first"), never by
check-then-insert. SQLAlchemy/driver errors are converted to `StoreError`/`StoreUnavailable` here.
Documents are JSON columns; the `Plan` of an incident and of an approval is parsed into its model
here on the way out, and dumped here on the way in. The clock is injected; every timestamp the store
writes comes from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gl_common.clock import Clock, SystemClock
from watchdog.errors import StoreError, StoreUnavailable
from watchdog.migrations import (
    TERMINAL_INCIDENT_STATUSES,
    actions,
    alert_deliveries,
    approvals,
    audit_log,
    incidents,
    migrate,
    rate_events,
)
from watchdog.plan import Plan
from watchdog.records import Action, AlertDelivery, Approval, AuditEntry, Incident

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_STATEMENT_TIMEOUT: Final = 30.0
LIMITS_LOCK_KEY: Final = 0x676C5744  # "glWD": the PostgreSQL advisory lock around limit checks
# How long close() lets transactions under way end before it closes the pool anyway.
CLOSE_WAIT_SECONDS: Final = 10.0


def _row(model: type[Any], row: sa.Row[Any] | None) -> Any:
    return None if row is None else model.model_validate(dict(row._mapping))


# -- the transaction --------------------------------------------------------------------------------


class Tx:
    """Queries inside one open transaction (from `WatchdogStore.transaction()`)."""

    def __init__(self, conn: AsyncConnection, clock: Clock) -> None:
        self.conn = conn
        self.clock = clock

    def _insert(self, table: sa.Table) -> Any:
        if self.conn.dialect.name == "postgresql":
            return pg_dialect.insert(table)
        return sqlite_dialect.insert(table)

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
        stmt = (
            self._insert(incidents)
            .values(
                execution_id=execution_id,
                dag_id=dag_id,
                status=status,
                source=source,
                detection_source=detection_source,
                opened_at=now,
                updated_at=now,
                summary=summary,
            )
            .on_conflict_do_nothing()
            .returning(*incidents.c)
        )
        result = await self.conn.execute(stmt)
        incident: Incident | None = _row(Incident, result.first())
        return incident

    async def get_incident(self, incident_id: int) -> Incident | None:
        """The incident with this id, or None."""
        result = await self.conn.execute(sa.select(incidents).where(incidents.c.id == incident_id))
        incident: Incident | None = _row(Incident, result.first())
        return incident

    async def get_open_incident(self, execution_id: str) -> Incident | None:
        """The open incident of `execution_id`, if any (there is at most one)."""
        result = await self.conn.execute(
            sa.select(incidents).where(
                incidents.c.execution_id == execution_id,
                incidents.c.status.not_in(TERMINAL_INCIDENT_STATUSES),
            )
        )
        incident: Incident | None = _row(Incident, result.first())
        return incident

    async def list_incidents(
        self, *, statuses: Collection[str] | None = None, execution_id: str | None = None, limit: int = 500
    ) -> list[Incident]:
        """Incidents, newest first, optionally filtered by status and execution id."""
        stmt = sa.select(incidents).order_by(incidents.c.id.desc()).limit(limit)
        if statuses is not None:
            stmt = stmt.where(incidents.c.status.in_(list(statuses)))
        if execution_id is not None:
            stmt = stmt.where(incidents.c.execution_id == execution_id)
        result = await self.conn.execute(stmt)
        return [Incident.model_validate(dict(r._mapping)) for r in result]

    async def count_open_incidents(self) -> int:
        """How many incidents are not yet resolved, escalated or closed."""
        result = await self.conn.execute(
            sa.select(sa.func.count())
            .select_from(incidents)
            .where(incidents.c.status.not_in(TERMINAL_INCIDENT_STATUSES))
        )
        return int(result.scalar_one())

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
        incident: Incident | None = _row(Incident, result.first())
        return incident

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
        result = await self.conn.execute(
            audit_log.insert()
            .values(
                incident_id=incident_id,
                at=self.clock.now(),
                kind=kind,
                phase=phase,
                actor=actor,
                data=dict(data or {}),
            )
            .returning(audit_log.c.id)
        )
        return int(result.scalar_one())

    async def list_audit(self, incident_id: int) -> list[AuditEntry]:
        """The audit entries of one incident, oldest first."""
        result = await self.conn.execute(
            sa.select(audit_log).where(audit_log.c.incident_id == incident_id).order_by(audit_log.c.id)
        )
        return [AuditEntry.model_validate(dict(r._mapping)) for r in result]

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
        stmt = (
            self._insert(alert_deliveries)
            .values(
                fingerprint=fingerprint,
                starts_at=starts_at,
                alertname=alertname,
                execution_id=execution_id,
                status=status,
                received_at=now,
                last_received_at=now,
                resolved_at=now if status == "resolved" else None,
                repeats=0,
                labels_digest=labels_digest,
            )
            .on_conflict_do_nothing()
            .returning(*alert_deliveries.c)
        )
        result = await self.conn.execute(stmt)
        delivery: AlertDelivery | None = _row(AlertDelivery, result.first())
        return delivery

    async def get_delivery(self, fingerprint: str, starts_at: datetime) -> AlertDelivery | None:
        """The recorded episode, or None."""
        result = await self.conn.execute(
            sa.select(alert_deliveries).where(
                alert_deliveries.c.fingerprint == fingerprint, alert_deliveries.c.starts_at == starts_at
            )
        )
        delivery: AlertDelivery | None = _row(AlertDelivery, result.first())
        return delivery

    async def update_delivery(self, delivery_id: int, **values: Any) -> AlertDelivery | None:
        """Set columns of a delivery; returns it, or None if it does not exist."""
        result = await self.conn.execute(
            sa.update(alert_deliveries)
            .where(alert_deliveries.c.id == delivery_id)
            .values(**values)
            .returning(*alert_deliveries.c)
        )
        delivery: AlertDelivery | None = _row(AlertDelivery, result.first())
        return delivery

    async def note_repeat(self, delivery_id: int) -> None:
        """Count one more delivery of an already-recorded episode."""
        await self.conn.execute(
            sa.update(alert_deliveries)
            .where(alert_deliveries.c.id == delivery_id)
            .values(repeats=alert_deliveries.c.repeats + 1, last_received_at=self.clock.now())
        )

    async def count_deliveries(self) -> int:
        """How many alert episodes are recorded."""
        result = await self.conn.execute(sa.select(sa.func.count()).select_from(alert_deliveries))
        return int(result.scalar_one())

    # -- approvals

    async def insert_approval(
        self,
        *,
        approval_id: str,
        incident_id: int,
        plan: Plan,
        summary: str,
        token_nonce: str,
        expires_at: datetime,
    ) -> Approval:
        """Record a new pending approval prompt."""
        result = await self.conn.execute(
            approvals.insert()
            .values(
                id=approval_id,
                incident_id=incident_id,
                plan=plan.model_dump(mode="json"),
                summary=summary,
                state="pending",
                token_nonce=token_nonce,
                created_at=self.clock.now(),
                expires_at=expires_at,
            )
            .returning(*approvals.c)
        )
        approval: Approval = _row(Approval, result.first())
        return approval

    async def get_approval(self, approval_id: str) -> Approval | None:
        """The approval prompt with this id, or None."""
        result = await self.conn.execute(sa.select(approvals).where(approvals.c.id == approval_id))
        approval: Approval | None = _row(Approval, result.first())
        return approval

    async def list_approvals(
        self, *, states: Collection[str] | None = None, incident_id: int | None = None
    ) -> list[Approval]:
        """Approval prompts, oldest first, optionally filtered."""
        stmt = sa.select(approvals).order_by(approvals.c.created_at, approvals.c.id)
        if states is not None:
            stmt = stmt.where(approvals.c.state.in_(list(states)))
        if incident_id is not None:
            stmt = stmt.where(approvals.c.incident_id == incident_id)
        result = await self.conn.execute(stmt)
        return [Approval.model_validate(dict(r._mapping)) for r in result]

    async def update_approval(
        self, approval_id: str, *, expected_state: Collection[str] | None = None, **values: Any
    ) -> Approval | None:
        """Compare-and-set on an approval: None when it is missing or not in `expected_state`."""
        stmt = sa.update(approvals).where(approvals.c.id == approval_id)
        if expected_state is not None:
            stmt = stmt.where(approvals.c.state.in_(list(expected_state)))
        result = await self.conn.execute(stmt.values(**values).returning(*approvals.c))
        approval: Approval | None = _row(Approval, result.first())
        return approval

    # -- actions

    async def insert_action(
        self,
        *,
        incident_id: int,
        playbook: str,
        step: str,
        idempotency_key: str,
        params: Mapping[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> Action | None:
        """Record an action as started; None when `idempotency_key` was already recorded."""
        stmt = (
            self._insert(actions)
            .values(
                incident_id=incident_id,
                approval_id=approval_id,
                playbook=playbook,
                step=step,
                idempotency_key=idempotency_key,
                params=None if params is None else dict(params),
                state="started",
                started_at=self.clock.now(),
            )
            .on_conflict_do_nothing()
            .returning(*actions.c)
        )
        result = await self.conn.execute(stmt)
        action: Action | None = _row(Action, result.first())
        return action

    async def get_action(self, idempotency_key: str) -> Action | None:
        """The action recorded under `idempotency_key`, or None."""
        result = await self.conn.execute(
            sa.select(actions).where(actions.c.idempotency_key == idempotency_key)
        )
        action: Action | None = _row(Action, result.first())
        return action

    async def list_actions(
        self, *, incident_id: int | None = None, states: Collection[str] | None = None
    ) -> list[Action]:
        """Actions, oldest first, optionally filtered."""
        stmt = sa.select(actions).order_by(actions.c.id)
        if incident_id is not None:
            stmt = stmt.where(actions.c.incident_id == incident_id)
        if states is not None:
            stmt = stmt.where(actions.c.state.in_(list(states)))
        result = await self.conn.execute(stmt)
        return [Action.model_validate(dict(r._mapping)) for r in result]

    async def finish_action(
        self, action_id: int, state: str, result: Mapping[str, Any] | None = None
    ) -> Action | None:
        """Move a started action to its final state; None when it was not in `started`."""
        res = await self.conn.execute(
            sa.update(actions)
            .where(actions.c.id == action_id, actions.c.state == "started")
            .values(
                state=state, result=None if result is None else dict(result), finished_at=self.clock.now()
            )
            .returning(*actions.c)
        )
        action: Action | None = _row(Action, res.first())
        return action

    # -- rate events

    async def serialize_limits(self) -> None:
        """Hold the limits lock until this transaction ends, so that two replicas checking and counting
        rate events cannot both pass a limit. PostgreSQL: a transaction-level advisory lock; SQLite:
        nothing to do, `BEGIN IMMEDIATE` already holds the database's write lock."""
        if self.conn.dialect.name == "postgresql":
            await self.conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIMITS_LOCK_KEY})

    async def add_rate_event(self, kind: str, key: str, at: datetime | None = None) -> None:
        """Record one rate-limited event (e.g. kind="restart_agent", key=agent id)."""
        await self.conn.execute(rate_events.insert().values(kind=kind, key=key, at=at or self.clock.now()))

    async def count_rate_events(self, kind: str, key: str, since: datetime) -> int:
        """How many events of (kind, key) happened at or after `since`."""
        result = await self.conn.execute(
            sa.select(sa.func.count())
            .select_from(rate_events)
            .where(rate_events.c.kind == kind, rate_events.c.key == key, rate_events.c.at >= since)
        )
        return int(result.scalar_one())

    async def prune_rate_events(self, before: datetime) -> int:
        """Delete events older than `before`; returns how many."""
        result = await self.conn.execute(sa.delete(rate_events).where(rate_events.c.at < before))
        return int(result.rowcount)


# -- the store --------------------------------------------------------------------------------------


def _install_sqlite_hooks(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    """WAL, foreign keys, a busy timeout, and `BEGIN IMMEDIATE` for every transaction.

    pysqlite's own transaction handling is switched off (isolation_level=None) so that we emit BEGIN
    ourselves; IMMEDIATE takes the write lock up front, so two writers queue on the busy timeout
    instead of one failing with "database is locked" when it upgrades a read lock.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        _enable_wal(cursor, busy_timeout_ms / 1000)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _enable_wal(cursor: Any, timeout_seconds: float) -> None:
    """Switch the file to WAL once; tolerate other connections opening it at the same moment.

    Changing the journal mode needs the database to itself and does not wait on the busy handler, so
    when several processes open a fresh file together one of them sees "database is locked": retry
    that (bounded by the busy timeout) until the mode is WAL, which one of them will have set.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver adapter re-raises sqlite3's OperationalError as its own
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _describe_error(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def _close_to_completion(conn: AsyncConnection) -> None:
    """`conn.close()` carried to its end even if the caller is cancelled meanwhile, as SQLAlchemy's own
    `async with` does: a close cut short leaves the connection neither reset nor back in the pool (and
    SQLAlchemy logs the interrupted reset with a traceback). The cancellation is re-raised after."""
    closing = asyncio.ensure_future(conn.close())
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(closing)
            break
        except asyncio.CancelledError as exc:
            if closing.done():
                raise
            cancelled = exc
    if cancelled is not None:
        raise cancelled


class WatchdogStore:
    """The watchdog's database. Build with `await WatchdogStore.open(url, clock=...)`, end with `close()`."""

    def __init__(self, engine: AsyncEngine, clock: Clock, connect_timeout: float) -> None:
        self.engine = engine
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.dialect = engine.dialect.name
        self._closed = False
        self._in_flight = 0  # transactions under way; close() lets them end before the pool goes
        self._drained = asyncio.Event()
        self._drained.set()

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        clock: Clock | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> WatchdogStore:
        """Connect, run pending migrations, and return the store.

        Raises StoreUnavailable when the database cannot be reached in `connect_timeout` seconds and
        StoreError for an unsupported URL or a failed migration.
        """
        try:
            url = make_url(database_url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"invalid database_url: {exc}") from exc
        backend = url.get_backend_name()
        if backend == "sqlite":
            if url.get_driver_name() != "aiosqlite":
                raise StoreError("a SQLite database_url must use the async driver: sqlite+aiosqlite:///PATH")
            engine = create_async_engine(url, connect_args={"timeout": statement_timeout})
            _install_sqlite_hooks(engine, int(statement_timeout * 1000))
        elif backend == "postgresql":
            if url.get_driver_name() != "asyncpg":
                raise StoreError(
                    "a PostgreSQL database_url must use the async driver: postgresql+asyncpg://..."
                )
            engine = create_async_engine(
                url,
                pool_pre_ping=True,
                connect_args={"timeout": connect_timeout, "command_timeout": statement_timeout},
            )
        else:
            raise StoreError(
                f"unsupported database backend {backend!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )
        clock = clock or SystemClock()
        store = cls(engine, clock, connect_timeout)
        try:
            async with store.transaction() as tx:
                await tx.conn.run_sync(migrate, clock.now())
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        """Let transactions under way end (up to CLOSE_WAIT_SECONDS), then close every pooled connection.

        Later transactions get `StoreUnavailable`: a connection opened, or handed back, after
        `dispose()` would sit in a pool that nobody closes again.
        """
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                await self._drained.wait()
        except TimeoutError:
            log.warning("closing the store with %d transaction(s) still under way", self._in_flight)
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One transaction: commit when the block ends, roll back when it raises.

        Database errors come out as StoreUnavailable (cannot connect) or StoreError (anything else).
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        self._in_flight += 1
        self._drained.clear()
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    conn = await self.engine.connect()
            except (TimeoutError, OSError, sa.exc.DBAPIError, sa.exc.InterfaceError) as exc:
                raise StoreUnavailable(f"database not reachable: {_describe_error(exc)}") from exc
            try:
                async with conn.begin():
                    yield Tx(conn, self.clock)
            except sa.exc.OperationalError as exc:
                raise StoreUnavailable(f"database error: {_describe_error(exc)}") from exc
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:  # the connection died under the statement (a kill, a restart)
                    raise StoreUnavailable(f"database connection lost: {_describe_error(exc)}") from exc
                raise StoreError(f"database error: {_describe_error(exc)}") from exc
            except sa.exc.SQLAlchemyError as exc:
                raise StoreError(f"database error: {_describe_error(exc)}") from exc
            finally:
                await _close_to_completion(conn)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a trivial query succeeds (readiness)."""
        async with self.transaction() as tx:
            await tx.conn.execute(sa.text("SELECT 1"))

    # Convenience reads, one transaction each.

    async def get_incident(self, incident_id: int) -> Incident | None:
        """The incident with this id, or None."""
        async with self.transaction() as tx:
            return await tx.get_incident(incident_id)

    async def list_incidents(
        self, *, statuses: Collection[str] | None = None, limit: int = 500
    ) -> list[Incident]:
        """Incidents, newest first."""
        async with self.transaction() as tx:
            return await tx.list_incidents(statuses=statuses, limit=limit)
