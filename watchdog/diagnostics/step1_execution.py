"""Step 1 of the runbook: identify the stuck execution — its DAG, start, duration and timeout.

Called first by `watchdog.diagnostics.runner`; reads the orchestrator API (`GET /executions/{id}`, and
to name other stuck runs `GET /executions?status=running&over_timeout=true` — the oldest few and the
exact count, plus the running count: a few rows whatever the number of running runs; an orchestrator
before pagination is asked for its whole running list instead, as before) and, when configured,
Prometheus (the duration gauge, as a cross-check). Sets `state.execution` and `state.dag_id` for the
later steps. A run with no timeout at all that has run longer than `max_run_age_seconds` is a
problem (`over_max_age`): nothing else would ever call it stuck. So is a run stuck in a way its
timeout cannot see (`watchdog_sdk.stuck.execution_states`, the sweep's judgment with the same
thresholds: queued too long, a cancel not completing, a resume loop, its owner gone): each goes into
`stuck_states`, and the first one leads the summary.

Evidence keys: `execution_id`, `dag_id`, `status` (the execution's status; the policy matches on it),
`started_at`, `duration_seconds`, `timeout_seconds`, `over_timeout_seconds`, `owner`, `error`,
`running_executions`, `other_stuck` (ids of other running executions over their timeout, the oldest
OTHER_STUCK_SHOWN), `other_stuck_count` (all of them), `over_max_age` and `max_run_age_seconds` (a run
with no timeout), `prometheus_duration_seconds` / `prometheus_error` (when Prometheus is configured),
`queued_at`, `cancel_requested_at`, `resume_count`, `failure_streak`, `owner_alive` (the orchestrator's
stuck-run signals, None when it does not report them), `stuck_states` (a list of `{cause, severity,
summary, ...evidence}`, the causes of `watchdog_sdk.stuck.StuckCause`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from watchdog_sdk.clients.orchestrator import Execution, ExecutionQuery, OrchestratorClient
from watchdog_sdk.constants import M_DAG_EXECUTION_DURATION
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import NotFound, WatchdogError
from watchdog_sdk.step_helpers import finding, from_error, iso, promql_label, seconds_since
from watchdog_sdk.stuck import execution_states

STEP = 1
NAME = "execution"
OTHER_STUCK_SHOWN = 20


def _over(run: Execution, now: datetime) -> bool:
    duration = seconds_since(run.started_at, now)
    return run.timeout_seconds is not None and duration is not None and duration > run.timeout_seconds


async def _other_stuck(
    orchestrator: OrchestratorClient, execution: Execution, now: datetime
) -> dict[str, Any]:
    """The other running runs over their timeout (the oldest first) and how many runs are running."""
    execution_id = execution.execution_id
    page, running_count = await asyncio.gather(  # two requests at once: one round trip of waiting
        orchestrator.list_executions_page(
            ExecutionQuery("running", over_timeout=True), limit=OTHER_STUCK_SHOWN + 1
        ),
        orchestrator.count_executions(ExecutionQuery("running")),
    )
    if page.paged:
        others = [r.execution_id for r in page.items if r.execution_id != execution_id and _over(r, now)]
        total = len(page.items) if page.total is None else page.total
        counted_self = execution.status == "running" and _over(execution, now)
        return {
            "running_executions": running_count,
            "other_stuck": others[:OTHER_STUCK_SHOWN],
            "other_stuck_count": max(total - (1 if counted_self else 0), len(others)),
        }
    # An orchestrator before pagination ignored the filter and the limit: ask for its running list
    # (its default page, as before: a few hundred runs, not the largest page, per diagnosis).
    running = await orchestrator.list_executions(status="running")
    others = [r.execution_id for r in running if r.execution_id != execution_id and _over(r, now)]
    return {
        "running_executions": len(running),
        "other_stuck": others[:OTHER_STUCK_SHOWN],
        "other_stuck_count": len(others),
    }


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
        "queued_at": iso(execution.queued_at),
        "cancel_requested_at": iso(execution.cancel_requested_at),
        "resume_count": execution.resume_count,
        "failure_streak": None if execution.failure_streak is None else execution.failure_streak.model_dump(),
        "owner_alive": execution.owner_alive,
    }
    stuck = execution_states(execution, now, ctx.settings.stuck)
    evidence["stuck_states"] = [state.as_json() for state in stuck]

    try:
        evidence.update(await _other_stuck(ctx.orchestrator, execution, now))
    except WatchdogError as exc:
        evidence["running_list_error"] = str(exc)

    if ctx.prometheus is not None:
        query = f"{M_DAG_EXECUTION_DURATION}{{execution_id={promql_label(execution.execution_id)}}}"
        try:
            evidence["prometheus_duration_seconds"] = await ctx.prometheus.query_value(query)
        except WatchdogError as exc:
            evidence["prometheus_error"] = str(exc)

    where = f"execution {execution.execution_id} of DAG {execution.dag_id}"
    if stuck:
        also = f" (also: {', '.join(state.cause.value for state in stuck[1:])})" if len(stuck) > 1 else ""
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"{where} is {execution.status}; {stuck[0].summary}{also}",
            **evidence,
        )
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
        max_age = ctx.settings.max_run_age_seconds
        if max_age is not None and duration > max_age:
            evidence.update(over_max_age=True, max_run_age_seconds=max_age)
            return finding(
                STEP,
                NAME,
                StepStatus.PROBLEM,
                f"{where} running for {duration:.0f}s ({duration / 3600:.1f}h) with no timeout, "
                f"past the maximum age of {max_age:g}s",
                **evidence,
            )
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
