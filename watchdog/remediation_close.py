"""How a remediation ends and is told: its writes retried, its audit entries, closing `resolved` or
`escalated`, the notifications to on-call, and the outcome counters.

Where it sits: part of the one remediation state machine (`watchdog.remediation`), which holds one
`Closing` (`RemediationService.closing`); the responder (`watchdog.responder`: no plan, observe mode,
a denied or expired prompt, the prompt's notification) and the reconciler (`watchdog.reconciler`:
attempts run out) close incidents through it too. Uses the incidents' transitions
(`watchdog.incidents.transition_in`), the job leases (a job closing its own incident checks and drops
its lease in the same transaction), the limits (a failed remediation counts toward the circuit
breaker in that transaction) and the notifier.

A write of a remediation is retried while the store is briefly out of reach (`save`); a notification
is audited before and after, and a failed delivery is logged, never raised. The pages of a run
follow its incidents through two hooks the composition root sets
(`watchdog.notify_router.PageResolver`): `on_resolved` when an incident resolves (the pages of its
run's escalated incidents resolve), `on_taken` when a named person starts or approves a playbook on
a run and `on_denied` when one denies one (they are acknowledged).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from gl_common.clock import Clock
from watchdog.errors import InvalidTransition, StoreUnavailable
from watchdog.incidents import IncidentService, transition_in
from watchdog.jobs import retried
from watchdog.leases import JobLeases, Lease
from watchdog.limits import RemediationLimits
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import EscalationMessage, Notifier, NotifyResult
from watchdog.plan import Plan
from watchdog.records import Incident
from watchdog.store import WatchdogStore

log = logging.getLogger(__name__)

ACTOR: Final = "watchdog"


@dataclass(frozen=True)
class Outcome:
    """How one pass over an incident ended."""

    incident_id: int
    status: str
    detail: str


def _rule_of(plan: Plan | None) -> str | None:
    """The policy rule that planned an incident (its `escalate_to` routes the escalation)."""
    return None if plan is None else plan.rule


class Closing:
    """The closing writes, audit entries and notifications of remediations."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        incidents: IncidentService,
        leases: JobLeases,
        limits: RemediationLimits,
        notifier: Notifier,
        clock: Clock,
        metrics: WatchdogMetrics | None = None,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.leases = leases
        self.limits = limits
        self.notifier = notifier
        self.clock = clock
        self.metrics = metrics
        # Told of every incident resolved, of every run a person took over and of every prompt a
        # person denied (None: nobody).
        self.on_resolved: Callable[[Incident], object] | None = None
        self.on_taken: Callable[[Incident, str], object] | None = None
        self.on_denied: Callable[[Incident, str], object] | None = None

    def taken(self, incident: Incident, actor: str) -> None:
        """`actor` (a person, not the watchdog) started a playbook on `incident`'s run."""
        if self.on_taken is not None and actor != ACTOR:
            self.on_taken(incident, actor)

    def denied(self, incident: Incident, actor: str) -> None:
        """`actor` (a person, not the watchdog) denied the playbook planned for `incident`."""
        if self.on_denied is not None and actor != ACTOR:
            self.on_denied(incident, actor)

    async def save(self, write: Callable[[], Awaitable[Any]]) -> Any:
        """A write of a remediation, tried again while the store is briefly out of reach."""
        return await retried(
            write, what="saving a remediation", retry_on=(StoreUnavailable,), sleep=self.clock.sleep
        )

    async def record(
        self,
        incident_id: int,
        kind: str,
        *,
        phase: str = "after",
        actor: str = ACTOR,
        data: dict[str, Any] | None = None,
    ) -> None:
        """An audit entry of a remediation (`incidents.record`), retried like every write of a job."""
        await self.save(lambda: self.incidents.record(incident_id, kind, phase=phase, actor=actor, data=data))

    async def resolve(self, lease: Lease, expected: str, *, actor: str, reason: str, **values: Any) -> None:
        """Close the job's own incident `resolved` from `expected`, its lease checked and dropped in the
        same transaction (retried while the store is briefly out of reach)."""

        async def write() -> Incident:
            async with self.store.transaction() as tx:
                await self.leases.check_in(tx, lease)
                resolved = await transition_in(
                    tx,
                    lease.incident_id,
                    "resolved",
                    actor=actor,
                    reason=reason,
                    expected=(expected,),
                    **values,
                )
                await self.leases.release_in(tx, lease)
            return resolved

        incident = await self.save(write)
        await self.incidents.refresh_gauge()
        if self.on_resolved is not None:
            self.on_resolved(incident)

    # -- closing as escalated, and telling on-call

    async def escalate(
        self,
        incident_id: int,
        reason: str,
        *,
        plan: Plan | None = None,
        summary: str = "",
        expected: tuple[str, ...] | None = None,
        failed: bool = False,
        playbook: str | None = None,
        outcome: str = "escalated",
        verification: dict[str, Any] | None = None,
        actor: str = ACTOR,
        lease: Lease | None = None,
    ) -> Outcome:
        """Close the incident as escalated with `reason` and notify on-call; a `failed` remediation
        counts toward the circuit breaker (in the same transaction). A job closing its own incident
        gives its `lease`: checked and dropped in the same transaction."""
        values: dict[str, Any] = {"summary": reason}
        if verification is not None:
            values["verification"] = verification

        async def close() -> Incident:
            async with self.store.transaction() as tx:
                if lease is not None:
                    await self.leases.check_in(tx, lease)
                if failed:
                    await self.limits.count_failure_in(tx)
                closed = await transition_in(
                    tx, incident_id, "escalated", actor=actor, reason=reason, expected=expected, **values
                )
                if lease is not None:
                    await self.leases.release_in(tx, lease)
            return closed

        try:
            incident = await self.save(close)
        except InvalidTransition as exc:
            log.info("incident %s not escalated: %s", incident_id, exc)
            return Outcome(incident_id, "unchanged", str(exc))
        await self.incidents.refresh_gauge()
        if playbook is not None:
            self.count(playbook, outcome)
        message = EscalationMessage(
            incident_id=incident_id,
            execution_id=incident.execution_id,
            reason=reason,
            diagnosis_summary=summary,
            plan_headline=plan.headline() if plan else "",
            rule=_rule_of(plan or incident.plan),
        )
        await self.notify(incident_id, "escalation_notified", self.notifier.escalated(message))
        return Outcome(incident_id, "escalated", reason)

    async def notify(self, incident_id: int, kind: str, sending: Awaitable[NotifyResult]) -> NotifyResult:
        """Deliver a notification, audited before and after (a failed delivery is logged, never raised)."""
        await self.record(incident_id, kind, phase="before", actor=ACTOR, data={})
        result = await sending
        if not result.ok:
            log.warning("notifier failed for incident %s: %s", incident_id, result.detail)
        await self.record(incident_id, kind, actor=ACTOR, data=result.as_dict())
        return result

    def count(self, playbook: str, outcome: str) -> None:
        """Count a remediation outcome (`gl_watchdog_remediations_total`)."""
        if self.metrics is not None:
            self.metrics.remediations.labels(playbook=playbook, outcome=outcome).inc()
