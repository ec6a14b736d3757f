"""Orchestrator metrics: names and labels of the contract, per-execution series only while running."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from gl_common.db import PoolStats
from orchestrator_core.events import (
    CheckpointEvent,
    ExecutionEvent,
    NodeAttemptEvent,
    NodeTimeoutEvent,
    RetryEvent,
)
from orchestrator_core.metrics import Limits, MetricsObserver, OrchestratorMetrics

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def samples(metrics: OrchestratorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def names(metrics: OrchestratorMetrics) -> set[str]:
    return {name for name, _ in samples(metrics)}


def started(execution_id: str, timeout: float | None = 60.0) -> ExecutionEvent:
    return ExecutionEvent(execution_id, "dag-a", 1, "running", T0, started_at=T0, timeout_seconds=timeout)


def test_running_execution_has_duration_and_timeout_series() -> None:
    now = [T0.timestamp() + 90]
    metrics = OrchestratorMetrics(clock=lambda: now[0])
    MetricsObserver(metrics).execution_started(started("e1"))
    s = samples(metrics)
    key = (("dag_id", "dag-a"), ("execution_id", "e1"), ("status", "running"))
    assert s[("gl_orchestrator_dag_execution_duration_seconds", key)] == 90
    assert (
        s[("gl_orchestrator_execution_timeout_seconds", (("dag_id", "dag-a"), ("execution_id", "e1")))] == 60
    )
    assert s[("gl_orchestrator_active_executions", ())] == 1
    now[0] += 30
    assert samples(metrics)[("gl_orchestrator_dag_execution_duration_seconds", key)] == 120


def test_series_removed_when_run_finishes_and_counted() -> None:
    metrics = OrchestratorMetrics(clock=lambda: T0.timestamp() + 10)
    observer = MetricsObserver(metrics)
    observer.execution_started(started("e1"))
    observer.execution_finished(
        ExecutionEvent("e1", "dag-a", 1, "completed", T0.replace(second=5), started_at=T0)
    )
    s = samples(metrics)
    assert not [k for k in s if k[0] == "gl_orchestrator_dag_execution_duration_seconds"]
    assert not [k for k in s if k[0] == "gl_orchestrator_execution_timeout_seconds"]
    assert s[("gl_orchestrator_active_executions", ())] == 0
    assert s[("gl_orchestrator_executions_total", (("dag_id", "dag-a"), ("status", "completed")))] == 1
    assert (
        s[("gl_orchestrator_dag_run_latency_seconds_sum", (("dag_id", "dag-a"), ("status", "completed")))]
        == 5
    )


def test_interrupted_run_drops_series_without_counting_a_result() -> None:
    metrics = OrchestratorMetrics()
    observer = MetricsObserver(metrics)
    observer.execution_started(started("e1"))
    observer.execution_finished(ExecutionEvent("e1", "dag-a", 1, "interrupted", T0, started_at=T0))
    assert "gl_orchestrator_executions_total" not in names(metrics)
    assert not metrics.running


def test_run_without_timeout_has_no_timeout_series() -> None:
    metrics = OrchestratorMetrics()
    MetricsObserver(metrics).execution_started(started("e1", timeout=None))
    assert "gl_orchestrator_execution_timeout_seconds" not in names(metrics)
    assert "gl_orchestrator_dag_execution_duration_seconds" in names(metrics)


def test_node_retry_timeout_and_checkpoint_counters() -> None:
    metrics = OrchestratorMetrics()
    observer = MetricsObserver(metrics)
    observer.node_attempt_finished(NodeAttemptEvent("e1", "d", "n1", "a", 1, T0, "completed", 0.2))
    observer.node_retry(RetryEvent("e1", "d", "n1", "a", 1, 0.5, "boom", T0))
    observer.node_timeout(NodeTimeoutEvent("e1", "d", "n1", "a", 2, 3.0, "fail", T0))
    observer.checkpoint_operation(CheckpointEvent("e1", "save", "error", 1, T0, "db down"))
    observer.checkpoint_operation(CheckpointEvent("e1", "save", "ok", 1, T0))
    s = samples(metrics)
    assert s[("gl_orchestrator_node_execution_duration_seconds_count", (("node_id", "n1"),))] == 1
    assert s[("gl_orchestrator_node_retries_total", (("node_id", "n1"),))] == 1
    assert s[("gl_orchestrator_node_timeouts_total", (("node_id", "n1"),))] == 1
    ops = "gl_orchestrator_checkpoint_operations_total"
    assert s[(ops, (("operation", "save"), ("status", "error")))] == 1
    assert s[(ops, (("operation", "save"), ("status", "ok")))] == 1


def test_limits_and_db_pool_come_from_providers() -> None:
    state = {"queued": 3}
    metrics = OrchestratorMetrics(
        limits_provider=lambda: Limits(
            active=2, queued=state["queued"], max_concurrent_executions=2, max_parallel_nodes=7
        ),
        pool_provider=lambda: PoolStats(size=5, checked_out=4, overflow=0, pending=2),
    )
    s = samples(metrics)
    assert s[("gl_orchestrator_active_executions", ())] == 2
    assert s[("gl_orchestrator_queued_executions", ())] == 3
    assert s[("gl_orchestrator_max_concurrent_executions", ())] == 2
    assert s[("gl_orchestrator_max_parallel_nodes", ())] == 7
    assert s[("gl_db_pool_active_connections", (("service", "orchestrator-service"),))] == 4
    assert s[("gl_db_pool_pending_connections", (("service", "orchestrator-service"),))] == 2
    state["queued"] = 0
    assert samples(metrics)[("gl_orchestrator_queued_executions", ())] == 0


def test_two_instances_do_not_share_series() -> None:
    one, two = OrchestratorMetrics(), OrchestratorMetrics()
    one.node_retried("n1")
    assert "gl_orchestrator_node_retries_total" in names(one)
    assert "gl_orchestrator_node_retries_total" not in names(two)


def test_agent_call_histogram() -> None:
    metrics = OrchestratorMetrics()
    metrics.agent_call("scope1", "ok", 0.1)
    key = ("gl_orchestrator_agent_call_duration_seconds_count", (("agent_id", "scope1"), ("outcome", "ok")))
    assert samples(metrics)[key] == 1
