"""Step 5 of the runbook: resource contention — active vs. maximum executions, the queue, the DB
connection pool, and p99 node durations.

Runs concurrently with steps 4, 6-8 (`watchdog.diagnostics.runner`). Reads the orchestrator's JSON
metrics (`GET /metrics` under the API: the counts, and the answering replica's DB pool), and
Prometheus when configured (pool gauges, p99 per node — targeted queries; the active-executions gauge
as a fallback when the API fails). Only an orchestrator whose JSON metrics lack the pool figures
(older than them) makes it read the pool gauges from its Prometheus exposition (`GET /metrics` at
its root, parsed off the event loop), a page that grows with the running runs.

Evidence keys: `active_executions`, `max_concurrent_executions`, `queued_executions`,
`max_parallel_nodes`, `db_pool_active`, `db_pool_pending`, `p99_node_seconds` ({node_id: seconds},
top 5), `saturated` (active >= max with a queue), `source` (api | prometheus), `*_error`.
"""

from __future__ import annotations

import math
from typing import Any

from watchdog_sdk.constants import (
    M_ACTIVE_EXECUTIONS,
    M_DB_POOL_ACTIVE,
    M_DB_POOL_PENDING,
    M_MAX_CONCURRENT_EXECUTIONS,
    M_NODE_EXECUTION_DURATION,
    M_QUEUED_EXECUTIONS,
    ORCHESTRATOR_SERVICE_LABEL,
)
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import BackendUnavailable, WatchdogError
from watchdog_sdk.step_helpers import finding, promql_label

STEP = 5
NAME = "contention"

_SERVICE = f"{{service={promql_label(ORCHESTRATOR_SERVICE_LABEL)}}}"
P99_QUERY = (
    f"topk(5, histogram_quantile(0.99, sum(rate({M_NODE_EXECUTION_DURATION}_bucket[5m])) by (le, node_id)))"
)


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


async def _from_prometheus(ctx: DiagnosticContext, evidence: dict[str, Any], need_counts: bool) -> None:
    prometheus = ctx.prometheus
    assert prometheus is not None
    try:
        evidence["db_pool_active"] = _number(await prometheus.query_value(M_DB_POOL_ACTIVE + _SERVICE))
        evidence["db_pool_pending"] = _number(await prometheus.query_value(M_DB_POOL_PENDING + _SERVICE))
        samples = await prometheus.query(P99_QUERY)
        evidence["p99_node_seconds"] = {
            s.labels.get("node_id", "?"): round(s.value, 3) for s in samples if not math.isnan(s.value)
        }
        if need_counts:
            evidence["active_executions"] = _number(await prometheus.query_value(M_ACTIVE_EXECUTIONS))
            evidence["max_concurrent_executions"] = _number(
                await prometheus.query_value(M_MAX_CONCURRENT_EXECUTIONS)
            )
            evidence["queued_executions"] = _number(await prometheus.query_value(M_QUEUED_EXECUTIONS))
            evidence["source"] = "prometheus"
    except WatchdogError as exc:
        evidence["prometheus_error"] = str(exc)


async def _from_exposition(ctx: DiagnosticContext, evidence: dict[str, Any]) -> None:
    try:
        samples = await ctx.orchestrator.scrape_metrics()
    except WatchdogError as exc:
        evidence["exposition_error"] = str(exc)
        return
    for sample in samples:
        if sample.labels.get("service", ORCHESTRATOR_SERVICE_LABEL) != ORCHESTRATOR_SERVICE_LABEL:
            continue
        if sample.name == M_DB_POOL_ACTIVE:
            evidence["db_pool_active"] = sample.value
        elif sample.name == M_DB_POOL_PENDING:
            evidence["db_pool_pending"] = sample.value


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Compare load against limits and look for pool exhaustion."""
    evidence: dict[str, Any] = {}
    api_failed: WatchdogError | None = None
    pool_figures = False
    try:
        metrics = await ctx.orchestrator.get_metrics()
        evidence.update(
            active_executions=metrics.active_executions,
            max_concurrent_executions=metrics.max_concurrent_executions,
            queued_executions=metrics.queued_executions,
            max_parallel_nodes=metrics.max_parallel_nodes,
            source="api",
        )
        pool_figures = metrics.has_diagnosis_figures
        if metrics.db_pool is not None:
            evidence.update(db_pool_active=metrics.db_pool.active, db_pool_pending=metrics.db_pool.pending)
    except WatchdogError as exc:
        api_failed = exc
        evidence["api_error"] = str(exc)

    if ctx.prometheus is not None:
        await _from_prometheus(ctx, evidence, need_counts=api_failed is not None)
    elif not pool_figures:
        await _from_exposition(ctx, evidence)

    active = evidence.get("active_executions")
    maximum = evidence.get("max_concurrent_executions")
    queued = evidence.get("queued_executions") or 0
    pending = evidence.get("db_pool_pending") or 0
    if active is None or maximum is None:
        status = StepStatus.UNKNOWN if isinstance(api_failed, BackendUnavailable) else StepStatus.ERROR
        if api_failed is None:
            status = StepStatus.UNKNOWN
        return finding(
            STEP, NAME, status, f"cannot read execution counts: {api_failed or 'no data'}", **evidence
        )
    saturated = active >= maximum and queued > 0
    evidence["saturated"] = saturated
    load = f"{active:g}/{maximum:g} executions active, {queued:g} queued"
    problems = []
    if saturated:
        problems.append(f"at the concurrency limit ({load})")
    if pending > 0:
        problems.append(f"{pending:g} DB connection request(s) waiting for the pool")
    if problems:
        return finding(STEP, NAME, StepStatus.PROBLEM, "contention: " + "; ".join(problems), **evidence)
    return finding(STEP, NAME, StepStatus.OK, f"no contention: {load}", **evidence)
