"""Diagnosis jobs: opened incidents diagnosed in the background, in a bounded, prioritised queue.

Started by the intake (a firing alert opened an incident), the sweeps (one opened, or one still
without a diagnosis), the API (`POST /incidents`, `POST /incidents/{id}/diagnose`), the reconciler
(`watchdog.reconciler`: a diagnosis lost, or failed and due for its retry) and, at start-up,
`resume()` for incidents a previous process left undiagnosed. Runs the diagnostic runner
(`watchdog.diagnostics.runner`, through the `diagnose` callable the composition root gives it) and
hands each diagnosed incident to `on_diagnosed` (the responder's `handle_diagnosed`,
`watchdog.responder`) as a job of its own, so a remediation never holds a diagnosis worker:

    start() ──▶ queue (oldest incident first, at most `queue_size`) ──▶ `max_concurrent` workers
        ──▶ open → diagnosing (lease taken) ──▶ diagnose(execution_id) ──▶ Diagnosis stored, lease
        dropped (open again) ──▶ on_diagnosed(incident_id, diagnosis)

Deliveries first: before each diagnosis, and before the responder takes a diagnosed incident on, a
worker waits (`yield_to`, normally the intake gate's `quiet`) until no alert delivery waits for the
store, at most `YIELD_SECONDS`: a burst of new incidents is recorded first and diagnosed after, and
under a sustained stream of deliveries the diagnoses go on, slowly (issue 11: they starved the
intake, 16 distinct deliveries/s): while a yield found deliveries still waiting within the last
`FLOOD_MEMORY_SECONDS`, at most `AMID_DELIVERIES` diagnose at once, each after a yield of its own,
the other workers waiting their turn. A burst (30 alerts are recorded within ~0.1 s) leaves the
intake quiet at once, and all `max_concurrent` workers diagnose: two rounds, not eight. Likewise
the responses wait (at most `RESPOND_AFTER_SECONDS`) while diagnoses are queued or running: a burst
of 30 alerts is diagnosed first, then planned and notified, instead of every diagnosis sharing the
store and the CPU with the others' plans and notifications.

Backpressure: at most `max_concurrent` diagnoses run and at most `queue_size` wait; a burst of
alerts beyond that leaves the newest incidents `open` without a diagnosis (counted in
`gl_watchdog_diagnoses_deferred_total`), and the reconciler queues them again on a later sweep,
oldest first. So a thousand alerts at once start a handful of diagnoses, not a thousand.

A diagnosis runs under its lease (`watchdog.leases`) and within `diagnosis_timeout`; its writes are
retried while the store is briefly out of reach (`watchdog.jobs.retried`); a diagnosis that cannot be
saved is reported (logged, `gl_watchdog_job_save_failures_total{job="diagnosis"}`) and its lease
lapses, so the reconciler takes the incident back. A diagnosis that fails records the failure on the
incident and its lease (attempts, retry after a backoff). Diagnosis only reads, so repeating an
interrupted one is safe.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from gl_common.clock import Clock
from watchdog.episodes import GroupCommit
from watchdog.errors import InvalidTransition, StoreError, StoreUnavailable
from watchdog.incidents import IncidentService, transition_in
from watchdog.jobs import JobTracker, retried
from watchdog.leases import JobLeases, Lease, LeaseLost
from watchdog.metrics import WatchdogMetrics
from watchdog.records import Incident
from watchdog.store import Tx, WatchdogStore
from watchdog.tracing import DIAGNOSIS_SPAN, IncidentTracer
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

Diagnose = Callable[[str], Awaitable[Diagnosis]]
"""Runs steps 1-8 for one execution id (normally `watchdog.diagnostics.runner.diagnoser`)."""

OnDiagnosed = Callable[[int, Diagnosis], Awaitable[object]]
"""What follows a diagnosis: (incident id, its diagnosis). Normally `Responder.handle_diagnosed`."""

YieldTo = Callable[[float], Awaitable[bool]]
"""Waits (at most the given seconds) until the work that goes first is done, and says whether it is:
`IntakeGate.quiet`."""

Backoff = Callable[[int], float]
"""Seconds before the retry that follows the n-th failed attempt (n from 1)."""

# Only an open incident is (re-)diagnosed; one that waits for approval or acts keeps its diagnosis.
DIAGNOSABLE: Final = ("open",)
DEFAULT_QUEUE_SIZE: Final = 256
# What a diagnosis' writes may take after the diagnosis itself, retries included.
SAVE_SECONDS: Final = 30.0
# How long a worker waits for the deliveries before it goes on with a diagnosis anyway.
YIELD_SECONDS: Final = 1.0
# How many diagnoses run at once amid a sustained stream of alerts (deliveries still waited for the
# store after a worker's YIELD_SECONDS within the last FLOOD_MEMORY_SECONDS); the other workers wait.
AMID_DELIVERIES: Final = 4
FLOOD_MEMORY_SECONDS: Final = 2 * YIELD_SECONDS
# How long a diagnosed incident's response waits for the other queued diagnoses to be done.
RESPOND_AFTER_SECONDS: Final = 2.0


class DiagnosisService:
    """Diagnosis jobs over the store: a bounded queue, oldest incident first, `max_concurrent` at once."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        incidents: IncidentService,
        metrics: WatchdogMetrics,
        jobs: JobTracker,
        leases: JobLeases,
        diagnose: Diagnose,
        on_diagnosed: OnDiagnosed | None,
        clock: Clock,
        max_concurrent: int,
        step_timeout_seconds: float,
        backoff: Backoff,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        tracer: IncidentTracer | None = None,
        yield_to: YieldTo | None = None,
    ) -> None:
        self.store = store
        self.tracer = tracer or IncidentTracer()
        self.incidents = incidents
        self.metrics = metrics
        self.jobs = jobs
        self.leases = leases
        self.diagnose = diagnose
        self.on_diagnosed = on_diagnosed
        self.clock = clock
        self.backoff = backoff
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.yield_to = yield_to
        # Steps 1-3 run in turn, 4-8 together: four step timeouts, plus slack for the bookkeeping.
        self.diagnosis_timeout = 4 * step_timeout_seconds + 5.0
        self._slots = asyncio.Semaphore(max_concurrent)
        # (opened_at, incident id, only while undiagnosed): a min-heap, the oldest incident first.
        self._waiting: list[tuple[datetime, int, bool]] = []
        self._queued: set[int] = set()  # incident ids waiting or being diagnosed
        self._workers = 0
        self._amid_slots = asyncio.Semaphore(min(AMID_DELIVERIES, max_concurrent))
        self._flood_seen = -math.inf  # when a yield last found deliveries still waiting (monotonic)
        self._drained = asyncio.Event()  # set while no diagnosis waits or runs
        self._drained.set()
        self._begins: GroupCommit[_Start, tuple[Lease, Incident] | None] = GroupCommit(
            self._begin_batch,
            max_size=max_concurrent,
            size=lambda _: 1,
            concurrency=1,
            name="diagnoses-starting",
        )

    @property
    def deadline_seconds(self) -> float:
        """The longest one diagnosis holds its incident: the diagnosis, then its writes (retried)."""
        return self.diagnosis_timeout + SAVE_SECONDS

    # -- the queue

    def start(self, incident: Incident) -> int | None:
        """Queue a diagnosis of `incident`; its id, or None when it is already waiting or being
        diagnosed, or the queue is full of older incidents (it stays `open`: the reconciler queues it
        again later). An incident queued without a diagnosis is skipped if one was stored meanwhile;
        one queued with a diagnosis (the API's re-diagnose) is diagnosed again."""
        if incident.id in self._queued:
            return None
        entry = (incident.opened_at, incident.id, incident.diagnosis is None)
        if len(self._waiting) >= self.queue_size:
            newest = max(self._waiting)
            if entry >= newest:
                self.metrics.diagnoses_deferred.inc()
                log.info("diagnosis queue full: incident %s waits for a later sweep", incident.id)
                return None
            self._waiting.remove(newest)  # an older incident goes first; the newest waits
            heapq.heapify(self._waiting)
            self._queued.discard(newest[1])
            self.metrics.diagnoses_deferred.inc()
        heapq.heappush(self._waiting, entry)
        self._queued.add(incident.id)
        self._dispatch()
        return incident.id

    def queued(self) -> int:
        """Diagnoses waiting for a worker."""
        return len(self._waiting)

    def _dispatch(self) -> None:
        self.metrics.diagnosis_queue.set(len(self._waiting))
        if self._waiting:
            self._drained.clear()
        while self._workers < min(self.max_concurrent, len(self._waiting)):
            task = self.jobs.spawn(self._worker(), name="diagnosis-worker")
            if task is None:  # shutting down: what waits is durable and resumed by the next start
                return
            self._workers += 1

    async def _worker(self) -> None:
        try:
            while self._waiting:
                if await self._calm():
                    if self._waiting:
                        await self._diagnose_next()
                    continue
                async with self._amid_slots:  # amid a stream of deliveries: a few, each after a yield
                    await self._let_deliveries_first()
                    if self._waiting:
                        await self._diagnose_next()
        finally:
            self._workers -= 1
            if not self._workers and not self._waiting:
                self._drained.set()

    async def _diagnose_next(self) -> None:
        _, incident_id, undiagnosed_only = heapq.heappop(self._waiting)
        self.metrics.diagnosis_queue.set(len(self._waiting))
        try:
            await self.diagnose_incident(incident_id, undiagnosed_only=undiagnosed_only)
        finally:
            self._queued.discard(incident_id)

    async def resume(self) -> list[int]:
        """At start-up, when this process is the only watchdog: re-start diagnosis of open incidents
        without one and of interrupted ones; their ids."""
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

    # -- one diagnosis

    async def diagnose_incident(
        self, incident_id: int, *, actor: str = "watchdog", undiagnosed_only: bool = False
    ) -> Incident | None:
        """The diagnosis job: open → diagnosing → open with the Diagnosis stored, then remediation.

        At most `max_concurrent` diagnoses run at once. The remediation runs outside the slot, as a
        job of its own (it may wait for approval). Returns the diagnosed incident, or None when it
        was not diagnosable (already diagnosing, acting, closed, or diagnosed meanwhile when
        `undiagnosed_only`), the diagnosis failed (recorded on the incident and audited), or it could
        not be saved (reported; the reconciler takes it back).
        """
        async with self._slots:
            done = await self._diagnose_and_store(incident_id, actor, undiagnosed_only)
        if done is None:
            return None
        incident, diagnosis = done
        if self.on_diagnosed is not None:
            self.jobs.spawn(self._hand_on(incident_id, diagnosis, actor), name=f"respond-{incident_id}")
        return incident

    async def _let_deliveries_first(self) -> bool:
        """Wait (at most YIELD_SECONDS) until no delivery waits for the store; whether none does."""
        quiet = True if self.yield_to is None else await self.yield_to(YIELD_SECONDS)
        if not quiet:
            self._flood_seen = self.clock.monotonic()
        return quiet

    async def _calm(self) -> bool:
        """Yield to the deliveries; whether the intake is quiet now and was at every yield of the last
        FLOOD_MEMORY_SECONDS (a burst recorded, not a stream with gaps between its deliveries)."""
        quiet = await self._let_deliveries_first()
        return quiet and self.clock.monotonic() - self._flood_seen >= FLOOD_MEMORY_SECONDS

    async def _hand_on(self, incident_id: int, diagnosis: Diagnosis, actor: str) -> None:
        assert self.on_diagnosed is not None
        await self._let_deliveries_first()
        try:  # a burst is diagnosed first, then responded to (at most RESPOND_AFTER_SECONDS later)
            async with asyncio.timeout(RESPOND_AFTER_SECONDS):
                await self._drained.wait()
        except TimeoutError:
            pass
        try:
            await self.on_diagnosed(incident_id, diagnosis)
        except WatchdogError as exc:
            log.warning("remediation of incident %s failed: %s", incident_id, exc)
            try:
                await self.incidents.record(
                    incident_id, "remediation_error", actor=actor, data={"error": str(exc)}
                )
            except StoreError as store_exc:
                log.error("incident %s: remediation error not recorded: %s", incident_id, store_exc)

    async def _begin(
        self, incident_id: int, actor: str, undiagnosed_only: bool
    ) -> tuple[Lease, Incident] | None:
        """open → diagnosing, the lease and the audit entry, in one transaction shared with the other
        diagnoses starting at the same moment (`_begin_batch`); None when the incident is not (or no
        longer) to be diagnosed."""
        return await self._begins.submit(_Start(incident_id, actor, undiagnosed_only))

    async def _begin_batch(self, starts: list[_Start]) -> list[tuple[Lease, Incident] | BaseException | None]:
        """The starts of several diagnoses in one write transaction, each in a savepoint of its own (one
        refused, e.g. an incident closed meanwhile, leaves the others be). A burst's diagnoses began one
        transaction each, one at a time, amid the diagnoses already running: the last of 16 began
        ~0.5 s after the first, and every finished diagnosis waited behind them to be saved (issue 11)."""
        answers: list[tuple[Lease, Incident] | BaseException | None] = []
        async with self.store.transaction("diagnoses starting") as tx:
            for start in starts:
                try:
                    async with tx.conn.begin_nested():
                        answers.append(await self._begin_in(tx, start))
                except InvalidTransition as exc:
                    answers.append(exc)
        return answers

    async def _begin_in(self, tx: Tx, start: _Start) -> tuple[Lease, Incident] | None:
        incident_id, actor = start.incident_id, start.actor
        incident = await tx.get_incident(incident_id)
        if incident is None or incident.status not in DIAGNOSABLE:
            log.info("not diagnosing incident %s: it is %s", incident_id, incident and incident.status)
            return None
        if start.undiagnosed_only and incident.diagnosis is not None:
            return None  # diagnosed meanwhile (another replica, a re-queue)
        incident = await transition_in(
            tx, incident_id, "diagnosing", actor=actor, reason="diagnosis started", expected=DIAGNOSABLE
        )
        lease = await self.leases.take_in(tx, incident_id, "diagnosis", max_seconds=self.deadline_seconds)
        assert lease is not None  # no expected token: always taken
        await tx.add_audit(
            incident_id,
            "diagnosis",
            phase="before",
            actor=actor,
            data={"execution_id": incident.execution_id, "attempt": lease.attempts + 1},
        )
        return lease, incident

    async def _diagnose_and_store(
        self, incident_id: int, actor: str, undiagnosed_only: bool
    ) -> tuple[Incident, Diagnosis] | None:
        try:
            begun = await self._begin(incident_id, actor, undiagnosed_only)
        except InvalidTransition as exc:
            log.info("not diagnosing incident %s: %s", incident_id, exc)
            return None
        except StoreError as exc:  # nothing changed: it stays open, and is queued again later
            log.warning("diagnosis of incident %s not started: %s", incident_id, exc)
            return None
        if begun is None:
            return None
        lease, incident = begun
        span = self.tracer.span(DIAGNOSIS_SPAN, incident_id, incident.execution_id, job="diagnosis")
        with self.leases.holding(lease), span:
            try:
                return await self._run_and_save(lease, incident, actor)
            except LeaseLost as exc:
                log.warning("diagnosis of incident %s superseded: %s", incident_id, exc)
            except StoreError as exc:
                self.metrics.job_save_failures.labels(job="diagnosis").inc()
                log.error(
                    "diagnosis of incident %s could not be saved (%s); its lease lapses and the "
                    "reconciler takes it back",
                    incident_id,
                    exc,
                )
        return None

    async def _run_and_save(
        self, lease: Lease, incident: Incident, actor: str
    ) -> tuple[Incident, Diagnosis] | None:
        started = self.clock.monotonic()
        try:
            async with asyncio.timeout(self.diagnosis_timeout):
                diagnosis = await self.diagnose(incident.execution_id)
        except (WatchdogError, TimeoutError) as exc:
            reason = f"diagnosis failed: {exc or type(exc).__name__}"
            await self._save(lambda: self._store_failure(lease, actor, reason))
            return None
        self.metrics.observe_diagnosis(diagnosis, self.clock.monotonic() - started)
        stored = await self._save(lambda: self._store_diagnosis(lease, incident, diagnosis, actor))
        if stored is None:
            return None
        if incident.diagnosis is None:
            self.metrics.observe_first_diagnosis(incident.opened_at, diagnosis)
        return stored, diagnosis

    async def _save(self, write: Callable[[], Awaitable[Incident | None]]) -> Incident | None:
        return await retried(
            write, what="saving a diagnosis", retry_on=(StoreUnavailable,), sleep=self.clock.sleep
        )

    async def _store_failure(self, lease: Lease, actor: str, reason: str) -> Incident | None:
        return await self._finish(
            lease, actor, audit={"error": reason}, failed=True, reason=reason, summary=reason
        )

    async def _store_diagnosis(
        self, lease: Lease, incident: Incident, diagnosis: Diagnosis, actor: str
    ) -> Incident | None:
        return await self._finish(
            lease,
            actor,
            audit={
                "likely_cause": diagnosis.likely_cause,
                "steps": {str(f.step): f.status.value for f in diagnosis.findings},
            },
            failed=False,
            reason="diagnosed",
            diagnosis=diagnosis.model_dump(mode="json"),
            summary=_summary(diagnosis),
            dag_id=incident.dag_id or diagnosis.dag_id,
        )

    async def _finish(
        self, lease: Lease, actor: str, *, audit: dict[str, Any], failed: bool, reason: str, **values: Any
    ) -> Incident | None:
        """The job's last write, one transaction: its audit entry, its lease (dropped, or marked failed
        for a retry after a backoff) and the incident back to `open` with `values`. None when the
        incident was closed meanwhile (alert resolved): a diagnosis is then kept on record, nothing acts."""
        retry_at = self.clock.now() + timedelta(seconds=self.backoff(lease.attempts + 1))
        async with self.store.transaction() as tx:
            await self.leases.check_in(tx, lease)
            await tx.add_audit(lease.incident_id, "diagnosis", actor=actor, data=audit)
            if failed:
                await self.leases.fail_in(tx, lease, reason, retry_at=retry_at)
            else:
                await self.leases.release_in(tx, lease)
            try:
                return await transition_in(
                    tx,
                    lease.incident_id,
                    "open",
                    actor=actor,
                    reason=reason,
                    expected=["diagnosing"],
                    **values,
                )
            except InvalidTransition:
                if "diagnosis" in values:
                    await tx.update_incident(lease.incident_id, diagnosis=values["diagnosis"])
                    await tx.add_audit(
                        lease.incident_id, "diagnosis_stored", actor=actor, data={"fields": ["diagnosis"]}
                    )
                return None


@dataclass(frozen=True)
class _Start:
    """A diagnosis to start: `_begin`'s arguments."""

    incident_id: int
    actor: str
    undiagnosed_only: bool


def _summary(diagnosis: Diagnosis) -> str:
    where = ""
    if diagnosis.stuck_node_id:
        where = f" at node {diagnosis.stuck_node_id}"
        if diagnosis.agent_id:
            where += f" (agent {diagnosis.agent_id})"
    evidence = f": {diagnosis.cause_evidence[0]}" if diagnosis.cause_evidence else ""
    return f"{diagnosis.likely_cause}{where}{evidence}"
