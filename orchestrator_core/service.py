"""`OrchestratorService`: the engine as a replicated service — admission, ownership, takeover, shutdown.

Where it sits: built once by `cli.py serve` (or a test) with `await OrchestratorService.open(settings)`;
`api.py` calls it for every write (execute, cancel, resume, limits) and reads through `service.engine`.
It wraps the `engine.Engine` facade (which does no admission and takes no locks) and owns the
`locks.LockBackend`, the metrics registry, the run log, the tracer and the HTTP agent client.

Admission and takeover (`admission.Admission`): `submit` records the run as `queued` in the store;
`pump_once` starts the oldest queued runs (the queue is the store, across all replicas) while this
replica runs fewer than `max_concurrent_executions`, and `takeover_once` resumes the `running` runs of
owners whose heartbeat is gone, from their checkpoints, once their lock is free. Before starting a run
the replica takes its ownership lock; the lease's fencing token goes to the engine, whose store refuses
writes with a stale token.

Ownership (`ownership.Ownership`): when an owned run's task ends, its lock is released and the next
queued run admitted. `renew_once` extends the owned locks a thousand per round trip, the API served
between two batches; a lock that expired but that nobody took is set again; when a lock is held by
someone else, or cannot be renewed before it could expire (Redis unreachable for a TTL less one tick),
the replica self-fences: it stops the run and records it `interrupted` (resumable), or only detaches
when another owner already claimed it — before another replica can take the run over, so it never runs
in two places at once.

Remote cancel: `reconcile_once` stops the local runs that another replica cancelled in the store (one
store read for all owned runs).

Live limits (`live_limits.LiveLimits`): `set_limits` stores them (`limit_overrides`) and
`sync_limits_once` applies the stored ones on every replica (each tick and before answering the
limits), so a `PUT /admin/limits` that the Service sends to one replica throttles all of them;
`clear_limits` returns them to their settings.

Loops: `start()` runs two maintenance tasks, each every `min(lock_ttl, heartbeat_ttl) / 3` seconds: the
lease loop (`heartbeat_once`, `renew_once`) and the runs loop (`sync_limits_once`, `reconcile_once`,
`engine.signals.flush` — running nodes, progress, node durations —, `pump_once`, `takeover_once`),
so a long admission pass or a slow store never delays a renewal. Each round's duration goes to
`gl_orchestrator_maintenance_tick_seconds{part}`; tests call the one-shot forms.

Shutdown (`shutdown`, SIGTERM via the CLI): stop admitting and taking over (an admission pass under
way ends first), give running runs `shutdown_grace_seconds` to finish (locks still renewed meanwhile),
interrupt what is left (status `interrupted`, resumable), release the locks, wait for the admission
passes of runs that ended just before, close the engine, the lock backend and the exporters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter

from orchestrator_core.admission import Admission
from orchestrator_core.agents import AgentRegistry
from orchestrator_core.engine import Engine
from orchestrator_core.errors import (
    LockBackendUnavailable,
    OrchestratorError,
    ServiceUnavailable,
    StoreError,
    short_reason,
)
from orchestrator_core.events import CompositeObserver, EngineObserver, SafeObserver
from orchestrator_core.http_agents import HttpAgentClient
from orchestrator_core.live_limits import LiveLimits
from orchestrator_core.locks import InProcessLockBackend, LockBackend, RedisLockBackend
from orchestrator_core.logs import LogObserver, RunLog
from orchestrator_core.metrics import Limits, MetricsObserver, OrchestratorMetrics
from orchestrator_core.ownership import Ownership
from orchestrator_core.records import ExecutionOptions, ExecutionRecord, ResumeResult
from orchestrator_core.settings import (
    OrchestratorSettings,
)
from orchestrator_core.tracing import RunTracer, TracingObserver, build_tracer_provider

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_SECONDS = 3.0
MIN_TICK_SECONDS = 0.05


class OrchestratorService:
    """One orchestrator replica (see module docstring)."""

    def __init__(
        self,
        settings: OrchestratorSettings,
        *,
        engine: Engine,
        registry: AgentRegistry,
        locks: LockBackend,
        metrics: OrchestratorMetrics,
        run_log: RunLog,
        tracer: RunTracer,
        http_agents: HttpAgentClient,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.locks = locks
        self.metrics = metrics
        self.run_log = run_log
        self.tracer = tracer
        self.http_agents = http_agents
        self._monotonic = monotonic
        self.live_limits = LiveLimits(settings, engine.store.limits)
        self.ownership = Ownership(
            settings,
            engine=engine,
            locks=locks,
            run_log=run_log,
            monotonic=monotonic,
            tick_interval=self.tick_interval,
            after_run=self._after_run,
            on_fenced=metrics.fenced,
        )
        engine.on_run_end = self.ownership.run_ended
        self.admission = Admission(
            settings.replica_id,
            engine=engine,
            locks=locks,
            ownership=self.ownership,
            run_log=run_log,
            max_concurrent=settings.max_concurrent_executions,
        )
        self._closed = False
        self._loop_tasks: list[asyncio.Task[None]] = []
        metrics.limits_provider = self.limits
        metrics.pool_provider = engine.pool_stats

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: OrchestratorSettings,
        *,
        registry: AgentRegistry | None = None,
        locks: LockBackend | None = None,
        span_exporter: SpanExporter | None = None,
        extra_observer: EngineObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> OrchestratorService:
        """Build every part from `settings` and open the engine (store + migrations)."""
        metrics = OrchestratorMetrics(default_timeout_seconds=settings.default_execution_timeout_seconds)
        run_log = RunLog()
        traced = bool(settings.otlp_endpoint) or span_exporter is not None
        tracer = RunTracer(
            build_tracer_provider(settings.otlp_endpoint, exporter=span_exporter), enabled=traced
        )
        http_agents = HttpAgentClient(
            settings.agent_url_template, settings.namespace, on_call=metrics.agent_call, run_log=run_log
        )
        registry = registry if registry is not None else AgentRegistry.from_entry_points()
        http_agents.register(registry, list(settings.http_agents))
        observers: list[EngineObserver] = [SafeObserver(MetricsObserver(metrics))]
        if traced:
            # Spans only where they go somewhere: without an exporter they would be ~5 KB of memory per
            # running run (two open spans) and CPU per node, for nothing.
            observers.append(SafeObserver(TracingObserver(tracer)))
        observers.append(SafeObserver(LogObserver(run_log)))
        if extra_observer is not None:
            observers.append(SafeObserver(extra_observer))
        pod = settings.pod_name or settings.replica_id
        if locks is None:
            if settings.redis_url:
                locks = RedisLockBackend(settings.redis_url, settings.replica_id, pod)
            else:
                locks = InProcessLockBackend(settings.replica_id, pod)
        try:
            engine = await Engine.open(settings, registry=registry, observer=CompositeObserver(*observers))
        except BaseException:
            await http_agents.close()
            await locks.close()
            tracer.shutdown()
            raise
        return cls(
            settings,
            engine=engine,
            registry=registry,
            locks=locks,
            metrics=metrics,
            run_log=run_log,
            tracer=tracer,
            http_agents=http_agents,
            monotonic=monotonic,
        )

    # -- state --------------------------------------------------------------------------------------

    @property
    def replica_id(self) -> str:
        return self.settings.replica_id

    @property
    def accepting(self) -> bool:
        return self.admission.accepting

    @property
    def max_concurrent_executions(self) -> int:
        return self.admission.max_concurrent

    def owned_executions(self) -> list[str]:
        """Ids of the runs this replica holds the lock of (running here)."""
        return self.ownership.ids()

    def limits(self) -> Limits:
        return Limits(
            active=len(self.ownership),
            queued=self.admission.queued,
            max_concurrent_executions=self.admission.max_concurrent,
            max_parallel_nodes=self.engine.max_parallel_nodes,
        )

    async def limits_json(self) -> dict[str, Any]:
        """`GET /metrics` (JSON) and `GET|PUT|DELETE /admin/limits`: fresh figures from the store.

        The live limits are read from the store first, so whichever replica the Service picks answers
        with the limits in force everywhere. While the store is down the runbook's step 5 still gets an
        answer: the active count and the limits are this replica's own, and `queued_executions` is the
        last length read.
        """
        try:
            await self.sync_limits_once()
            await self.admission.count_queued()
        except StoreError as exc:
            log.warning("limits and queue length not refreshed (store unavailable): %s", exc)
        limits = self.limits()
        return {
            "active_executions": limits.active,
            "max_concurrent_executions": limits.max_concurrent_executions,
            "queued_executions": limits.queued,
            "max_parallel_nodes": limits.max_parallel_nodes,
            "replica_id": self.replica_id,
            **self.live_limits.to_json(),
        }

    async def set_limits(
        self, *, max_parallel_nodes: int | None = None, max_concurrent_executions: int | None = None
    ) -> dict[str, Any]:
        """Change limits live on every replica; a raised execution limit admits queued runs at once.

        The new values are stored (`limit_overrides`): this replica applies them now, the others on
        their next maintenance tick or limits read, and replicas started later too, until
        `clear_limits`. While the store is unavailable (contention is when option 4 is used) the change
        still applies here at once, is reported `unshared`, and is stored when the store answers again.
        """
        await self.live_limits.set(
            self.replica_id,
            max_parallel_nodes=max_parallel_nodes,
            max_concurrent_executions=max_concurrent_executions,
        )
        await self._apply_limits()
        return await self.limits_json()

    async def clear_limits(self) -> dict[str, Any]:
        """Drop the live limits: every replica goes back to its own settings (env, config file)."""
        await self.live_limits.clear()
        await self._apply_limits()
        return await self.limits_json()

    async def sync_limits_once(self) -> bool:
        """Store what changed here while the store was down, then apply the stored live limits here
        (this replica's settings where none is stored). Returns whether a limit changed."""
        await self.live_limits.sync(self.replica_id)
        return await self._apply_limits()

    async def _apply_limits(self) -> bool:
        parallel, concurrent = self.live_limits.in_force()
        if (parallel, concurrent) == (self.engine.max_parallel_nodes, self.admission.max_concurrent):
            return False
        self.engine.set_max_parallel_nodes(parallel)
        self.admission.max_concurrent = concurrent
        log.info(
            "limits changed",
            extra={"max_parallel_nodes": parallel, "max_concurrent": concurrent},
        )
        try:  # the change is made; admitting queued runs under it may wait for the next tick
            await self.pump_once()
        except OrchestratorError as exc:
            log.warning("admission after the limit change deferred: %s", exc)
        return True

    async def readiness(self) -> dict[str, str]:
        """Per dependency: "ok" or the reason it is not (store and lock backend)."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await self.engine.list_executions(limit=1)
            checks["store"] = "ok"
        except (OrchestratorError, TimeoutError) as exc:
            checks["store"] = f"unavailable: {short_reason(exc) if str(exc) else 'timeout'}"
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await self.locks.ping()
            checks["locks"] = "ok"
        except (LockBackendUnavailable, TimeoutError) as exc:
            checks["locks"] = f"unavailable: {short_reason(exc) if str(exc) else 'timeout'}"
        if not self.accepting:
            checks["admission"] = "shutting down"
        return checks

    # -- operations (API) ---------------------------------------------------------------------------

    async def submit(
        self, dag_id: str, input_data: Any = None, options: ExecutionOptions | None = None
    ) -> ExecutionRecord:
        """Queue a run of the DAG and admit it if there is room; the record as it stands then."""
        if not self.accepting:
            raise ServiceUnavailable("the orchestrator is shutting down and admits no new runs")
        record = await self.engine.create_execution(dag_id, input_data, options)
        self.run_log.info(
            "execution queued",
            execution_id=record.execution_id,
            dag_id=dag_id,
            dag_version=record.dag_version,
        )
        # The run is recorded: from here on the caller must get its id (202), not an error that invites
        # a retry and so a duplicate run. When Redis or the store fails now, the run stays queued and
        # the maintenance loop (this replica's or another's) starts it once they are back.
        try:
            await self.pump_soon()
            executor = self.engine.executor(record.execution_id)
            if executor is not None:  # started here: its record as the claim stored it
                return executor.record
            return await self.engine.get_execution(record.execution_id)
        except OrchestratorError as exc:
            self.run_log.warning(
                f"execution stays queued: admission failed: {exc}",
                execution_id=record.execution_id,
                dag_id=dag_id,
            )
            return record

    async def cancel(self, execution_id: str) -> ExecutionRecord:
        """Cancel a queued or running run (checkpoints kept); `InvalidState` when it is finished."""
        record = await self.engine.cancel(execution_id)
        self.run_log.info("execution cancelled by request", execution_id=execution_id, dag_id=record.dag_id)
        return record

    async def resume(self, execution_id: str) -> ResumeResult:
        """Resume a failed/cancelled/interrupted run here, from its checkpoints.

        Admission applies as to a new run: with `max_concurrent_executions` runs going here the resume
        is queued (status `queued`, checkpoints kept) and starts, from its checkpoints, when admitted.
        """
        if not self.accepting:
            raise ServiceUnavailable("the orchestrator is shutting down and resumes nothing")
        return await self.admission.resume(execution_id)

    # -- one-shot loop bodies -------------------------------------------------------------------------

    async def heartbeat_once(self) -> None:
        await self.locks.heartbeat(self.settings.heartbeat_ttl_seconds)

    async def renew_once(self) -> list[str]:
        """Renew every owned lock; self-fence the runs whose lock is lost. Returns the fenced ids."""
        return await self.ownership.renew_once()

    async def reconcile_once(self) -> list[str]:
        """Stop the local runs that were cancelled through another replica. Returns their ids.

        A cancel answered by a replica that does not run the execution can only write the store
        (`cancelled`, checkpoints kept); the owner notices here, within one maintenance tick, stops
        the nodes without writing anything more, and its lock is released when its task ends. Without this
        the nodes ran on, the run held its slot and its duration gauge kept the alert firing. One store
        read for all the runs owned here (by primary key, in chunks, in one transaction).
        """
        stopped: list[str] = []
        owned = self.ownership.ids()
        if not owned:
            return stopped
        local = set(self.engine.local_executions())
        for head in await self.engine.store.executions.heads(owned, status="cancelled"):
            if head.execution_id not in local:
                continue
            self.run_log.warning(
                f"execution cancelled through another replica: stopping it here ({head.error})",
                execution_id=head.execution_id,
                dag_id=head.dag_id,
            )
            await self.engine.detach(head.execution_id)
            stopped.append(head.execution_id)
        return stopped

    async def pump_once(self) -> list[str]:
        """Start the oldest queued runs while there is room here (`Admission.pump_once`)."""
        return await self.admission.pump_once()

    async def pump_soon(self) -> None:
        """A pass that reads the queue after now, joined if one waits to start (`Admission.pump_soon`)."""
        await self.admission.pump_soon()

    async def takeover_once(self) -> list[str]:
        """Resume `running` runs whose owner is gone (`Admission.takeover_once`)."""
        return await self.admission.takeover_once()

    async def tick_once(self) -> None:
        """One round of both maintenance loops (tests, and `start`)."""
        await self.lease_tick_once()
        await self.runs_tick_once()

    async def lease_tick_once(self) -> None:
        """Heartbeat and renew every owned lock: the lease loop's round. Failures are logged."""
        await self._steps("leases", (("heartbeat", self.heartbeat_once), ("renew", self.renew_once)))

    async def runs_tick_once(self) -> None:
        """Live limits, remote cancels, admission and takeover: the runs loop's round."""
        steps = [
            ("limits", self.sync_limits_once),
            ("reconcile", self.reconcile_once),
            ("signals", self.engine.signals.flush),  # running nodes, progress, node durations
        ]
        if self.accepting:
            steps += [("admission", self.pump_once), ("takeover", self.takeover_once)]
        await self._steps("runs", steps)

    async def _steps(self, part: str, steps: Sequence[tuple[str, Callable[[], Awaitable[object]]]]) -> None:
        started = self._monotonic()
        for name, step in steps:
            try:
                await step()
            except OrchestratorError as exc:
                log.warning("maintenance step %s failed: %s", name, exc)
            except Exception:  # a bug in one step must not stop heartbeats and renewals for good
                log.exception("maintenance step %s crashed", name)
        self.metrics.tick(part, self._monotonic() - started)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Heartbeat, recover orphaned runs, and start the two maintenance loops.

        Leases (heartbeat, renewals) have a loop of their own, so that a long admission pass or a
        slow store never delays a renewal: a lock is only lost when Redis cannot be reached.
        """
        await self.tick_once()
        self._loop_tasks = [
            asyncio.create_task(
                self._loop(self.lease_tick_once), name=f"orchestrator-leases-{self.replica_id}"
            ),
            asyncio.create_task(self._loop(self.runs_tick_once), name=f"orchestrator-runs-{self.replica_id}"),
        ]

    def tick_interval(self) -> float:
        """Seconds between two rounds of each maintenance loop: a third of the shorter TTL."""
        return max(
            MIN_TICK_SECONDS, min(self.settings.lock_ttl_seconds, self.settings.heartbeat_ttl_seconds) / 3
        )

    async def _loop(self, tick: Callable[[], Awaitable[None]]) -> None:
        """Run `tick` every `tick_interval()` seconds, from start to start (a slow round shortens the
        wait before the next one, never delays the round after it)."""
        interval = self.tick_interval()
        next_at = self._monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - self._monotonic()))
            next_at = max(next_at + interval, self._monotonic())
            await tick()

    async def shutdown(self, grace_seconds: float | None = None) -> list[str]:
        """Graceful stop (see module docstring). Returns the ids left `interrupted`. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        await self.admission.stop()  # a pass under way ends first: its run is owned, so interrupted below
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        log.info("shutting down: %d runs owned, grace %.1fs", len(self.ownership), grace)
        interrupted = await self.ownership.stop_all(grace)
        for task in self._loop_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.locks.drop_heartbeat()
        except LockBackendUnavailable as exc:  # it expires on its own
            log.warning("could not drop heartbeat: %s", exc)
        try:
            await self.engine.close()
        finally:
            await self.locks.close()
            await self.http_agents.close()
            await asyncio.to_thread(self.tracer.shutdown)
        return interrupted

    # -- internals ----------------------------------------------------------------------------------

    async def _after_run(self, execution_id: str) -> None:
        """A run owned here ended (its lock is released): admit the next queued run."""
        if self.accepting:
            try:
                await self.pump_soon()
            except OrchestratorError as exc:
                log.warning("admission after %s ended failed: %s", execution_id, exc)
