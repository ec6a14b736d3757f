"""Job leases: which replica runs the job of an incident in a transient state, until when, and how
often that job was lost or failed.

A job that moves an incident into `diagnosing`, `remediating` or `verifying` takes the incident's
lease in the same transaction (`JobLeases.take_in`): owner (this replica), a token that grows with
every take, an expiry `lease_seconds` ahead and a deadline (the longest the phase may run). While the
job runs inside `JobLeases.holding`, this process renews every lease it holds in one statement per
round (never past a lease's deadline), so a job is alive in some replica exactly while its lease has
not expired. A job that finishes drops its lease (`release_in`, in the transaction that leaves the
transient state); one that fails cleanly records the failure for a retry after a backoff
(`fail_in`); one whose writes fail, whose process dies, or that overruns its deadline simply stops
being renewed. The reconciler (`watchdog.reconciler`, on the sweep leader) finds the incidents whose
lease has lapsed (`lapsed`) and takes them back (`mark_lost_in`): retried after a backoff, escalated
after its attempts run out. A job holding an older token has been superseded: `check_in` raises
`LeaseLost` in the transaction that would have written its outcome.

Table `job_leases` (migration 2 of `watchdog.migrations`): one row per incident while it has a job,
so the attempts of one phase survive its retries and restarts; a new kind of job starts its count
again; rows of finished incidents are pruned (`prune_in`). Called by the diagnosis jobs
(`watchdog.diagnosis`), the remediation state machine (`watchdog.remediation`) and the reconciler;
queries go through the store's open transaction (`Tx`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from gl_common.clock import Clock
from watchdog.errors import StoreError
from watchdog.migrations import TERMINAL_INCIDENT_STATUSES, incidents, job_leases
from watchdog.records import Incident
from watchdog.store import Tx, WatchdogStore
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

# The job that runs an incident in each transient status.
JOB_OF_STATUS: Final = {"diagnosing": "diagnosis", "remediating": "remediation", "verifying": "verification"}
TRANSIENT: Final = tuple(JOB_OF_STATUS)


@dataclass(frozen=True)
class Lease:
    """A job's hold on an incident: who, which token, until when at the latest."""

    incident_id: int
    job: str
    owner: str
    token: int
    deadline_at: datetime
    attempts: int


@dataclass(frozen=True)
class LeaseState:
    """A lease row as the reconciler reads it (None columns: nobody holds it)."""

    incident_id: int
    job: str
    owner: str | None
    token: int
    expires_at: datetime | None
    attempts: int
    retry_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class Lapsed:
    """An incident whose job no replica runs: transient with its lease gone by, or waiting for a retry."""

    incident: Incident
    lease: LeaseState | None


def _state(row: Any) -> LeaseState | None:
    if row is None or row.incident_id is None:
        return None
    return LeaseState(
        incident_id=row.incident_id,
        job=row.job,
        owner=row.owner,
        token=row.token,
        expires_at=row.expires_at,
        attempts=row.attempts,
        retry_at=row.retry_at,
        last_error=row.last_error,
    )


class LeaseLost(WatchdogError):
    """A job's lease was taken back (the reconciler, another replica): its outcome is not written."""


class JobLeases:
    """The lease queries (one table, `job_leases`), each inside the caller's transaction, and the
    renewal of the leases this process's jobs hold (`holding`): every third of the lease, all of
    them in one statement; the renewal task runs only while this process holds a lease."""

    def __init__(self, store: WatchdogStore, clock: Clock, *, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._held: dict[int, int] = {}  # incident id -> how many jobs of this process hold it
        self._task: asyncio.Task[None] | None = None

    # -- the jobs of this process

    def held(self) -> list[int]:
        """Incidents whose job runs in this process now."""
        return list(self._held)

    @contextlib.contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        """Keep `lease` renewed while the block runs."""
        self._held[lease.incident_id] = self._held.get(lease.incident_id, 0) + 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._renew_loop(), name="job-lease-renewal")
        try:
            yield
        finally:
            left = self._held[lease.incident_id] - 1
            if left:
                self._held[lease.incident_id] = left
            else:
                del self._held[lease.incident_id]
            if not self._held and self._task is not None:
                self._task.cancel()
                self._task = None

    async def renew_once(self) -> int:
        """One renewal round: extend this replica's leases of the jobs it runs (never past a
        deadline); how many rows it still holds."""
        if not self._held:
            return 0
        async with self.store.transaction() as tx:
            extended = tx.clock.now() + timedelta(seconds=self.lease_seconds)
            result = await tx.conn.execute(
                sa.update(job_leases)
                .where(job_leases.c.owner == self.owner, job_leases.c.incident_id.in_(list(self._held)))
                .values(
                    expires_at=sa.case(
                        (job_leases.c.deadline_at < extended, job_leases.c.deadline_at), else_=extended
                    )
                )
            )
            return int(result.rowcount)

    async def _renew_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while self._held:
            await self.clock.sleep(interval)
            try:
                await self.renew_once()
            except StoreError as exc:  # the leases lapse if this goes on: the reconciler steps in
                log.warning("job leases not renewed: %s", exc)

    async def aclose(self) -> None:
        """Stop renewing (the jobs themselves are stopped by `JobTracker.aclose`)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- the table

    async def take_in(
        self,
        tx: Tx,
        incident_id: int,
        job: str,
        *,
        max_seconds: float,
        expect_token: int | None = None,
    ) -> Lease | None:
        """This replica now runs `job` of the incident: a new token, the lease, the deadline.

        The attempts of the same job so far are kept (a retry); another job starts from zero. With
        `expect_token` (a retry of a lapsed job) it is a compare-and-set: None when the lease is no
        longer the one seen (someone took it meanwhile) or somebody holds it.
        """
        now = tx.clock.now()
        deadline = now + timedelta(seconds=max_seconds)
        row = (
            await tx.conn.execute(sa.select(job_leases).where(job_leases.c.incident_id == incident_id))
        ).first()
        values = {
            "job": job,
            "owner": self.owner,
            "expires_at": min(now + timedelta(seconds=self.lease_seconds), deadline),
            "deadline_at": deadline,
            "retry_at": None,
            "updated_at": now,
        }
        if row is None:
            if expect_token is not None:
                return None
            await tx.conn.execute(
                job_leases.insert().values(
                    incident_id=incident_id, token=1, attempts=0, last_error=None, **values
                )
            )
            return Lease(incident_id, job, self.owner, 1, deadline, 0)
        if expect_token is not None and (row.token != expect_token or row.owner is not None):
            return None
        attempts = row.attempts if row.job == job else 0
        extra = {} if row.job == job else {"last_error": None}
        result = await tx.conn.execute(
            sa.update(job_leases)
            .where(job_leases.c.incident_id == incident_id, job_leases.c.token == row.token)
            .values(token=row.token + 1, attempts=attempts, **values, **extra)
        )
        if result.rowcount != 1:
            return None
        return Lease(incident_id, job, self.owner, row.token + 1, deadline, attempts)

    async def switch_in(self, tx: Tx, lease: Lease, job: str) -> Lease:
        """The same job goes on as another kind (remediation → verification), under the same
        deadline; LeaseLost when it was taken back meanwhile."""
        result = await tx.conn.execute(
            sa.update(job_leases)
            .where(
                job_leases.c.incident_id == lease.incident_id,
                job_leases.c.token == lease.token,
                job_leases.c.owner == lease.owner,
            )
            .values(job=job, updated_at=tx.clock.now())
        )
        if result.rowcount != 1:
            raise LeaseLost(f"the {lease.job} job of incident {lease.incident_id} was taken back")
        return Lease(lease.incident_id, job, lease.owner, lease.token, lease.deadline_at, lease.attempts)

    async def check_in(self, tx: Tx, lease: Lease) -> None:
        """LeaseLost unless `lease` is still the incident's current one."""
        if not await self.holds_in(tx, lease):
            raise LeaseLost(f"the {lease.job} job of incident {lease.incident_id} was taken back")

    async def holds_in(self, tx: Tx, lease: Lease) -> bool:
        """True while `lease` is still the incident's current one (nobody took it back since)."""
        row = (
            await tx.conn.execute(
                sa.select(job_leases.c.token, job_leases.c.owner).where(
                    job_leases.c.incident_id == lease.incident_id
                )
            )
        ).first()
        return row is not None and row.token == lease.token and row.owner == lease.owner

    async def release_in(self, tx: Tx, lease: Lease) -> None:
        """The job is done (the incident left the transient state): the row goes, attempts with it."""
        await tx.conn.execute(
            sa.delete(job_leases).where(
                job_leases.c.incident_id == lease.incident_id, job_leases.c.token == lease.token
            )
        )

    async def fail_in(self, tx: Tx, lease: Lease, error: str, *, retry_at: datetime) -> int | None:
        """The job failed cleanly: nobody holds it, one more attempt counted, retried after `retry_at`.

        Returns the attempts so far, or None when the lease had been taken back meanwhile."""
        result = await tx.conn.execute(
            sa.update(job_leases)
            .where(job_leases.c.incident_id == lease.incident_id, job_leases.c.token == lease.token)
            .values(
                owner=None,
                expires_at=None,
                attempts=job_leases.c.attempts + 1,
                retry_at=retry_at,
                last_error=error[:2000],
                updated_at=tx.clock.now(),
            )
            .returning(job_leases.c.attempts)
        )
        attempts = result.scalar_one_or_none()
        return None if attempts is None else int(attempts)

    async def mark_lost_in(
        self,
        tx: Tx,
        incident: Incident,
        seen: LeaseState | None,
        reason: str,
        *,
        retry_at: datetime,
    ) -> int | None:
        """The reconciler's take-back: the lapsed lease `seen` is no one's now, one more attempt
        counted, retried after `retry_at`. Compare-and-set on the token `seen` had and on its expiry:
        a lease renewed or taken meanwhile is left alone (None). An incident without a row gets one."""
        now = tx.clock.now()
        values = {
            "owner": None,
            "expires_at": None,
            "retry_at": retry_at,
            "last_error": reason[:2000],
            "updated_at": now,
        }
        job = JOB_OF_STATUS.get(incident.status, "diagnosis")
        if seen is None:
            inserted = await tx.conn.execute(
                _insert(tx, job_leases)
                .values(incident_id=incident.id, job=job, token=1, attempts=1, deadline_at=None, **values)
                .on_conflict_do_nothing()
                .returning(job_leases.c.attempts)
            )
            first = inserted.scalar_one_or_none()
            return None if first is None else int(first)
        attempts = seen.attempts + 1 if seen.job == job else 1
        result = await tx.conn.execute(
            sa.update(job_leases)
            .where(
                job_leases.c.incident_id == incident.id,
                job_leases.c.token == seen.token,
                sa.or_(job_leases.c.expires_at.is_(None), job_leases.c.expires_at < now),
            )
            .values(job=job, token=seen.token + 1, attempts=attempts, deadline_at=None, **values)
            .returning(job_leases.c.attempts)
        )
        taken = result.scalar_one_or_none()
        return None if taken is None else int(taken)

    async def lapsed(self, tx: Tx, *, diagnosis_grace: timedelta, limit: int) -> list[Lapsed]:
        """Incidents no replica works on, oldest first (at most `limit`), leaving out the jobs this
        process runs:

        - in a transient status, with no lease, or one that expired (its job died or overran);
        - `open` without a diagnosis, with no job held, past `diagnosis_grace` since its last change
          (a diagnosis lost before it began, or one failed and waiting for its retry).
        """
        now = tx.clock.now()
        lapsed_lease = sa.or_(
            job_leases.c.incident_id.is_(None),
            job_leases.c.expires_at.is_(None),
            job_leases.c.expires_at < now,
        )
        transient = incidents.c.status.in_(TRANSIENT)
        undiagnosed = sa.and_(
            incidents.c.status == "open",
            incidents.c.diagnosis.is_(None),
            incidents.c.updated_at < now - diagnosis_grace,
        )
        stmt = (
            sa.select(incidents, *_lease_columns())
            .select_from(incidents.outerjoin(job_leases, job_leases.c.incident_id == incidents.c.id))
            .where(sa.or_(transient, undiagnosed), lapsed_lease)
            .order_by(incidents.c.opened_at, incidents.c.id)
            .limit(limit)
        )
        running_here = self.held()
        if running_here:
            stmt = stmt.where(incidents.c.id.not_in(running_here))
        found = []
        for row in await tx.conn.execute(stmt):
            mapping = dict(row._mapping)
            record = {c.name: mapping[c.name] for c in incidents.c}
            found.append(Lapsed(Incident.model_validate(record), _state(_LeaseRow(mapping))))
        return found

    async def of(self, tx: Tx, incident_id: int) -> LeaseState | None:
        """The lease row of one incident, or None."""
        row = (
            await tx.conn.execute(sa.select(job_leases).where(job_leases.c.incident_id == incident_id))
        ).first()
        return _state(row)

    async def prune_in(self, tx: Tx) -> int:
        """Drop the rows of incidents that left every transient status for good (resolved, escalated,
        closed) — rows a job could not delete when it ended."""
        finished = sa.select(incidents.c.id).where(incidents.c.status.in_(TERMINAL_INCIDENT_STATUSES))
        result = await tx.conn.execute(sa.delete(job_leases).where(job_leases.c.incident_id.in_(finished)))
        return int(result.rowcount)


class _LeaseRow:
    """The lease columns of a joined row, under their own names (`_lease_columns` labels them)."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self.incident_id = mapping["lease_incident_id"]
        self.job = mapping["lease_job"]
        self.owner = mapping["lease_owner"]
        self.token = mapping["lease_token"]
        self.expires_at = mapping["lease_expires_at"]
        self.attempts = mapping["lease_attempts"]
        self.retry_at = mapping["lease_retry_at"]
        self.last_error = mapping["lease_last_error"]


def _lease_columns() -> list[sa.Label[Any]]:
    c = job_leases.c
    return [
        c.incident_id.label("lease_incident_id"),
        c.job.label("lease_job"),
        c.owner.label("lease_owner"),
        c.token.label("lease_token"),
        c.expires_at.label("lease_expires_at"),
        c.attempts.label("lease_attempts"),
        c.retry_at.label("lease_retry_at"),
        c.last_error.label("lease_last_error"),
    ]


def _insert(tx: Tx, table: sa.Table) -> Any:
    """The dialect's INSERT (with ON CONFLICT) for the transaction's database."""
    if tx.conn.dialect.name == "postgresql":
        return pg_dialect.insert(table)
    return sqlite_dialect.insert(table)
