"""Service assembly: settings in, a running watchdog out (store, clients, intake, sweeps, jobs).

Built by `gl-watchdog serve` (`watchdog.cli`) and by tests with `WatchdogApp.build(settings, ...)`;
served over HTTP by `watchdog.api.create_app(wd)`. It owns every long-lived object and closes them
in `aclose()`, in reverse order of creation.

The flow it wires together:

    intake / sweeps / API "diagnose" ──▶ incident opened ──▶ start_diagnosis() (background job)
        ──▶ diagnose(execution_id) → Diagnosis stored on the incident (open → diagnosing → open)
        ──▶ remediate(incident_id, diagnosis), when a remediation hook is given

Background jobs are tracked (`JobTracker`) and awaited on shutdown, so none is lost or left running.
On start, incidents left without a diagnosis (or interrupted mid-diagnosis) by a previous process are
diagnosed again; diagnosis only reads, so repeating it is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, Final

from gl_common.clock import Clock, SystemClock
from watchdog.backends import open_clients
from watchdog.condition import ConditionEvaluator
from watchdog.diagnostics import runner
from watchdog.errors import InvalidTransition
from watchdog.incidents import IncidentService
from watchdog.intake import AlertIntake
from watchdog.metrics import WatchdogMetrics
from watchdog.settings import WatchdogSettings
from watchdog.store import Incident, WatchdogStore
from watchdog.sweeps import Leadership, LocalLeadership, RedisLeadership, Sweeper
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.diagnostic_step import DiagnosticContext
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

Diagnose = Callable[[str], Awaitable[Diagnosis]]
"""Runs steps 1-8 for one execution id (normally `watchdog.diagnostics.runner`)."""

Remediate = Callable[[int, Diagnosis], Awaitable[object]]
"""The remediation loop's entry point: (incident id, its diagnosis). Provided by `watchdog.remediation`."""

# Only an open incident is (re-)diagnosed; one that waits for approval or acts keeps its diagnosis.
DIAGNOSABLE: Final = ("open",)


class JobTracker:
    """Background jobs of the service: started with `spawn`, awaited by `wait_idle` and `aclose`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any] | None:
        """Run `coro` in the background; its failure is logged, never lost silently.

        Once shutdown has begun nothing new starts (None is returned): the work is durable in the
        store and is resumed by the next start (`WatchdogApp.resume_diagnoses`).
        """
        if self._closing:
            coro.close()
            log.info("not starting %s: shutting down (it resumes on the next start)", name)
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Wait until no job runs (jobs started by jobs included); bound it with `asyncio.timeout`."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Wait up to `grace_seconds` for running jobs, then cancel the rest and wait for them."""
        self._closing = True
        try:
            async with asyncio.timeout(grace_seconds):
                await self.wait_idle()
        except TimeoutError:
            late = list(self._tasks)
            log.warning("cancelling %d background job(s) still running at shutdown", len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


class WatchdogApp:
    """Everything a running watchdog holds. Use `await WatchdogApp.build(settings)`."""

    def __init__(
        self,
        *,
        settings: WatchdogSettings,
        store: WatchdogStore,
        orchestrator: OrchestratorClient,
        prometheus: PrometheusClient | None,
        redis: RedisClient | None,
        kubernetes: KubernetesClient | None,
        leadership: Leadership,
        diagnose: Diagnose | None,
        remediate: Remediate | None,
        clock: Clock,
        metrics: WatchdogMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.orchestrator = orchestrator
        self.prometheus = prometheus
        self.redis = redis
        self.kubernetes = kubernetes
        # The clients as the diagnostic steps (and playbooks) want them.
        self.diagnostic_context = DiagnosticContext(
            clients=Clients(
                orchestrator=orchestrator,
                prometheus=prometheus,
                kubernetes=kubernetes,
                redis=redis,
                namespace=settings.namespace,
            ),
            settings=settings.diagnostics(),
            clock=clock,
        )
        self.diagnose = diagnose or runner.diagnoser(self.diagnostic_context)
        self.remediate = remediate
        self.clock = clock
        self.metrics = metrics or WatchdogMetrics()
        self.jobs = JobTracker()
        self.incidents = IncidentService(store, self.metrics)
        self.intake = AlertIntake(store, self.incidents, self.metrics, self.start_diagnosis)
        self.condition = ConditionEvaluator(
            orchestrator,
            prometheus,
            for_duration=timedelta(seconds=settings.for_duration_seconds),
            clock=clock,
            prometheus_timeout=settings.prometheus_timeout_seconds,
        )
        self.sweeper = Sweeper(
            self.condition,
            self.incidents,
            leadership,
            self.metrics,
            self.start_diagnosis,
            interval_seconds=settings.sweep_interval_seconds,
            leader_ttl_seconds=settings.leader_ttl_seconds,
            on_undiagnosed=self.start_diagnosis,
        )
        # Steps 1-3 run in turn, 4-8 together: four step timeouts, plus slack for the bookkeeping.
        self.diagnosis_timeout = 4 * settings.step_timeout_seconds + 5.0
        # At most this many diagnoses at once; the others wait (still `open`) for a slot.
        self._diagnosis_slots = asyncio.Semaphore(settings.max_concurrent_diagnoses)
        self._diagnosis_jobs: set[int] = set()  # incident ids with a diagnosis job queued or running
        self._closed = False

    @classmethod
    async def build(
        cls,
        settings: WatchdogSettings,
        *,
        diagnose: Diagnose | None = None,
        remediate: Remediate | None = None,
        clock: Clock | None = None,
    ) -> WatchdogApp:
        """Open the store (migrations included) and build the clients from `settings`.

        `diagnose` defaults to the diagnostic runner (`watchdog.diagnostics.runner`) over these
        clients; `remediate` (the remediation
        loop) is optional: without it incidents are diagnosed and reported only.
        """
        clock = clock or SystemClock()
        clients = await open_clients(settings, clock=clock)
        try:
            store = await WatchdogStore.open(settings.database_url, clock=clock)
        except BaseException:
            await clients.aclose()
            raise
        redis = clients.redis
        leadership: Leadership = (
            LocalLeadership()
            if redis is None
            else RedisLeadership(redis, settings.replica_id, ttl_seconds=settings.leader_ttl_seconds)
        )
        return cls(
            settings=settings,
            store=store,
            orchestrator=clients.orchestrator,
            prometheus=clients.prometheus,
            redis=clients.redis,
            kubernetes=clients.kubernetes,
            leadership=leadership,
            diagnose=diagnose,
            remediate=remediate,
            clock=clock,
        )

    async def refresh_gauges(self) -> None:
        """Set the store-wide gauges (`gl_watchdog_open_incidents`, `gl_watchdog_pending_approvals`)
        from the store, so that every replica reports the same figures, not only the one whose change
        last set them. Called before every scrape of `/metrics`."""
        async with self.store.transaction() as tx:
            open_incidents = await tx.count_open_incidents()
            pending = await tx.list_approvals(states=["pending"])
        self.metrics.open_incidents.set(open_incidents)
        self.metrics.pending_approvals.set(len(pending))

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self, *, sweeps: bool = True) -> None:
        """Resume diagnoses a previous process left unfinished, then start the sweep schedule."""
        await self.resume_diagnoses()
        await self.incidents.refresh_gauge()
        if sweeps:
            self.sweeper.start()

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Stop sweeps, finish (or cancel) background jobs, close every client and the store."""
        if self._closed:
            return
        self._closed = True
        await self.sweeper.shutdown(grace_seconds)
        await self.jobs.aclose(grace_seconds)
        await self.orchestrator.aclose()
        if self.prometheus is not None:
            self.prometheus.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.kubernetes is not None:
            self.kubernetes.close()
        await self.store.close()

    # -- diagnosis jobs ---------------------------------------------------------------------------

    def start_diagnosis(self, incident: Incident) -> asyncio.Task[Any] | None:
        """Diagnose `incident` in the background (tracked; awaited on shutdown); None when a job for
        it is already queued or running."""
        if incident.id in self._diagnosis_jobs:
            return None
        task = self.jobs.spawn(self._diagnosis_job(incident.id), name=f"diagnose-incident-{incident.id}")
        if task is not None:
            self._diagnosis_jobs.add(incident.id)
        return task

    async def _diagnosis_job(self, incident_id: int) -> Incident | None:
        try:
            return await self.diagnose_incident(incident_id)
        finally:
            self._diagnosis_jobs.discard(incident_id)

    async def resume_diagnoses(self) -> list[int]:
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
            self.start_diagnosis(incident)
            resumed.append(incident.id)
        return resumed

    async def diagnose_incident(self, incident_id: int, *, actor: str = "watchdog") -> Incident | None:
        """The diagnosis job: open → diagnosing → open with the Diagnosis stored, then remediation.

        At most `settings.max_concurrent_diagnoses` diagnoses run at once; the incident stays `open`
        while it waits for a slot. The remediation runs outside the slot (it may wait for approval).
        Returns the diagnosed incident, or None when it was not diagnosable (already diagnosing,
        acting, or closed meanwhile) or the diagnosis failed (recorded on the incident and audited).
        """
        async with self._diagnosis_slots:
            done = await self._diagnose_and_store(incident_id, actor)
        if done is None:
            return None
        incident, diagnosis = done
        if self.remediate is not None:
            try:
                await self.remediate(incident_id, diagnosis)
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
