"""The suppression gate: Alertmanager silences and the policy's maintenance windows, asked after a
diagnosis and before the watchdog plans, prompts or acts.

Built by the composition root (`watchdog.assembly`) and asked by the responder
(`Responder.handle_diagnosed`) for every diagnosed incident, swept or alerted:

    diagnosis ──▶ incident_labels ──▶ maintenance windows open now (policy, `watchdog.maintenance`)
                                  └─▶ active silences of Alertmanager (`watchdog.silences`, cached)
          covered ──▶ held: audit `suppressed` {suppressed_by: [...]} and, in the same transaction,
                      the incident's `held_kind`/`held_by` columns; status stays `open`,
                      no plan, no prompt, no action
          clear   ──▶ the responder goes on as usual
          Alertmanager unreadable ──▶ `silence_check_failure`:
                      prompt (default): go on, but an automatic action asks a human first
                      act:   go on as if nothing covered the incident
                      hold:  held like a silenced incident until Alertmanager answers again

The columns are what the incident listing filters on (`held=true|false`), what its items show
(`held`, `suppressed_by`) and what `gl_watchdog_incidents_held{kind}` counts, without reading the audit;
the responder clears them (`Tx.release_incident`) in the transaction of its next `plan` decision.

A held incident is looked at again by every sweep while its run is still stuck: the sweeper joins it and
calls `Reevaluation.__call__`, which hands it back to the responder while it is held; when the silence
has expired or the window has closed, the responder plans, prompts or acts as it would have. A run that
is no longer stuck is not swept, and its incident is closed by the usual paths (a resolved alert, the
reconciler).

The labels of an incident (what silences and windows match on): `alertname` (the shipped alert,
`OrchestratorExecutionTimeout`), `execution_id`, `dag_id`, `agent` (the stuck node's agent from the
diagnosis), `node_id`, `likely_cause`, `namespace` (settings), `source` (`sweep` or `alert`) and
`detection_source`. A label the incident does not know is absent (an empty string to Alertmanager's
matchers).

Each check of Alertmanager is counted in `gl_watchdog_silence_checks_total{result}` (`silenced`,
`clear`, `error`); an error is logged and recorded on the incident: audit `silence_check_failed`, or
under `hold` the `check_error` of its `suppressed` entry (written once while the error stays the same,
not at every sweep).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gl_common.clock import Clock
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.maintenance import MaintenanceWindow, active_windows
from watchdog.metrics import WatchdogMetrics
from watchdog.migrations import held_of
from watchdog.plan import Plan
from watchdog.records import AuditEntry, Incident
from watchdog.remediation_close import ACTOR, Outcome
from watchdog.silences import AlertmanagerSilences, AlertmanagerUnavailable
from watchdog_sdk.diagnosis import Diagnosis

log = logging.getLogger(__name__)

SilenceCheckFailure = Literal["prompt", "act", "hold"]
ALERTNAME: Final = "OrchestratorExecutionTimeout"
SUPPRESSED: Final = "suppressed"
# The audit kinds that record the responder's decision on a diagnosis: the last one says whether the
# incident is held by a suppression.
DECISIONS: Final = frozenset({SUPPRESSED, "plan"})


@dataclass(frozen=True)
class Verdict:
    """What the gate found for one incident."""

    suppressed_by: list[dict[str, Any]] = field(default_factory=list)
    check_error: str | None = None  # Alertmanager could not be read
    hold: bool = False  # neither prompt nor act now; look again at the next sweep
    force_prompt: bool = False  # an automatic action must ask a human first

    def applied_to(self, plan: Plan) -> Plan:
        """`plan`, asking a human first when it would act automatically and the check failed."""
        if not (self.force_prompt and plan.will_act and not plan.requires_approval):
            return plan
        why = f"{plan.rationale} (approval required: Alertmanager's silences could not be read)"
        return plan.model_copy(update={"requires_approval": True, "rationale": why})

    def reason(self) -> str:
        """One line for the audit and the outcome."""
        if self.suppressed_by:
            names = ", ".join(f"{s['kind']} {s.get('name') or s.get('id')}" for s in self.suppressed_by)
            return f"held: covered by {names}"
        return f"held: Alertmanager's silences could not be read ({self.check_error})"


def incident_labels(incident: Incident, diagnosis: Diagnosis | None, namespace: str | None) -> dict[str, str]:
    """The labels silences and maintenance windows match on (absent ones left out)."""
    labels = {
        "alertname": ALERTNAME,
        "execution_id": incident.execution_id,
        "dag_id": incident.dag_id or (diagnosis.dag_id if diagnosis else None),
        "agent": diagnosis.agent_id if diagnosis else None,
        "node_id": diagnosis.stuck_node_id if diagnosis else None,
        "likely_cause": diagnosis.likely_cause if diagnosis else None,
        "namespace": namespace,
        "source": incident.source,
        "detection_source": incident.detection_source,
    }
    return {name: value for name, value in labels.items() if value}


class SuppressionGate:
    """Says whether an incident is covered by a silence or a maintenance window right now."""

    def __init__(
        self,
        *,
        incidents: IncidentService,
        clock: Clock,
        windows: list[MaintenanceWindow],
        silences: AlertmanagerSilences | None = None,
        on_failure: SilenceCheckFailure = "prompt",
        namespace: str | None = None,
        metrics: WatchdogMetrics | None = None,
    ) -> None:
        self.incidents = incidents
        self.clock = clock
        self.windows = windows
        self.silences = silences
        self.on_failure = on_failure
        self.namespace = namespace
        self.metrics = metrics

    async def check(self, incident: Incident, diagnosis: Diagnosis) -> Verdict:
        """The verdict for `incident` now (a failed Alertmanager check is recorded on it)."""
        labels = incident_labels(incident, diagnosis, self.namespace)
        covering = [w.describe(o) for w, o in active_windows(self.windows, labels, self.clock.now())]
        error = await self._silences(labels, covering)
        if error is not None and self.on_failure != "hold":  # a hold records the error with itself
            await self.incidents.record(
                incident.id,
                "silence_check_failed",
                actor=ACTOR,
                data={"error": error, "policy": self.on_failure},
            )
        return Verdict(
            suppressed_by=covering,
            check_error=error,
            hold=bool(covering) or (error is not None and self.on_failure == "hold"),
            force_prompt=error is not None and self.on_failure == "prompt",
        )

    async def _silences(self, labels: dict[str, str], covering: list[dict[str, Any]]) -> str | None:
        """Add the silences covering `labels` to `covering`; the error text when unreadable."""
        if self.silences is None:
            return None
        try:
            found = await self.silences.covering(labels)
        except AlertmanagerUnavailable as exc:
            log.warning("silence check failed (policy %s): %s", self.on_failure, exc)
            self._count("error")
            return str(exc)
        self._count("silenced" if found else "clear")
        covering += [s.describe() for s in found]
        return None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.silence_checks.labels(result=result).inc()

    async def hold(self, incident: Incident, verdict: Verdict) -> Outcome:
        """Record that `incident` is held: its audit entry (once per distinct verdict, not once per
        sweep) and, in the same transaction, what holds it on its row (when that changed)."""
        data = {"suppressed_by": verdict.suppressed_by, "check_error": verdict.check_error}
        kind, holding = held_of(data)
        store = self.incidents.store
        async with store.read("suppression: last decision") as tx:  # most sweeps change nothing
            last = last_decision(await tx.list_audit(incident.id))
            current = await tx.get_incident(incident.id)
        audit = last is None or last.kind != SUPPRESSED or last.data != data
        mark = current is not None and (current.held_kind, current.held_by) != (kind, holding)
        if audit or mark:
            async with store.transaction("suppression: hold") as tx:
                if audit:
                    await tx.add_audit(incident.id, SUPPRESSED, actor=ACTOR, data=data)
                if mark:
                    await tx.hold_incident(incident.id, kind, holding)
        return Outcome(incident.id, SUPPRESSED, verdict.reason())

    async def is_held(self, incident: Incident) -> bool:
        """True when `incident` waits, diagnosed, on a suppression (read fresh: its row's columns)."""
        return (await self.incidents.get(incident.id)).is_held


def last_decision(audit: Sequence[AuditEntry]) -> AuditEntry | None:
    """The last `plan` or `suppressed` entry of an incident's audit, or None."""
    return next((entry for entry in reversed(audit) if entry.kind in DECISIONS), None)


Handle = Callable[[int, Diagnosis], Awaitable[Outcome]]


class Reevaluation:
    """The sweeper's hook for a joined incident: a held one goes back to the responder (a job)."""

    def __init__(self, gate: SuppressionGate, handle: Handle, jobs: JobTracker) -> None:
        self.gate = gate
        self.handle = handle
        self.jobs = jobs
        self._running: set[int] = set()

    def __call__(self, incident: Incident) -> None:
        if incident.status != "open" or incident.diagnosis is None or incident.id in self._running:
            return
        self._running.add(incident.id)
        if self.jobs.spawn(self.once(incident), name=f"reevaluate-{incident.id}") is None:
            self._running.discard(incident.id)  # shutting down: the next sweep after a start looks again

    async def once(self, incident: Incident) -> Outcome | None:
        """Hand a held `incident` back to the responder (None when it is not held)."""
        try:
            if not await self.gate.is_held(incident):
                return None
            assert incident.diagnosis is not None
            return await self.handle(incident.id, Diagnosis.model_validate(incident.diagnosis))
        finally:
            self._running.discard(incident.id)
