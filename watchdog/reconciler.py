"""The reconciler: no incident stays in a transient state because its job was lost.

Run by the sweep leader at the start of every sweep (`watchdog.sweeps.Sweeper.reconcile`, wired by
`watchdog.assembly`), and callable once (`reconcile_once`) by tests and tools. It reads, in one
query, the incidents whose job no replica runs (`watchdog.leases.JobLeases.lapsed`): in `diagnosing`,
`remediating` or `verifying` with a lease that expired (the job's process died, its writes failed,
or it overran its deadline), or `open` without a diagnosis and nobody diagnosing it. For each:

    lease still named an owner  ──▶ taken back: the job is marked lost (one more attempt, the reason,
      (the job is lost)              a retry time after a backoff); a lost diagnosis goes back to `open`
    attempts used up            ──▶ escalated with the reason (remediation's `escalate`: notified)
    due for its retry           ──▶ diagnosis queued again (`DiagnosisService.start`), or the
                                    remediation resumed on this replica (`RemediationService.retry`:
                                    steps done are never repeated) as a tracked job
    not due yet                 ──▶ left for a later sweep

Every take-back is a compare-and-set on the lease's token and its expiry, so two leaders for a moment
cannot both take one incident back, a live job of another process (another replica, or `gl-watchdog
sweep` beside `serve`) is never taken, and a job that was only slow finds out (`LeaseLost`) before it
writes. What a dead process left behind in a single-watchdog set-up (no Redis) is resumed by the next
start instead (`Watchdog.start`).
Bounds (docs/architecture.md, "Bounds on transient states"): an attempt holds its incident at most
its deadline, a lapsed lease is seen within one sweep, and after `max_attempts` attempts the incident
is escalated, so every transient state ends within a bounded, documented time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from gl_common.clock import Clock
from watchdog.diagnosis import Backoff, DiagnosisService
from watchdog.errors import InvalidTransition
from watchdog.incidents import transition_in
from watchdog.jobs import JobTracker
from watchdog.leases import JOB_OF_STATUS, JobLeases, Lapsed
from watchdog.metrics import WatchdogMetrics
from watchdog.remediation import RemediationService
from watchdog.remediation_close import ACTOR
from watchdog.store import WatchdogStore
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

BATCH: Final = 200  # incidents looked at per round; the rest wait for the next sweep, oldest first


@dataclass
class ReconcileReport:
    """What one round did, by incident id."""

    taken_back: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # lost or failed, not yet due for a retry


class Reconciler:
    """Takes back, retries and escalates incidents whose job no replica runs."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        leases: JobLeases,
        diagnosis: DiagnosisService,
        remediation: RemediationService,
        jobs: JobTracker,
        metrics: WatchdogMetrics,
        clock: Clock,
        max_attempts: int,
        backoff: Backoff,
        diagnosis_grace: timedelta,
    ) -> None:
        self.store = store
        self.leases = leases
        self.diagnosis = diagnosis
        self.remediation = remediation
        self.jobs = jobs
        self.metrics = metrics
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff = backoff
        # An open incident without a diagnosis is left to whoever queued it for this long.
        self.diagnosis_grace = diagnosis_grace

    async def reconcile_once(self) -> ReconcileReport:
        """One round over the incidents whose job no replica runs (at most BATCH, oldest first)."""
        report = ReconcileReport()
        async with self.store.transaction() as tx:
            await self.leases.prune_in(tx)
            found = await self.leases.lapsed(tx, diagnosis_grace=self.diagnosis_grace, limit=BATCH)
        for lapsed in found:
            try:
                await self._settle(lapsed, report)
            except WatchdogError as exc:  # one incident's trouble never stops the round
                log.warning("reconciling incident %s failed: %s", lapsed.incident.id, exc)
        if report.taken_back or report.retried or report.escalated:
            log.info(
                "reconciler: taken back %s, retried %s, escalated %s",
                report.taken_back,
                report.retried,
                report.escalated,
            )
        return report

    async def _settle(self, lapsed: Lapsed, report: ReconcileReport) -> None:
        incident, lease = lapsed.incident, lapsed.lease
        job = JOB_OF_STATUS.get(incident.status, "diagnosis")
        if incident.status == "open" and lease is None:  # a diagnosis never begun: queue it
            self._retry(lapsed, report)
            return
        if lease is None or lease.owner is not None or incident.status == "diagnosing":
            attempts = await self._take_back(lapsed)
            if attempts is None:
                return  # renewed or taken meanwhile
            report.taken_back.append(incident.id)
            self.metrics.jobs_reconciled.labels(job=job, action="taken_back").inc()
            if attempts >= self.max_attempts:
                await self._escalate(lapsed, attempts, lapsed_reason(lapsed), report)
            else:
                report.waiting.append(incident.id)
            return
        if lease.attempts >= self.max_attempts:
            await self._escalate(lapsed, lease.attempts, lease.last_error or "no reason recorded", report)
        elif lease.retry_at is None or lease.retry_at <= self.clock.now():
            self._retry(lapsed, report)
        else:
            report.waiting.append(incident.id)

    async def _take_back(self, lapsed: Lapsed) -> int | None:
        """Mark the job lost (a diagnosis goes back to `open`), audited; the attempts so far."""
        incident, seen = lapsed.incident, lapsed.lease
        reason = lapsed_reason(lapsed)
        attempts_before = 0 if seen is None else seen.attempts
        retry_at = self.clock.now() + timedelta(seconds=self.backoff(attempts_before + 1))
        async with self.store.transaction() as tx:
            attempts = await self.leases.mark_lost_in(tx, incident, seen, reason, retry_at=retry_at)
            if attempts is None:
                return None
            await tx.add_audit(
                incident.id,
                "job_lost",
                actor=ACTOR,
                data={"status": incident.status, "reason": reason, "attempts": attempts},
            )
            if incident.status == "diagnosing":
                try:
                    await transition_in(
                        tx,
                        incident.id,
                        "open",
                        actor=ACTOR,
                        reason=f"diagnosis taken back: {reason}",
                        expected=["diagnosing"],
                    )
                except InvalidTransition:
                    return None  # moved on meanwhile: the whole take-back rolls back
        return attempts

    def _retry(self, lapsed: Lapsed, report: ReconcileReport) -> None:
        incident, lease = lapsed.incident, lapsed.lease
        if incident.status == "open":
            if self.diagnosis.start(incident) is not None:
                report.retried.append(incident.id)
                self.metrics.jobs_reconciled.labels(job="diagnosis", action="retried").inc()
            return
        if lease is None or incident.status not in ("remediating", "verifying"):
            return
        spawned = self.jobs.spawn(
            self.remediation.retry(incident, lease.token), name=f"retry-remediation-{incident.id}"
        )
        if spawned is not None:
            report.retried.append(incident.id)
            self.metrics.jobs_reconciled.labels(job=JOB_OF_STATUS[incident.status], action="retried").inc()

    async def _escalate(self, lapsed: Lapsed, attempts: int, why: str, report: ReconcileReport) -> None:
        incident = lapsed.incident
        job = JOB_OF_STATUS.get(incident.status, "diagnosis")
        status = "open" if incident.status == "diagnosing" else incident.status
        reason = (
            f"the {job} of this incident did not finish in {attempts} attempt(s); last: {why}. "
            "Escalated by the reconciler: see the incident's audit log"
        )
        outcome = await self.remediation.closing.escalate(incident.id, reason, expected=(status,))
        if outcome.status == "escalated":
            report.escalated.append(incident.id)
            self.metrics.jobs_reconciled.labels(job=job, action="escalated").inc()


def transient_bound_seconds(
    *,
    deadline_seconds: float,
    lease_seconds: float,
    sweep_interval_seconds: float,
    leader_ttl_seconds: float,
    attempts: int,
    backoff: Backoff,
) -> float:
    """The longest an incident can stay with a job of one kind before it is final or escalated.

    Each attempt ends within its deadline, plus one lease (its process died: nobody renews), plus one
    sweep (the leader sees the lapse), plus one leader lease (the leader died too); a retry waits its
    backoff plus one sweep; the last attempt lost is escalated in the round that sees it.
    """
    per_attempt = deadline_seconds + lease_seconds + sweep_interval_seconds
    waits = sum(backoff(n) + sweep_interval_seconds for n in range(1, attempts))
    return attempts * per_attempt + waits + leader_ttl_seconds


def lapsed_reason(lapsed: Lapsed) -> str:
    """Why the job of `lapsed` counts as lost, in words for the audit log and the escalation."""
    lease = lapsed.lease
    status = lapsed.incident.status
    if lease is None:
        return f"no job holds this {status} incident (left by a process that is gone)"
    if lease.owner is None:
        return lease.last_error or "its last attempt failed"
    expired = "" if lease.expires_at is None else f" expired at {lease.expires_at.isoformat()}"
    return f"the {lease.job} job of {lease.owner} stopped renewing its lease (lease{expired})"
