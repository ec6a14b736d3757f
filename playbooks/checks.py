"""The runbook's "Post-Resolution Verification" checks, shared by the playbooks' `verify()`.

1. the execution completed or was cancelled cleanly; 2. no other execution is stuck; 3. the provenance
chain is intact (after a resume); 4. active executions back within the limit; 5./6. node timeouts and
retries not increasing (PromQL, when Prometheus is configured). Each check returns a `Check` and never
raises: a backend that cannot be asked gives `unknown` with the reason. Called by the playbooks in
this package; reaches the orchestrator and Prometheus only through `watchdog_sdk.clients`.
"""

from __future__ import annotations

from collections.abc import Collection

from watchdog_sdk.clients.orchestrator import MAX_PAGE, Execution, ExecutionQuery
from watchdog_sdk.constants import M_NODE_RETRIES, M_NODE_TIMEOUTS
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.outcomes import Check, CheckStatus
from watchdog_sdk.playbook import PlaybookContext

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


async def wait_for_status(
    ctx: PlaybookContext, execution_id: str, statuses: Collection[str], timeout_seconds: float
) -> tuple[Execution | None, str]:
    """Poll the execution until its status is in `statuses` or `timeout_seconds` pass (by ctx.clock).

    Returns the last execution seen (None if it could never be read) and a note on how it ended.
    """
    deadline = ctx.clock.now().timestamp() + timeout_seconds
    last: Execution | None = None
    note = ""
    while True:
        try:
            last = await ctx.orchestrator.get_execution(execution_id)
            if last.status in statuses:
                return last, f"status {last.status}"
            note = f"still {last.status} after {timeout_seconds:.0f}s"
        except WatchdogError as exc:
            note = f"could not read the execution: {exc}"
        if ctx.clock.now().timestamp() >= deadline:
            return last, note
        await ctx.clock.sleep(ctx.limits.poll_interval_seconds)


def execution_status_check(execution: Execution | None, expected: Collection[str], note: str) -> Check:
    """Check 1 (decisive): the run ended in one of the `expected` statuses, cleanly."""
    if execution is None:
        return Check(name="execution_status", status=CheckStatus.UNKNOWN, detail=note, decisive=True)
    detail = (
        f"status {execution.status}, completed_at {execution.completed_at or 'N/A'}, error {execution.error}"
    )
    if execution.status in expected and not (execution.status == "completed" and execution.error):
        return Check(name="execution_status", status=CheckStatus.OK, detail=detail, decisive=True)
    return Check(
        name="execution_status", status=CheckStatus.PROBLEM, detail=f"{detail} ({note})", decisive=True
    )


async def no_other_stuck_runs(ctx: PlaybookContext, exclude: Collection[str] = ()) -> Check:
    """Check 2: no other running execution is over its timeout.

    Asks for exactly those (`over_timeout=true`, every page) and the running count, so it sees every
    run however many are running; each is checked again here (an orchestrator before pagination
    answers every running run, unfiltered)."""
    try:
        candidates = await ctx.orchestrator.list_executions(
            status="running", over_timeout=True, page_size=MAX_PAGE
        )
        counted = await ctx.orchestrator.count_executions(ExecutionQuery("running"))
    except WatchdogError as exc:
        return Check(name="no_other_stuck_runs", status=CheckStatus.UNKNOWN, detail=str(exc))
    running = len(candidates) if counted is None else counted
    now = ctx.clock.now()
    stuck = []
    for run in candidates:
        if run.execution_id in exclude or run.execution_id == ctx.execution_id:
            continue
        if run.status != "running" or run.started_at is None or run.timeout_seconds is None:
            continue
        if (now - run.started_at).total_seconds() > run.timeout_seconds:
            stuck.append(run.execution_id)
    if stuck:
        return Check(
            name="no_other_stuck_runs",
            status=CheckStatus.PROBLEM,
            detail=f"{len(stuck)} other run(s) over their timeout: {', '.join(sorted(stuck))}",
        )
    return Check(
        name="no_other_stuck_runs",
        status=CheckStatus.OK,
        detail=f"running executions: {running}, none stuck",
    )


async def provenance_check(ctx: PlaybookContext, execution_id: str) -> Check:
    """Check 3 (decisive): the provenance chain of the run verifies."""
    name = "provenance_chain_valid"
    try:
        provenance = await ctx.orchestrator.get_provenance(execution_id)
    except WatchdogError as exc:
        return Check(name=name, status=CheckStatus.UNKNOWN, detail=str(exc), decisive=True)
    if provenance.chain_valid:
        detail = f"chain valid ({len(provenance.chain)} records)"
        return Check(name=name, status=CheckStatus.OK, detail=detail, decisive=True)
    detail = f"chain invalid: {provenance.problems}"
    return Check(name=name, status=CheckStatus.PROBLEM, detail=detail, decisive=True)


async def active_executions_check(ctx: PlaybookContext) -> Check:
    """Check 4: active executions are within the configured maximum."""
    try:
        metrics = await ctx.orchestrator.get_metrics()
    except WatchdogError as exc:
        return Check(name="active_executions", status=CheckStatus.UNKNOWN, detail=str(exc))
    active, limit = metrics.active_executions, metrics.max_concurrent_executions
    detail = f"active {active}, max {limit}, queued {metrics.queued_executions}"
    if active is None or limit is None:
        return Check(name="active_executions", status=CheckStatus.UNKNOWN, detail=detail)
    status = CheckStatus.OK if active <= limit else CheckStatus.PROBLEM
    return Check(name="active_executions", status=status, detail=detail)


async def counter_increase_check(ctx: PlaybookContext, metric: str, name: str, window: str = "15m") -> Check:
    """Checks 5 and 6: `increase(metric[15m])`, reported for the on-call (advisory, never decisive).

    Right after an incident the stuck node's own timeouts and retries are in the window, so a non-zero
    value is expected; the check reports the number rather than guessing a threshold.
    """
    if ctx.prometheus is None:
        return Check(name=name, status=CheckStatus.UNKNOWN, detail="Prometheus not configured")
    query = f"sum(increase({metric}[{window}]))"
    try:
        samples = await ctx.prometheus.query(query)
    except WatchdogError as exc:
        return Check(name=name, status=CheckStatus.UNKNOWN, detail=f"{query}: {exc}")
    total = sum(float(sample.value) for sample in samples)
    return Check(name=name, status=CheckStatus.OK, detail=f"{query} = {total:g}")


async def prometheus_checks(ctx: PlaybookContext) -> list[Check]:
    """Checks 5 and 6 of the runbook."""
    return [
        await counter_increase_check(ctx, M_NODE_TIMEOUTS, "node_timeouts_increase_15m"),
        await counter_increase_check(ctx, M_NODE_RETRIES, "node_retries_increase_15m"),
    ]


async def run_completion_checks(ctx: PlaybookContext, timeout_seconds: float) -> list[Check]:
    """The runbook's post-resolution verification for a fix that lets the run itself finish
    (restart_agent, resume): wait (bounded) for the run to end, then 1. it completed, 3. its
    provenance chain is valid, 2. no other run is stuck, 4. active executions are normal, 5./6. node
    timeouts and retries are not increasing."""
    execution, note = await wait_for_status(ctx, ctx.execution_id, TERMINAL_STATUSES, timeout_seconds)
    return [
        execution_status_check(execution, {"completed"}, note),
        await provenance_check(ctx, ctx.execution_id),
        await no_other_stuck_runs(ctx),
        await active_executions_check(ctx),
        *(await prometheus_checks(ctx)),
    ]
