"""Diagnosis jobs: an opened incident diagnosed in the background, the Diagnosis stored, then handed on.

Started by the intake (a firing alert opened an incident), the sweeps (one opened, or one still
without a diagnosis), the API (`POST /incidents`, `POST /incidents/{id}/diagnose`) and, at start-up,
`resume()` for incidents a previous process left undiagnosed. Runs the diagnostic runner
(`watchdog.diagnostics.runner`, through the `diagnose` callable the composition root gives it) and
hands each diagnosed incident to `on_diagnosed` (the responder's `handle_diagnosed`, `watchdog.responder`):

    incident opened ──▶ start() ──▶ open → diagnosing ──▶ diagnose(execution_id) ──▶ Diagnosis stored
        (open again) ──▶ on_diagnosed(incident_id, diagnosis)

Jobs are tracked (`watchdog.jobs`) and awaited on shutdown; diagnosis only reads, so repeating an
interrupted one is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from gl_common.clock import Clock
from watchdog.errors import InvalidTransition
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.records import Incident
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

Diagnose = Callable[[str], Awaitable[Diagnosis]]
"""Runs steps 1-8 for one execution id (normally `watchdog.diagnostics.runner.diagnoser`)."""

OnDiagnosed = Callable[[int, Diagnosis], Awaitable[object]]
"""What follows a diagnosis: (incident id, its diagnosis). Normally `Responder.handle_diagnosed`."""

# Only an open incident is (re-)diagnosed; one that waits for approval or acts keeps its diagnosis.
DIAGNOSABLE: Final = ("open",)


class DiagnosisService:
    """Diagnosis jobs over the store; at most `max_concurrent` run at once, the others wait `open`."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        incidents: IncidentService,
        metrics: WatchdogMetrics,
        jobs: JobTracker,
        diagnose: Diagnose,
        on_diagnosed: OnDiagnosed | None,
        clock: Clock,
        max_concurrent: int,
        step_timeout_seconds: float,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.metrics = metrics
        self.jobs = jobs
        self.diagnose = diagnose
        self.on_diagnosed = on_diagnosed
        self.clock = clock
        # Steps 1-3 run in turn, 4-8 together: four step timeouts, plus slack for the bookkeeping.
        self.diagnosis_timeout = 4 * step_timeout_seconds + 5.0
        self._slots = asyncio.Semaphore(max_concurrent)
        self._queued: set[int] = set()  # incident ids with a diagnosis job queued or running

    def start(self, incident: Incident) -> asyncio.Task[Any] | None:
        """Diagnose `incident` in the background (tracked; awaited on shutdown); None when a job for
        it is already queued or running."""
        if incident.id in self._queued:
            return None
        task = self.jobs.spawn(self._diagnosis_job(incident.id), name=f"diagnose-incident-{incident.id}")
        if task is not None:
            self._queued.add(incident.id)
        return task

    async def _diagnosis_job(self, incident_id: int) -> Incident | None:
        try:
            return await self.diagnose_incident(incident_id)
        finally:
            self._queued.discard(incident_id)

    async def resume(self) -> list[int]:
        """Re-start diagnosis of open incidents without one and of interrupted ones; their ids."""
        resumed = []
        for incident in await self.store.list_incidents(statuses=["open", "diagnosing"]):
            if incident.status == "diagnosing":
                try:
                    incident = await self.incidents.transition(
                        incident.id,
                        "open",
                        actor="watchdog",
                        reason="diagnosis interrupted by a restart; diagnosing again",
                        expected=["diagnosing"],
                    )
                except InvalidTransition:
                    continue
            elif incident.diagnosis is not None:
                continue
            self.start(incident)
            resumed.append(incident.id)
        return resumed

    async def diagnose_incident(self, incident_id: int, *, actor: str = "watchdog") -> Incident | None:
        """The diagnosis job: open → diagnosing → open with the Diagnosis stored, then remediation.

        At most `max_concurrent` diagnoses run at once; the incident stays `open`
        while it waits for a slot. The remediation runs outside the slot (it may wait for approval).
        Returns the diagnosed incident, or None when it was not diagnosable (already diagnosing,
        acting, or closed meanwhile) or the diagnosis failed (recorded on the incident and audited).
        """
        async with self._slots:
            done = await self._diagnose_and_store(incident_id, actor)
        if done is None:
            return None
        incident, diagnosis = done
        if self.on_diagnosed is not None:
            try:
                await self.on_diagnosed(incident_id, diagnosis)
            except WatchdogError as exc:
                log.warning("remediation of incident %s failed: %s", incident_id, exc)
                await self.incidents.record(
                    incident_id, "remediation_error", actor=actor, data={"error": str(exc)}
                )
        return incident

    async def _diagnose_and_store(self, incident_id: int, actor: str) -> tuple[Incident, Diagnosis] | None:
        try:
            incident = await self.incidents.transition(
                incident_id, "diagnosing", actor=actor, reason="diagnosis started", expected=DIAGNOSABLE
            )
        except InvalidTransition as exc:
            log.info("not diagnosing incident %s: %s", incident_id, exc)
            return None
        await self.incidents.record(
            incident_id,
            "diagnosis",
            phase="before",
            actor=actor,
            data={"execution_id": incident.execution_id},
        )
        started = self.clock.monotonic()
        try:
            async with asyncio.timeout(self.diagnosis_timeout):
                diagnosis = await self.diagnose(incident.execution_id)
        except (WatchdogError, TimeoutError) as exc:
            reason = f"diagnosis failed: {exc or type(exc).__name__}"
            await self.incidents.record(incident_id, "diagnosis", actor=actor, data={"error": reason})
            with contextlib.suppress(InvalidTransition):  # closed meanwhile: nothing to reopen
                await self.incidents.transition(
                    incident_id, "open", actor=actor, reason=reason, expected=["diagnosing"], summary=reason
                )
            return None
        self.metrics.observe_diagnosis(diagnosis, self.clock.monotonic() - started)
        document = diagnosis.model_dump(mode="json")
        summary = _summary(diagnosis)
        await self.incidents.record(
            incident_id,
            "diagnosis",
            actor=actor,
            data={
                "likely_cause": diagnosis.likely_cause,
                "steps": {str(f.step): f.status.value for f in diagnosis.findings},
            },
        )
        try:
            incident = await self.incidents.transition(
                incident_id,
                "open",
                actor=actor,
                reason="diagnosed",
                expected=["diagnosing"],
                diagnosis=document,
                summary=summary,
                dag_id=incident.dag_id or diagnosis.dag_id,
            )
        except InvalidTransition:
            # Closed (alert resolved) while we diagnosed: keep the diagnosis on record, act on nothing.
            await self.incidents.update(incident_id, kind="diagnosis_stored", actor=actor, diagnosis=document)
            return None
        return incident, diagnosis


def _summary(diagnosis: Diagnosis) -> str:
    where = ""
    if diagnosis.stuck_node_id:
        where = f" at node {diagnosis.stuck_node_id}"
        if diagnosis.agent_id:
            where += f" (agent {diagnosis.agent_id})"
    evidence = f": {diagnosis.cause_evidence[0]}" if diagnosis.cause_evidence else ""
    return f"{diagnosis.likely_cause}{where}{evidence}"
