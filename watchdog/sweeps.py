"""Scheduled sweeps: find stuck runs without Alertmanager, on the elected leader only.

Started by `watchdog.assembly.Watchdog.start()` (`gl-watchdog serve`). An APScheduler
`AsyncIOScheduler` runs `Sweeper.sweep_once()` every `sweep_interval_seconds` (max_instances=1 and
coalesce, so sweeps never overlap or pile up after a stall) and renews the leadership every third of
its TTL. `sweep_once()` is the one-shot form for tests and the CLI:

    leader?  ── no ──▶ skip (counted as not_leader)
      │ yes
    reconcile (the reconciler of `watchdog.reconciler`: incidents whose job was lost taken back,
      │        retried or escalated; its failure is logged, never fatal to the sweep)
    condition.evaluate()  (Prometheus, or the orchestrator API — it works when the alert path is broken)
      │
    for each execution firing: incidents.open_or_join(source="sweep", detection_source=<source used>)
      │                         a newly opened incident goes to `on_opened` (the app diagnoses it), a
      │                         joined one still open without a diagnosis to `on_undiagnosed` (retry);
      │                         an execution with an escalated incident is skipped (on-call owns it;
      │                         checked in the transaction that opens, `open_unless_escalated`); a
      │                         joined one open with a diagnosis goes to `on_diagnosed_open` (an
      │                         incident held by a silence or maintenance window is looked at again)
    the same for runs `interrupted` for at least `for_duration`, and for running runs that have no
      │   timeout at all and have run longer than `max_run_age` (nothing else would ever see them)
    the same for the stuck runs the timeout cannot see (`watchdog.stuck_runs`: a stalling node, a
      │   retry storm, queued too long, a cancel not completing, a resume loop, an owner gone), each
      │   opened with its cause and severity in its summary and in its `incident_opened` audit entry
    after_sweep hooks (leader-only periodic work of other modules)

Every list is asked of the orchestrator with server-side filters and read to its last page (the
client follows `next_cursor`), oldest first: over their timeout (the condition), `interrupted`, and
running with no timeout of their own started before `now - max_run_age`. So a sweep sees every
candidate among any number of running runs, and reads only the candidates.

Leadership: `RedisLeadership` holds `gl:watchdog:leader` through `watchdog_sdk.clients.redis` (value =
replica id, TTL, renewed only by its owner, released with compare-and-delete); without Redis,
`LocalLeadership` (this process is the only sweeper). When Redis cannot be reached this replica
does not consider itself leader and does not sweep (counted as leader_error): only a confirmed leader
sweeps. Opening an incident is idempotent anyway (unique index), so a brief overlap of two leaders is
harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, timedelta
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gl_common.clock import utc_now
from watchdog.condition import ConditionEvaluator, ConditionResult
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.records import Incident
from watchdog.stuck_runs import StuckRun, StuckRunDetector
from watchdog_sdk.clients.orchestrator import MAX_PAGE, Execution
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)


class Leadership(Protocol):
    """Who may sweep."""

    is_leader: bool

    async def acquire_or_renew(self) -> bool:
        """Become or stay leader; True when this replica is the leader afterwards."""
        ...

    async def release(self) -> None:
        """Give up leadership (on shutdown)."""
        ...


class LocalLeadership:
    """No Redis: this process is the only watchdog, hence always the leader."""

    def __init__(self) -> None:
        self.is_leader = True

    async def acquire_or_renew(self) -> bool:
        return True

    async def release(self) -> None:
        self.is_leader = False


class RedisLeadership:
    """Leader election on `gl:watchdog:leader` through `RedisClient` (errors: RedisUnavailable)."""

    def __init__(self, redis: RedisClient, replica_id: str, *, ttl_seconds: float) -> None:
        self.redis = redis
        self.replica_id = replica_id
        self.ttl_seconds = ttl_seconds
        self.is_leader = False

    async def acquire_or_renew(self) -> bool:
        try:
            held = await self.redis.renew_leader(
                self.replica_id, self.ttl_seconds
            ) or await self.redis.acquire_leader(self.replica_id, self.ttl_seconds)
        except WatchdogError:
            self.is_leader = False
            raise
        self.is_leader = held
        return held

    async def release(self) -> None:
        was_leader, self.is_leader = self.is_leader, False
        if was_leader:
            await self.redis.release_leader(self.replica_id)


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did."""

    result: str  # ok | not_leader | leader_error | error
    leader: bool
    condition: ConditionResult | None = None
    opened: list[Incident] = field(default_factory=list)
    joined: list[int] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)  # firing, but an escalated incident owns the run
    error: str | None = None
    over_max_age: list[str] = field(default_factory=list)  # running with no timeout, past the max age
    stuck: list[dict[str, Any]] = field(default_factory=list)  # `StuckRun.as_json()` of each found
    stuck_errors: list[str] = field(default_factory=list)  # stuck-run questions that failed

    def as_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (logs, CLI)."""
        cond = self.condition
        return {
            "result": self.result,
            "leader": self.leader,
            "source": None if cond is None else cond.source.value,
            "fallback_reason": None if cond is None else cond.fallback_reason,
            "firing": [] if cond is None else [e.execution_id for e in cond.firing],
            "pending": [] if cond is None else [e.execution_id for e in cond.pending],
            "opened": [{"incident_id": i.id, "execution_id": i.execution_id} for i in self.opened],
            "joined": self.joined,
            "skipped_escalated": self.escalated,
            "over_max_age": self.over_max_age,
            "stuck": self.stuck,
            "stuck_errors": self.stuck_errors,
            "error": self.error,
        }


class Sweeper:
    """Runs the condition on the leader and opens incidents for firing executions."""

    def __init__(
        self,
        condition: ConditionEvaluator,
        incidents: IncidentService,
        leadership: Leadership,
        metrics: WatchdogMetrics,
        on_opened: Callable[[Incident], object],
        *,
        interval_seconds: float,
        leader_ttl_seconds: float,
        on_undiagnosed: Callable[[Incident], object] | None = None,
        max_run_age: timedelta | None = None,
        reconcile: Callable[[], Awaitable[object]] | None = None,
        on_diagnosed_open: Callable[[Incident], object] | None = None,
        stuck: StuckRunDetector | None = None,
    ) -> None:
        self.condition = condition
        # Looks for the stuck runs the timeout cannot see (None: not looked for).
        self.stuck = stuck
        # Run by the leader at the start of every sweep (`Reconciler.reconcile_once`).
        self.reconcile = reconcile
        # A running run with no timeout at all gets an incident once it has run this long (None: never).
        self.max_run_age = max_run_age
        # Called for a joined incident that is open without a diagnosis (its diagnosis failed, e.g.
        # timed out): each sweep while the run still fires tries it again (the app dedupes).
        self.on_undiagnosed = on_undiagnosed
        # Called for a joined incident that is open with a diagnosis: one held by a silence or a
        # maintenance window is looked at again (`watchdog.suppression.Reevaluation`).
        self.on_diagnosed_open = on_diagnosed_open
        self.incidents = incidents
        self.leadership = leadership
        self.metrics = metrics
        self.on_opened = on_opened
        self.interval_seconds = interval_seconds
        self.leader_ttl_seconds = leader_ttl_seconds
        # Leader-only periodic work of other modules (e.g. expiring approval prompts), run after
        # each sweep; a hook's WatchdogError is logged, never fatal to the sweep.
        self.after_sweep: list[Callable[[], Awaitable[object]]] = []
        self._scheduler: AsyncIOScheduler | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = False

    async def sweep_once(self) -> SweepReport:
        """One sweep; never raises for a backend failure (the report says what went wrong)."""
        try:
            leader = await self.leadership.acquire_or_renew()
        except WatchdogError as exc:
            self.metrics.is_leader.set(0)
            return self._done(SweepReport("leader_error", False, error=str(exc)))
        self.metrics.is_leader.set(1 if leader else 0)
        if not leader:
            return self._done(SweepReport("not_leader", False))
        if self.reconcile is not None:
            try:
                await self.reconcile()
            except WatchdogError as exc:  # the store may be down: the sweep still looks for stuck runs
                log.warning("reconciling incidents failed: %s", exc)
        report = await self._sweep()
        await self._run_after_sweep()
        return self._done(report)

    async def _sweep(self) -> SweepReport:
        try:
            result = await self.condition.evaluate()
        except WatchdogError as exc:
            return SweepReport("error", True, error=f"condition could not be evaluated: {exc}")
        report = SweepReport("ok", True, result)
        try:
            for execution in result.firing:
                await self._open_or_join(
                    report, execution.execution_id, execution.dag_id, result.source.value
                )
            for stalled in await self._stalled_interrupted_runs():
                await self._open_or_join(report, stalled.execution_id, stalled.dag_id, "api")
            for aged, summary in await self._runs_over_max_age():
                report.over_max_age.append(aged.execution_id)
                await self._open_or_join(report, aged.execution_id, aged.dag_id, "api", summary)
            for run in await self._stuck_runs(report):
                report.stuck.append(run.as_json())
                await self._open_or_join(
                    report, run.execution_id, run.dag_id, "api", run.summary, run.state.as_json()
                )
        except WatchdogError as exc:
            return replace(report, result="error", error=f"opening incidents failed: {exc}")
        return report

    async def _open_or_join(
        self,
        report: SweepReport,
        execution_id: str,
        dag_id: str | None,
        detection_source: str,
        summary: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        outcome = await self.incidents.open_unless_escalated(
            execution_id, dag_id=dag_id, detection_source=detection_source, summary=summary, data=data
        )
        if outcome is None:
            # on-call owns it since the escalation: do not re-open and re-remediate every sweep
            report.escalated.append(execution_id)
            return
        if outcome.created:
            report.opened.append(outcome.incident)
            self.on_opened(outcome.incident)
            return
        report.joined.append(outcome.incident.id)
        incident = outcome.incident
        if self.on_undiagnosed and incident.status == "open" and incident.diagnosis is None:
            self.on_undiagnosed(incident)
        if self.on_diagnosed_open and incident.status == "open" and incident.diagnosis is not None:
            self.on_diagnosed_open(incident)

    async def _stalled_interrupted_runs(self) -> list[Execution]:
        """Runs left `interrupted` (a replica shut down or fenced itself) that nobody resumed.

        The orchestrator never resumes an interrupted run by itself (the runbook's Option 2 is a
        decision), so a rolling restart would leave them stalled without any alert: the duration
        gauge exists only while a run is `running`. Once one has been interrupted for the `for`
        duration, it gets an incident like a stuck run (diagnosis cause `interrupted`).
        """
        try:
            items = await self.condition.orchestrator.list_executions(
                status="interrupted", page_size=MAX_PAGE
            )
        except WatchdogError as exc:  # the stuck-run part of the sweep still counts
            log.warning("sweep could not list interrupted runs: %s", exc)
            return []
        now = self.condition.clock.now()
        grace = self.condition.for_duration
        return [
            e
            for e in items
            if e.status == "interrupted" and (e.completed_at is None or now - e.completed_at >= grace)
        ]

    async def _runs_over_max_age(self) -> list[tuple[Execution, str]]:
        """Running runs with no timeout at all that have run longer than `max_run_age`, each with the
        summary its incident opens with.

        Such a run has no timeout gauge, so neither the alert nor the condition can ever see it hang
        (issue 10 item 8). The orchestrator is asked for exactly these (no timeout of the DAG's own,
        started before the cut-off); a run given the orchestrator's default timeout is the
        condition's, not this rule's, so only runs without any effective timeout are kept.
        """
        if self.max_run_age is None:
            return []
        now = self.condition.clock.now()
        cutoff = now - self.max_run_age
        try:
            items = await self.condition.orchestrator.list_executions(
                status="running", no_timeout=True, started_before=cutoff, page_size=MAX_PAGE
            )
        except WatchdogError as exc:  # the rest of the sweep still counts
            log.warning("sweep could not list runs without a timeout: %s", exc)
            return []
        aged = []
        for execution in items:
            started = execution.started_at
            if execution.status != "running" or execution.timeout_seconds is not None or started is None:
                continue
            if started < cutoff:
                age = (now - started).total_seconds()
                limit = self.max_run_age.total_seconds()
                summary = f"running for {age:.0f}s with no timeout, past the maximum age of {limit:.0f}s"
                aged.append((execution, summary))
        return aged

    async def _stuck_runs(self, report: SweepReport) -> list[StuckRun]:
        """The stuck runs the timeout cannot see, once per run (its most urgent cause first)."""
        if self.stuck is None:
            return []
        search = await self.stuck.search()
        report.stuck_errors.extend(search.errors)
        seen: set[str] = set()
        runs = []
        for run in search.runs:
            if run.execution_id not in seen:
                seen.add(run.execution_id)
                runs.append(run)
        return runs

    async def _run_after_sweep(self) -> None:
        for hook in self.after_sweep:
            try:
                await hook()
            except WatchdogError as exc:
                log.warning("after-sweep hook %s failed: %s", getattr(hook, "__qualname__", hook), exc)

    def _done(self, report: SweepReport) -> SweepReport:
        self.metrics.sweeps.labels(result=report.result).inc()
        if report.error:
            log.warning("sweep %s: %s", report.result, report.error)
        elif report.opened:
            log.info("sweep opened %d incident(s): %s", len(report.opened), report.as_json()["opened"])
        return report

    # -- scheduling -----------------------------------------------------------------------------

    def start(self) -> None:
        """Schedule the sweep (first run now) and the leadership renewal on the running loop."""
        if self._scheduler is not None:
            return
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._scheduled_sweep,
            "interval",
            seconds=self.interval_seconds,
            id="sweep",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(self.interval_seconds)),
            next_run_time=utc_now(),
        )
        scheduler.add_job(
            self._scheduled_renew,
            "interval",
            seconds=max(1.0, self.leader_ttl_seconds / 3),
            id="leader-renew",
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        self._scheduler = scheduler

    async def _scheduled_sweep(self) -> None:
        await self._tracked(self.sweep_once())

    async def _scheduled_renew(self) -> None:
        await self._tracked(self._renew())

    async def _renew(self) -> None:
        try:
            leader = await self.leadership.acquire_or_renew()
        except WatchdogError as exc:
            log.warning("leadership renewal failed: %s", exc)
            leader = False
        self.metrics.is_leader.set(1 if leader else 0)

    async def _tracked(self, coro: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await coro
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Our own shutdown cancelled it after the grace period: an expected end, not a job
            # failure for APScheduler to log with a traceback.
            log.info("in-flight sweep cancelled by shutdown")
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        """Stop scheduling, wait for an in-flight sweep (cancel it after `grace_seconds`), resign."""
        self._stopping = True
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
            await asyncio.sleep(0)  # let a job submitted just now register itself
        pending = [t for t in self._inflight if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(WatchdogError):
            await self.leadership.release()
        self.metrics.is_leader.set(0)
