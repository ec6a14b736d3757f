"""Incidents: open-or-join by execution id, state transitions, close; every change audited.

Called by the intake (`watchdog.intake`, firing/resolved alerts), the sweeps (`watchdog.sweeps`), the
API/CLI (`diagnose`), the diagnosis jobs (`watchdog.diagnosis`), the responder and the remediation
state machine. Uses the store (`watchdog.store`) only; each operation is one transaction, in which
the incident row and its audit entry are written together: an entry that opens or closes an
escalated incident's page (`record`) sets `page_open`, which the sweep's page resolver reads.

At most one incident is open per execution id. That is the store's partial unique index, not a
check-then-insert: `open_or_join` inserts with ON CONFLICT DO NOTHING and, when it loses, joins the
incident that won — so two replicas (or two deliveries) racing to open both end up on the same row.

Statuses and the moves allowed between them:

    open ──▶ diagnosing ──▶ open (diagnosed, nothing to do yet)
      │          │      └─▶ awaiting_approval ──▶ remediating ──▶ verifying ──▶ resolved
      │          │                 │                  │              │     └─▶ escalated
      └──────────┴─────────────────┴──▶ closed         └──────────────┴──▶ escalated
    (resolved, escalated and closed are terminal)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from watchdog.breaker import failures_in, is_open
from watchdog.errors import IncidentNotFound, InvalidTransition
from watchdog.metrics import WatchdogMetrics
from watchdog.migrations import TERMINAL_INCIDENT_STATUSES, page_change
from watchdog.policy import CircuitBreaker
from watchdog.records import Action, Approval, AuditEntry, Incident
from watchdog.store import Tx, WatchdogStore

TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "open": frozenset({"diagnosing", "awaiting_approval", "remediating", "resolved", "escalated", "closed"}),
    "diagnosing": frozenset({"open", "awaiting_approval", "remediating", "resolved", "escalated", "closed"}),
    "awaiting_approval": frozenset({"open", "diagnosing", "remediating", "escalated", "closed"}),
    "remediating": frozenset({"verifying", "resolved", "escalated"}),
    "verifying": frozenset({"remediating", "resolved", "escalated"}),
    "resolved": frozenset(),
    "escalated": frozenset(),
    "closed": frozenset(),
}
# Statuses in which nothing has been done to the execution yet: a resolved alert may close these.
NOT_ACTED_STATUSES: Final = frozenset({"open", "diagnosing", "awaiting_approval"})
TERMINAL: Final = frozenset(TERMINAL_INCIDENT_STATUSES)


@dataclass(frozen=True)
class OpenResult:
    """What `open_or_join` did: the incident, and whether this call created it."""

    incident: Incident
    created: bool


@dataclass(frozen=True)
class IncidentDetail:
    """An incident with everything recorded about it (the API's `GET /incidents/{id}`)."""

    incident: Incident
    actions: list[Action]
    approvals: list[Approval]
    audit: list[AuditEntry]


class _EscalatedMeanwhile(Exception):
    """Rolls back an incident opened while the run's earlier one was escalated."""


async def _escalated(tx: Tx, execution_id: str) -> bool:
    return bool(await tx.list_incidents(statuses=["escalated"], execution_id=execution_id, limit=1))


async def open_or_join_in(
    tx: Tx,
    execution_id: str,
    *,
    dag_id: str | None,
    source: str,
    detection_source: str,
    actor: str,
    summary: str | None = None,
    audit_join: bool = True,
    data: Mapping[str, Any] | None = None,
) -> OpenResult:
    """Open an incident for `execution_id`, or join the one already open, inside `tx`.

    Audits `incident_opened` (or `incident_joined` when `audit_join`). Retries a few times if the
    winner of a race was closed between our conflict and our read.
    """
    extra = dict(data or {})
    for _ in range(5):
        created = await tx.insert_incident(
            execution_id=execution_id,
            dag_id=dag_id,
            source=source,
            detection_source=detection_source,
            summary=summary,
        )
        if created is not None:
            await tx.add_audit(
                created.id,
                "incident_opened",
                actor=actor,
                data={
                    "execution_id": execution_id,
                    "source": source,
                    "detection_source": detection_source,
                    **extra,
                },
            )
            return OpenResult(created, True)
        existing = await tx.get_open_incident(execution_id)
        if existing is not None:
            if audit_join:
                await tx.add_audit(
                    existing.id,
                    "incident_joined",
                    actor=actor,
                    data={"source": source, "detection_source": detection_source, **extra},
                )
            return OpenResult(existing, False)
    raise InvalidTransition(0, None, "open", f"could not open or join an incident for {execution_id!r}")


async def transition_in(
    tx: Tx,
    incident_id: int,
    to: str,
    *,
    actor: str,
    reason: str,
    expected: Collection[str] | None = None,
    data: Mapping[str, Any] | None = None,
    **values: Any,
) -> Incident:
    """Move an incident to `to` (checked against TRANSITIONS and `expected`), audited, inside `tx`.

    `values` are other columns to set in the same update (summary, plan, verification...). Raises
    IncidentNotFound, or InvalidTransition when the move is not allowed from the current status.
    """
    current = await tx.get_incident(incident_id)
    if current is None:
        raise IncidentNotFound(f"no incident {incident_id}")
    if expected is not None and current.status not in expected:
        raise InvalidTransition(incident_id, current.status, to)
    if to not in TRANSITIONS.get(current.status, frozenset()):
        raise InvalidTransition(incident_id, current.status, to)
    if to in TERMINAL:
        values.setdefault("closed_at", tx.clock.now())
    updated = await tx.update_incident(incident_id, expected_status=[current.status], status=to, **values)
    if updated is None:  # changed under us between the read and the update
        raise InvalidTransition(
            incident_id, current.status, to, f"incident {incident_id} changed concurrently"
        )
    await tx.add_audit(
        incident_id,
        "state",
        actor=actor,
        data={"from": current.status, "to": to, "reason": reason, **dict(data or {})},
    )
    return updated


class IncidentService:
    """Incident operations, one transaction each. The store-wide gauges (open incidents and the held
    ones among them, pending approvals and their age, the circuit breaker of `breaker`) are read at
    scrape time (`refresh_gauges`) and at start, not after every change."""

    def __init__(
        self,
        store: WatchdogStore,
        metrics: WatchdogMetrics | None = None,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker()

    async def open_or_join(
        self,
        execution_id: str,
        *,
        dag_id: str | None,
        source: str,
        detection_source: str,
        actor: str = "watchdog",
        summary: str | None = None,
        audit_join: bool = True,
        data: Mapping[str, Any] | None = None,
    ) -> OpenResult:
        """Open the incident of `execution_id` or join the open one (idempotent under concurrency);
        `data` goes into the audit entry (e.g. a sweep's cause, severity and evidence)."""
        async with self.store.transaction() as tx:
            result = await open_or_join_in(
                tx,
                execution_id,
                dag_id=dag_id,
                source=source,
                detection_source=detection_source,
                actor=actor,
                summary=summary,
                audit_join=audit_join,
                data=data,
            )
        if result.created:
            self.opened(source)
        return result

    async def open_unless_escalated(
        self,
        execution_id: str,
        *,
        dag_id: str | None,
        detection_source: str,
        summary: str | None,
        data: Mapping[str, Any] | None,
    ) -> OpenResult | None:
        """What the sweep does for a stuck run: open its incident or join the open one, unless an
        incident of the run was escalated (on-call owns it): then None, and nothing is written.

        One transaction checks and opens, and checks again after opening: an escalation that
        commits meanwhile (the run's diagnosis ending while the sweep looks) rolls the new incident
        back, so a run never gets a second incident behind an escalated one. The insert of a new
        incident waits on the open one's uncommitted escalation (the partial unique index), so the
        second check sees it on PostgreSQL too; SQLite's writers take turns anyway.
        """
        try:
            async with self.store.transaction() as tx:
                if await _escalated(tx, execution_id):
                    return None
                result = await open_or_join_in(
                    tx,
                    execution_id,
                    dag_id=dag_id,
                    source="sweep",
                    detection_source=detection_source,
                    actor="sweep",
                    summary=summary,
                    audit_join=False,
                    data=data,
                )
                if result.created and await _escalated(tx, execution_id):
                    raise _EscalatedMeanwhile
        except _EscalatedMeanwhile:
            return None
        if result.created:
            self.opened("sweep")
        return result

    async def transition(
        self,
        incident_id: int,
        to: str,
        *,
        actor: str,
        reason: str,
        expected: Collection[str] | None = None,
        data: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> Incident:
        """Move an incident to `to`; see `transition_in`."""
        async with self.store.transaction() as tx:
            incident = await transition_in(
                tx, incident_id, to, actor=actor, reason=reason, expected=expected, data=data, **values
            )
        return incident

    async def close_if_not_acted(self, incident_id: int, *, actor: str, reason: str) -> Incident:
        """Close, by hand, an incident that has not acted yet (no action recorded, not
        remediating/verifying); its time to close is observed (`closed_by_hand`).

        Pending approval prompts of the incident expire with it. Raises InvalidTransition when the
        incident has acted or is already finished, IncidentNotFound when it does not exist.
        """
        async with self.store.transaction() as tx:
            incident = await close_if_not_acted_in(tx, incident_id, actor=actor, reason=reason)
        self.closed_without_action(incident, "closed_by_hand")
        return incident

    def closed_without_action(self, incident: Incident, outcome: str) -> None:
        """Observe the time to close of `incident`, closed (committed) without a remediation."""
        if self.metrics is not None:
            self.metrics.observe_closed_without_action(incident, outcome)

    async def observe_alert_closed(self, incident_id: int) -> None:
        """The intake closed `incident_id` as its alert resolved before anything acted (it tells only
        the id, after the commit): read it and observe its time to close (`resolved_without_action`)."""
        self.closed_without_action(await self.get(incident_id), "resolved_without_action")

    async def record(
        self,
        incident_id: int | None,
        kind: str,
        *,
        phase: str = "after",
        actor: str = "watchdog",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an audit entry (a step, a note) without changing the incident; an entry that opens
        or closes its page (`page_change`: an escalation delivered, a resolve the pagers took) sets
        the row's `page_open` in the same transaction."""
        change = page_change(kind, phase, data or {})
        async with self.store.transaction() as tx:
            await tx.add_audit(incident_id, kind, phase=phase, actor=actor, data=data)
            if change is not None and incident_id is not None:
                await tx.set_page_open(incident_id, change)

    async def update(
        self, incident_id: int, *, kind: str, actor: str, data: Mapping[str, Any] | None = None, **values: Any
    ) -> Incident:
        """Set columns (diagnosis, plan, verification, summary) without a status change, audited."""
        async with self.store.transaction() as tx:
            incident = await tx.update_incident(incident_id, **values)
            if incident is None:
                raise IncidentNotFound(f"no incident {incident_id}")
            await tx.add_audit(
                incident_id, kind, actor=actor, data={"fields": sorted(values), **dict(data or {})}
            )
        return incident

    async def has_escalated(self, execution_id: str) -> bool:
        """True when an incident of `execution_id` was escalated to on-call."""
        async with self.store.read() as tx:
            return await _escalated(tx, execution_id)

    async def get(self, incident_id: int) -> Incident:
        """The incident, or IncidentNotFound."""
        incident = await self.store.get_incident(incident_id)
        if incident is None:
            raise IncidentNotFound(f"no incident {incident_id}")
        return incident

    async def detail(self, incident_id: int) -> IncidentDetail:
        """The incident with its actions, approvals and audit log."""
        async with self.store.read() as tx:
            incident = await tx.get_incident(incident_id)
            if incident is None:
                raise IncidentNotFound(f"no incident {incident_id}")
            return IncidentDetail(
                incident=incident,
                actions=await tx.list_actions(incident_id=incident_id),
                approvals=await tx.list_approvals(incident_id=incident_id),
                audit=await tx.list_audit(incident_id),
            )

    def opened(self, source: str) -> None:
        """Count an incident opened (for callers that opened one inside their own transaction)."""
        if self.metrics is not None:
            self.metrics.incidents_opened.labels(source=source).inc()

    async def refresh_gauge(self) -> None:
        """Set `gl_watchdog_open_incidents` and `gl_watchdog_incidents_held` from the store."""
        if self.metrics is None:
            return
        async with self.store.read() as tx:
            self.metrics.observe_incident_counts(await tx.count_unfinished_incidents())

    async def refresh_approvals_gauge(self) -> None:
        """Set the pending approvals' gauges (count, oldest age, past expiry) from the store."""
        if self.metrics is None:
            return
        async with self.store.read() as tx:
            pending = await tx.list_approvals(states=["pending"])
            self.metrics.observe_pending_approvals(pending, tx.clock.now())

    async def refresh_gauges(self) -> None:
        """Every store-wide gauge, read in one transaction: called before every scrape of `/metrics`,
        so that every replica reports the same figures, not only the one whose change last set them."""
        if self.metrics is None:
            return
        async with self.store.read() as tx:
            now = tx.clock.now()
            counts = await tx.count_unfinished_incidents()
            pending = await tx.list_approvals(states=["pending"])
            failures = await failures_in(tx, self.breaker, now)
        self.metrics.observe_incident_counts(counts)
        self.metrics.observe_pending_approvals(pending, now)
        self.metrics.circuit_breaker_open.set(1 if is_open(failures, self.breaker) else 0)


async def close_if_not_acted_in(tx: Tx, incident_id: int, *, actor: str, reason: str) -> Incident:
    """`IncidentService.close_if_not_acted` inside an open transaction."""
    incident = await tx.get_incident(incident_id)
    if incident is None:
        raise IncidentNotFound(f"no incident {incident_id}")
    if incident.status not in NOT_ACTED_STATUSES:
        raise InvalidTransition(
            incident_id,
            incident.status,
            "closed",
            f"incident {incident_id} is {incident.status}; not closing it",
        )
    if await tx.list_actions(incident_id=incident_id):
        raise InvalidTransition(
            incident_id,
            incident.status,
            "closed",
            f"incident {incident_id} has already acted; not closing it",
        )
    for approval in await tx.list_approvals(states=["pending"], incident_id=incident_id):
        expired = await tx.update_approval(
            approval.id,
            expected_state=["pending"],
            state="expired",
            decided_at=tx.clock.now(),
            decided_by=actor,
        )
        if expired is not None:
            await tx.add_audit(
                incident_id,
                "approval_expired",
                actor=actor,
                data={"approval_id": approval.id, "reason": reason},
            )
    return await transition_in(
        tx, incident_id, "closed", actor=actor, reason=reason, expected=NOT_ACTED_STATUSES
    )
