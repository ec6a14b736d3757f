"""Step 2 of the runbook: the execution trace — last completed node, running nodes, topology levels.

Called by `watchdog.diagnostics.runner` after step 1; reads `GET /executions/{id}/trace`. Sets
`state.trace` (and `state.dag_id` if step 1 could not).

Evidence keys: `status`, `topology_levels`, `nodes` ({node_id: status}), `last_completed_node`,
`running_nodes`, `failed_nodes` ({node_id: error}), `pending_nodes`, `stalled_level` (index of the
first level not finished), `stalled_level_nodes`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.step_helpers import as_utc, finding, from_error

STEP = 2
NAME = "trace"

DONE = frozenset({"completed", "skipped"})
FAILED = frozenset({"failed", "timed_out", "cancelled"})


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Read the trace and say where the run stands."""
    try:
        trace = await ctx.orchestrator.get_trace(state.execution_id)
    except WatchdogError as exc:
        return from_error(STEP, NAME, exc, "cannot read the execution trace")
    state.trace = trace
    state.dag_id = state.dag_id or trace.dag_id

    nodes = trace.node_traces
    order = [node for level in trace.topology_levels for node in level]
    order += [node for node in nodes if node not in order]
    running = [n for n in order if n in nodes and nodes[n].status == "running"]
    failed = {n: nodes[n].error for n in order if n in nodes and nodes[n].status in FAILED}
    pending = [n for n in order if n in nodes and nodes[n].status == "pending"]
    completed = [n for n in order if n in nodes and nodes[n].status == "completed"]
    floor = datetime.min.replace(tzinfo=UTC)
    last_completed = max(
        completed,
        key=lambda n: (as_utc(nodes[n].completed_at) or floor, order.index(n)),
        default=None,
    )
    stalled_level = next(
        (
            index
            for index, level in enumerate(trace.topology_levels)
            if any(nodes.get(n) is None or nodes[n].status not in DONE for n in level)
        ),
        None,
    )
    evidence = {
        "status": trace.status,
        "topology_levels": trace.topology_levels,
        "nodes": {n: nodes[n].status for n in order if n in nodes},
        "last_completed_node": last_completed,
        "running_nodes": running,
        "failed_nodes": failed,
        "pending_nodes": pending,
        "stalled_level": stalled_level,
        "stalled_level_nodes": trace.topology_levels[stalled_level] if stalled_level is not None else [],
    }
    after = f"after {last_completed}" if last_completed else "before any node completed"
    if trace.status != "running":
        return finding(STEP, NAME, StepStatus.OK, f"execution is {trace.status}; nothing running", **evidence)
    if running:
        level = f" at level {stalled_level}" if stalled_level is not None else ""
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"stalled{level} {after}: running {', '.join(running)}",
            **evidence,
        )
    if failed:
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"stalled {after}: {', '.join(failed)} failed while the run is still 'running'",
            **evidence,
        )
    if pending:
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"stalled {after}: no node running, {len(pending)} pending "
            "(blocked before starting the next node)",
            **evidence,
        )
    return finding(STEP, NAME, StepStatus.OK, f"every node finished {after}", **evidence)
