"""Diagnostic step 20, `queue_backlog`: are runs queued behind the concurrency limit?

Reads the orchestrator's `GET /metrics` (queued, active and maximum concurrent executions). A queue of
at least `QUEUE_THRESHOLD` runs while the active ones sit below the limit is not contention (step 5
covers a saturated limit): the admission loop is not keeping up, and the stuck run may simply be
waiting. The finding then names the likely cause `queue_backlog` (under `evidence["likely_cause"]`),
which the watchdog uses when the runbook's own rules name none.
"""

from __future__ import annotations

from watchdog_sdk.diagnosis import CAUSE_KEY, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext, DiagnosticStep
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.step_helpers import finding, from_error

NUMBER = 20
NAME = "queue_backlog"
CAUSE = "queue_backlog"
QUEUE_THRESHOLD = 10


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Look at the orchestrator's queue; never raises for the orchestrator's failure."""
    try:
        metrics = await ctx.orchestrator.get_metrics()
    except WatchdogError as exc:
        return from_error(NUMBER, NAME, exc, "reading the orchestrator's metrics")
    queued = metrics.queued_executions
    active, limit = metrics.active_executions, metrics.max_concurrent_executions
    if queued is None or active is None or limit is None:
        return finding(NUMBER, NAME, StepStatus.UNKNOWN, "the orchestrator does not report its queue")
    figures = {"queued": queued, "active": active, "max_concurrent_executions": limit}
    if queued >= QUEUE_THRESHOLD and active < limit:
        return finding(
            NUMBER,
            NAME,
            StepStatus.PROBLEM,
            f"{queued} runs queued while {active} of {limit} slots are busy",
            **figures,
            **{CAUSE_KEY: CAUSE},
        )
    return finding(NUMBER, NAME, StepStatus.OK, f"{queued} runs queued, {active} of {limit} busy", **figures)


QUEUE_BACKLOG = DiagnosticStep(NUMBER, NAME, run, timeout_seconds=5.0, causes=frozenset({CAUSE}))
