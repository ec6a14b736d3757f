"""Prometheus metrics of the orchestrator: names, labels and how they are fed.

Where it sits: `service.OrchestratorService` owns one `OrchestratorMetrics` (one `CollectorRegistry`
per service instance, so two services in one process never share series). The engine's observer
events (run started/finished, node attempt finished, retry, timeout, checkpoint operation) arrive
through the service and land here; HTTP agents report call durations here; `api.py` serves
`render()` at `GET /metrics`.

Per-execution series (`gl_orchestrator_dag_execution_duration_seconds{execution_id,dag_id,status}` and
`gl_orchestrator_execution_timeout_seconds{execution_id,dag_id}`, the run's DAG timeout or else
`default_execution_timeout_seconds`) are computed at scrape time from the set of running executions,
so they exist exactly while a run is running and disappear when it ends: cardinality stays bounded
by `max_concurrent_executions`. Live gauges (active, queued, limits,
`gl_db_pool_*`) are read from providers at scrape time as well, so they can never go stale.

Metric names live in this module only (the `M_*` constants); the runbook and the shipped alert rule
depend on them, see docs/architecture.md "Metrics".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gl_common.db import PoolStats
from orchestrator_core.events import (
    CheckpointEvent,
    EngineObserver,
    ExecutionEvent,
    NodeAttemptEvent,
    NodeProgressEvent,
    NodeTimeoutEvent,
    RetryEvent,
)
from orchestrator_core.records import FINISHED_STATUSES

M_DAG_EXECUTION_DURATION = "gl_orchestrator_dag_execution_duration_seconds"
M_EXECUTION_TIMEOUT = "gl_orchestrator_execution_timeout_seconds"
M_ACTIVE_EXECUTIONS = "gl_orchestrator_active_executions"
M_QUEUED_EXECUTIONS = "gl_orchestrator_queued_executions"
M_MAX_CONCURRENT_EXECUTIONS = "gl_orchestrator_max_concurrent_executions"
M_MAX_PARALLEL_NODES = "gl_orchestrator_max_parallel_nodes"
M_NODE_EXECUTION_DURATION = "gl_orchestrator_node_execution_duration_seconds"
M_CHECKPOINT_OPERATIONS = "gl_orchestrator_checkpoint_operations"  # exposed with the `_total` suffix
M_NODE_TIMEOUTS = "gl_orchestrator_node_timeouts"  # `_total`
M_NODE_RETRIES = "gl_orchestrator_node_retries"  # `_total`
M_NODE_PROGRESS_REPORTS = "gl_orchestrator_node_progress_reports"  # `_total`
M_EXECUTIONS = "gl_orchestrator_executions"  # `_total`
M_DAG_RUN_LATENCY = "gl_orchestrator_dag_run_latency_seconds"
M_AGENT_CALL_DURATION = "gl_orchestrator_agent_call_duration_seconds"
M_MAINTENANCE_TICK = "gl_orchestrator_maintenance_tick_seconds"
M_SELF_FENCED = "gl_orchestrator_self_fenced_executions"  # `_total`
M_DB_POOL_ACTIVE = "gl_db_pool_active_connections"
M_DB_POOL_PENDING = "gl_db_pool_pending_connections"

SERVICE_LABEL = "orchestrator-service"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NODE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


@dataclass(frozen=True)
class Limits:
    """Admission state read at scrape time."""

    active: int
    queued: int
    max_concurrent_executions: int
    max_parallel_nodes: int


@dataclass
class _Running:
    dag_id: str
    started_at: float  # epoch seconds (wall clock): a resumed run keeps its original start
    timeout_seconds: float | None


class _LiveCollector(Collector):
    """Scrape-time gauges: per-execution series, admission limits, DB pool."""

    def __init__(self, owner: OrchestratorMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        owner = self._owner
        now = owner.clock()
        duration = GaugeMetricFamily(
            M_DAG_EXECUTION_DURATION,
            "Seconds since a running DAG execution started (series removed when the run ends).",
            labels=["execution_id", "dag_id", "status"],
        )
        timeout = GaugeMetricFamily(
            M_EXECUTION_TIMEOUT,
            "Execution timeout of a running execution, in seconds: its DAG's, else the default.",
            labels=["execution_id", "dag_id"],
        )
        for execution_id, run in sorted(owner.running.items()):
            duration.add_metric([execution_id, run.dag_id, "running"], max(0.0, now - run.started_at))
            effective = owner.effective_timeout(run.timeout_seconds)
            if effective is not None:
                timeout.add_metric([execution_id, run.dag_id], effective)
        yield duration
        yield timeout

        limits = owner.limits_provider() if owner.limits_provider is not None else None
        active = limits.active if limits is not None else len(owner.running)
        yield GaugeMetricFamily(M_ACTIVE_EXECUTIONS, "Executions running on this replica.", value=active)
        if limits is not None:
            yield GaugeMetricFamily(
                M_QUEUED_EXECUTIONS, "Executions waiting for admission (FIFO).", value=limits.queued
            )
            yield GaugeMetricFamily(
                M_MAX_CONCURRENT_EXECUTIONS,
                "Admission limit: executions allowed to run at once.",
                value=limits.max_concurrent_executions,
            )
            yield GaugeMetricFamily(
                M_MAX_PARALLEL_NODES,
                "Nodes of one level allowed to run at once.",
                value=limits.max_parallel_nodes,
            )

        pool = owner.pool_provider() if owner.pool_provider is not None else None
        if pool is not None:
            active_g = GaugeMetricFamily(
                M_DB_POOL_ACTIVE, "Database connections checked out of the pool.", labels=["service"]
            )
            active_g.add_metric([owner.service], pool.checked_out)
            pending_g = GaugeMetricFamily(
                M_DB_POOL_PENDING, "Callers waiting for a database connection.", labels=["service"]
            )
            pending_g.add_metric([owner.service], pool.pending)
            yield active_g
            yield pending_g


class OrchestratorMetrics:
    """All orchestrator metrics in one private registry."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        service: str = SERVICE_LABEL,
        limits_provider: Callable[[], Limits] | None = None,
        pool_provider: Callable[[], PoolStats | None] | None = None,
        default_timeout_seconds: float | None = None,
    ) -> None:
        self.clock = clock
        self.default_timeout_seconds = default_timeout_seconds
        self.service = service
        self.limits_provider = limits_provider
        self.pool_provider = pool_provider
        self.running: dict[str, _Running] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.node_duration = Histogram(
            M_NODE_EXECUTION_DURATION,
            "Duration of node attempts, by node.",
            ["node_id"],
            buckets=_NODE_BUCKETS,
            registry=self.registry,
        )
        self.checkpoint_operations = Counter(
            M_CHECKPOINT_OPERATIONS,
            "Checkpoint store operations by outcome.",
            ["operation", "status"],
            registry=self.registry,
        )
        self.node_timeouts = Counter(
            M_NODE_TIMEOUTS, "Node attempts that hit their timeout.", ["node_id"], registry=self.registry
        )
        self.node_retries = Counter(
            M_NODE_RETRIES, "Node attempts retried by the retry policy.", ["node_id"], registry=self.registry
        )
        # By DAG and node, like the node series above: bounded by the registered DAGs, never per run.
        self.node_progress_reports = Counter(
            M_NODE_PROGRESS_REPORTS,
            "Progress reports of running nodes taken by this replica (a reporting node is slow, not hung).",
            ["dag_id", "node_id"],
            registry=self.registry,
        )
        self.executions = Counter(
            M_EXECUTIONS, "Finished executions by final status.", ["dag_id", "status"], registry=self.registry
        )
        self.run_latency = Histogram(
            M_DAG_RUN_LATENCY,
            "Latency of finished DAG runs.",
            ["dag_id", "status"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.agent_call_duration = Histogram(
            M_AGENT_CALL_DURATION,
            "Duration of calls to HTTP agents, by outcome.",
            ["agent_id", "outcome"],
            buckets=_NODE_BUCKETS,
            registry=self.registry,
        )
        self.maintenance_tick = Histogram(
            M_MAINTENANCE_TICK,
            "Duration of one maintenance step, by part: `leases` (heartbeat and every lock renewed, in one "
            "round trip) and `runs` (live limits, remote cancels, stuck-run signals, admission, takeover).",
            ["part"],
            buckets=_TICK_BUCKETS,
            registry=self.registry,
        )
        self.self_fenced = Counter(
            M_SELF_FENCED,
            "Runs this replica stopped because their ownership lock was lost or could not be renewed in "
            "time, by reason (`lost`, `unrenewable`).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    # -- runs ----------------------------------------------------------------------------------------

    def effective_timeout(self, own: float | None) -> float | None:
        """A run's timeout: its DAG's own, else the default (`default_execution_timeout_seconds`)."""
        return own if own is not None else self.default_timeout_seconds

    def execution_started(
        self, execution_id: str, dag_id: str, started_at: float, timeout_seconds: float | None
    ) -> None:
        """A run is running on this replica (also after resume/takeover, with its original start)."""
        self.running[execution_id] = _Running(dag_id, started_at, timeout_seconds)

    def execution_stopped(self, execution_id: str) -> None:
        """The run no longer runs here (interrupted, handed over): drop its series, count nothing."""
        self.running.pop(execution_id, None)

    def execution_finished(self, execution_id: str, dag_id: str, status: str, latency_seconds: float) -> None:
        """A run reached a final status: drop its series, count it, observe its latency."""
        self.running.pop(execution_id, None)
        self.executions.labels(dag_id=dag_id, status=status).inc()
        self.run_latency.labels(dag_id=dag_id, status=status).observe(max(0.0, latency_seconds))

    # -- nodes, checkpoints, agents ------------------------------------------------------------------

    def node_attempt_finished(self, node_id: str, duration_seconds: float) -> None:
        self.node_duration.labels(node_id=node_id).observe(max(0.0, duration_seconds))

    def node_timed_out(self, node_id: str) -> None:
        self.node_timeouts.labels(node_id=node_id).inc()

    def node_retried(self, node_id: str) -> None:
        self.node_retries.labels(node_id=node_id).inc()

    def node_progress(self, dag_id: str, node_id: str) -> None:
        self.node_progress_reports.labels(dag_id=dag_id, node_id=node_id).inc()

    def checkpoint_operation(self, operation: str, status: str) -> None:
        """`status` is `ok` or `error` (the runbook queries `status="error"`)."""
        self.checkpoint_operations.labels(operation=operation, status=status).inc()

    def agent_call(self, agent_id: str, outcome: str, duration_seconds: float) -> None:
        self.agent_call_duration.labels(agent_id=agent_id, outcome=outcome).observe(
            max(0.0, duration_seconds)
        )

    def tick(self, part: str, seconds: float) -> None:
        self.maintenance_tick.labels(part=part).observe(max(0.0, seconds))

    def fenced(self, reason: str) -> None:
        self.self_fenced.labels(reason=reason).inc()

    def checkpoint_counts(self) -> list[tuple[str, str, float]]:
        """`(operation, status, count)` of every checkpoint operation counted so far (the JSON figures
        of `GET /api/v1/orchestrator/metrics`, for diagnosis without the exposition page)."""
        counts = []
        for metric in self.checkpoint_operations.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts.append((sample.labels["operation"], sample.labels["status"], sample.value))
        return sorted(counts)

    def render(self) -> bytes:
        """Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


class MetricsObserver(EngineObserver):
    """Feeds engine events into `OrchestratorMetrics`."""

    def __init__(self, metrics: OrchestratorMetrics) -> None:
        self.metrics = metrics

    def execution_started(self, event: ExecutionEvent) -> None:
        started = event.started_at or event.at
        self.metrics.execution_started(
            event.execution_id, event.dag_id, started.timestamp(), event.timeout_seconds
        )

    def execution_finished(self, event: ExecutionEvent) -> None:
        if event.status not in FINISHED_STATUSES:  # interrupted: it may go on elsewhere, not a result
            self.metrics.execution_stopped(event.execution_id)
            return
        started = event.started_at or event.at
        latency = (event.at - started).total_seconds()
        self.metrics.execution_finished(event.execution_id, event.dag_id, event.status, latency)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        if event.duration_seconds is not None:
            self.metrics.node_attempt_finished(event.node_id, event.duration_seconds)

    def node_retry(self, event: RetryEvent) -> None:
        self.metrics.node_retried(event.node_id)

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        self.metrics.node_timed_out(event.node_id)

    def checkpoint_operation(self, event: CheckpointEvent) -> None:
        self.metrics.checkpoint_operation(event.operation, event.status)

    def node_progress(self, event: NodeProgressEvent) -> None:
        self.metrics.node_progress(event.dag_id, event.node_id)
