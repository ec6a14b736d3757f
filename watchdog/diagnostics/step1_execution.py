"""Step 1 of the runbook: identify the stuck execution — its DAG, start, duration and timeout.

Called first by `watchdog.diagnostics.runner`; reads the orchestrator API (`GET /executions/{id}`, and
the running list to name other stuck runs) and, when configured, Prometheus (the duration gauge, as a
cross-check). Sets `state.execution` and `state.dag_id` for the later steps.

Evidence keys: `execution_id`, `dag_id`, `status` (the execution's status; the policy matches on it),
`started_at`, `duration_seconds`, `timeout_seconds`, `over_timeout_seconds`, `owner`, `error`,
`running_executions`, `other_stuck` (ids of other running executions over their timeout),
`prometheus_duration_seconds` / `prometheus_error` (when Prometheus is configured).
"""

from __future__ import annotations

from typing import Any

from watchdog_sdk.constants import M_DAG_EXECUTION_DURATION
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import NotFound, WatchdogError
from watchdog_sdk.step_helpers import finding, from_error, iso, promql_label, seconds_since

STEP = 1
NAME = "execution"


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Look the execution up and judge its duration against its timeout."""
    try:
        execution = await ctx.orchestrator.get_execution(state.execution_id)
    except NotFound as exc:
        return finding(
            STEP,
            NAME,
            StepStatus.ERROR,
            f"the orchestrator knows no execution {state.execution_id!r}: {exc.detail}",
            execution_id=state.execution_id,
            reason="not_found",
        )
    except WatchdogError as exc:
        return from_error(STEP, NAME, exc, "cannot read the execution", execution_id=state.execution_id)
    state.execution = execution
    state.dag_id = execution.dag_id

    now = ctx.clock.now()
    duration = seconds_since(execution.started_at, now)
    timeout = execution.timeout_seconds
    over = round(duration - timeout, 3) if duration is not None and timeout is not None else None
    evidence: dict[str, Any] = {
        "execution_id": execution.execution_id,
        "dag_id": execution.dag_id,
        "status": execution.status,
        "started_at": iso(execution.started_at),
        "duration_seconds": duration,
        "timeout_seconds": timeout,
        "over_timeout_seconds": over,
        "owner": execution.owner,
        "error": execution.error,
    }

    try:
        running = await ctx.orchestrator.list_executions(status="running")
        evidence["running_executions"] = len(running)
        others = []
        for other in running:
            if other.execution_id == execution.execution_id or other.timeout_seconds is None:
                continue
            other_duration = seconds_since(other.started_at, now)
            if other_duration is not None and other_duration > other.timeout_seconds:
                others.append(other.execution_id)
        evidence["other_stuck"] = others
    except WatchdogError as exc:
        evidence["running_list_error"] = str(exc)

    if ctx.prometheus is not None:
        query = f"{M_DAG_EXECUTION_DURATION}{{execution_id={promql_label(execution.execution_id)}}}"
        try:
            evidence["prometheus_duration_seconds"] = await ctx.prometheus.query_value(query)
        except WatchdogError as exc:
            evidence["prometheus_error"] = str(exc)

    where = f"execution {execution.execution_id} of DAG {execution.dag_id}"
    if execution.status == "interrupted":
        since = f" since {iso(execution.completed_at)}" if execution.completed_at else ""
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"{where} is interrupted{since} (its replica stopped before it finished) and nobody resumed it"
            + (f": {execution.error}" if execution.error else ""),
            **evidence,
        )
    if execution.status != "running":
        return finding(STEP, NAME, StepStatus.OK, f"{where} is {execution.status}, not running", **evidence)
    if duration is None:
        return finding(
            STEP, NAME, StepStatus.UNKNOWN, f"{where} is running but has no start time", **evidence
        )
    if timeout is None:
        return finding(
            STEP,
            NAME,
            StepStatus.UNKNOWN,
            f"{where} running for {duration:.0f}s; no timeout is set",
            **evidence,
        )
    if over is not None and over > 0:
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"{where} running for {duration:.0f}s ({duration / 60:.1f}m), "
            f"{over:.0f}s over its {timeout:g}s timeout",
            **evidence,
        )
    return finding(
        STEP,
        NAME,
        StepStatus.OK,
        f"{where} running for {duration:.0f}s, within its {timeout:g}s timeout",
        **evidence,
    )
