"""Step 8 of the runbook: checkpoint store health.

Runs concurrently with steps 4-7 (`watchdog.diagnostics.runner`). Reads the run's checkpoints
(`GET /checkpoints/{id}`), checkpoint save errors over the last 15 minutes (Prometheus:
`increase(gl_orchestrator_checkpoint_operations_total{operation="save",status="error"}[15m])`; without
Prometheus, or when it fails, this run's own "checkpoint save failed" log lines of the last 15
minutes, plus the counter's total from the orchestrator's JSON metrics (`checkpoint_operations`; from
its Prometheus exposition, parsed off the event loop, only for an orchestrator older than that field)
— a total since the process started, which says nothing about this run, so it decides only when the
run's log lines cannot be read), and the provenance chain (`chain_valid`). A node that completed in
the trace but has no checkpoint means saves are failing (the orchestrator blocks progress rather than
lose data).

Evidence keys: `checkpoint_count`, `checkpoints` ([{node_id, status, created_at}]), `failed_checkpoints`,
`completed_without_checkpoint`, `save_errors_15m` (Prometheus, or this run's log lines),
`save_errors_source` (prometheus | run_logs), `save_error_lines`, `save_errors_total` (exposition),
`chain_valid`, `provenance_problems`, `*_error`.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

from watchdog_sdk.constants import M_CHECKPOINT_OPERATIONS
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.step_helpers import as_utc, finding, from_error, iso

STEP = 8
NAME = "checkpoints"

WINDOW = timedelta(minutes=15)
LOG_TAIL = 500
# The orchestrator's log line for a failed (and retried) save, in the run's own log.
SAVE_FAILED = re.compile(r"checkpoint save failed", re.IGNORECASE)
SAVE_ERRORS_15M = f'sum(increase({M_CHECKPOINT_OPERATIONS}{{operation="save",status="error"}}[15m]))'
GOOD_STATUSES = frozenset({"completed", "ok", "saved", "success", "skipped"})


async def _run_save_errors(ctx: DiagnosticContext, state: DiagnosisState, evidence: dict[str, Any]) -> None:
    """This run's checkpoint save failures of the last 15 minutes, from its own log lines."""
    try:
        records = await ctx.orchestrator.get_logs(state.execution_id, limit=LOG_TAIL)
    except WatchdogError as exc:
        evidence["run_logs_error"] = str(exc)
        return
    since = ctx.clock.now() - WINDOW
    lines = []
    for record in records:
        at = as_utc(record.ts)
        if not SAVE_FAILED.search(record.message) or (at is not None and at < since):
            continue
        lines.append(f"{record.ts or ''} {record.message}".strip())
    evidence["save_errors_15m"] = float(len(lines))
    evidence["save_errors_source"] = "run_logs"
    evidence["save_error_lines"] = lines[-5:]


async def _save_errors(ctx: DiagnosticContext, state: DiagnosisState, evidence: dict[str, Any]) -> None:
    if ctx.prometheus is not None:
        try:
            value = await ctx.prometheus.query_value(SAVE_ERRORS_15M)
            evidence["save_errors_15m"] = 0.0 if value is None or math.isnan(value) else round(value, 3)
            evidence["save_errors_source"] = "prometheus"
            return
        except WatchdogError as exc:
            evidence["prometheus_error"] = str(exc)  # fall back to the run's own log lines
    await _run_save_errors(ctx, state, evidence)
    try:
        metrics = await ctx.orchestrator.get_metrics()
    except WatchdogError as exc:
        evidence["metrics_error"] = str(exc)
    else:
        if metrics.has_diagnosis_figures:
            evidence["save_errors_total"] = metrics.checkpoint_count("save", "error")
            return
    try:
        samples = await ctx.orchestrator.scrape_metrics()
    except WatchdogError as exc:
        evidence["exposition_error"] = str(exc)
        return
    evidence["save_errors_total"] = sum(
        s.value
        for s in samples
        if s.name == M_CHECKPOINT_OPERATIONS
        and s.labels.get("operation") == "save"
        and s.labels.get("status") == "error"
    )


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Check the run's checkpoints, save errors and provenance chain."""
    try:
        result = await ctx.orchestrator.get_checkpoints(state.execution_id)
    except WatchdogError as exc:
        return from_error(STEP, NAME, exc, "cannot read the checkpoints")
    checkpoints = result.checkpoints
    evidence: dict[str, Any] = {
        "checkpoint_count": len(checkpoints),
        "checkpoints": [
            {"node_id": c.node_id, "status": c.status, "created_at": iso(c.created_at)} for c in checkpoints
        ],
        "failed_checkpoints": [c.node_id for c in checkpoints if c.status.lower() not in GOOD_STATUSES],
    }
    saved = {c.node_id for c in checkpoints}
    if state.trace is not None:
        evidence["completed_without_checkpoint"] = [
            n for n, t in state.trace.node_traces.items() if t.status == "completed" and n not in saved
        ]
    await _save_errors(ctx, state, evidence)
    try:
        provenance = await ctx.orchestrator.get_provenance(state.execution_id)
        evidence["chain_valid"] = provenance.chain_valid
        evidence["provenance_problems"] = [str(p) for p in provenance.problems][:10]
    except WatchdogError as exc:
        evidence["provenance_error"] = str(exc)

    problems = []
    errors_15m = evidence.get("save_errors_15m") or 0
    total = evidence.get("save_errors_total") or 0
    since_start = f"{total:g} checkpoint save error(s) since the orchestrator started"
    if errors_15m > 0:
        of_run = " of this run" if evidence.get("save_errors_source") == "run_logs" else ""
        problems.append(f"{errors_15m:g} checkpoint save error(s){of_run} in the last 15 minutes")
    elif total > 0 and "save_errors_15m" not in evidence:
        problems.append(since_start)  # the run's own lines are unreadable: the total is all we have
    if evidence.get("completed_without_checkpoint"):
        missing = ", ".join(evidence["completed_without_checkpoint"])
        problems.append(f"completed node(s) without a checkpoint: {missing}")
    if evidence["failed_checkpoints"]:
        problems.append(f"failed checkpoint(s): {', '.join(evidence['failed_checkpoints'])}")
    if evidence.get("chain_valid") is False:
        problems.append("the provenance chain is broken")
    if problems:
        if total > 0 and since_start not in problems:
            problems.append(since_start)
        return finding(STEP, NAME, StepStatus.PROBLEM, "; ".join(problems), **evidence)
    chain = "chain valid" if evidence.get("chain_valid") else "chain not checked"
    return finding(
        STEP, NAME, StepStatus.OK, f"{len(checkpoints)} checkpoint(s), no save errors, {chain}", **evidence
    )
