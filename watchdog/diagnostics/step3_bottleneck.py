"""Step 3 of the runbook: the bottleneck node — agent, start, attempts, input hash, and its running
time against its own timeout.

Called by `watchdog.diagnostics.runner` after step 2, from `state.trace`; reads the DAG definition
(`GET /dags/{dag_id}`) when the trace does not carry the node's timeout, and Prometheus (the node's
p99 duration) when configured. Sets `state.stuck_node_id`, `state.node`, `state.agent_id`.

Evidence keys: `node_id`, `agent_id`, `node_status`, `started_at`, `running_seconds`, `attempt_count`,
`input_hash`, `node_timeout_seconds`, `within_own_timeout` (bool or None), `timeout_ratio`
(running / own timeout), `typical_p99_seconds`, `candidates` (all running nodes, longest first);
for a running node also its progress (`last_progress_at`, `progress_message`, `progress_fraction`,
`progress_reports`), its `normal_duration` (`{count, p50_seconds, p95_seconds, p99_seconds}` of its
completed runs, from the orchestrator), the stall rule's verdict (`stall_reason`, `threshold_seconds`,
`seconds_since_progress`, `normal_p50_seconds`, `normal_p99_seconds`, `history_count`; the same rule
and thresholds as the sweep, `watchdog_sdk.stuck`) and `stuck_states` (`node_stalling`,
`retry_storm`). The summary shows the node's normal duration next to its current one.
"""

from __future__ import annotations

from typing import Any

from watchdog_sdk.clients.orchestrator import NodeTrace
from watchdog_sdk.constants import M_NODE_EXECUTION_DURATION
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.stall import format_seconds
from watchdog_sdk.step_helpers import as_utc, finding, iso, promql_label, seconds_since
from watchdog_sdk.stuck import NodeSignals, node_states, stall_evidence, stall_verdict

STEP = 3
NAME = "bottleneck"


async def _node_timeout_from_dag(ctx: DiagnosticContext, dag_id: str, node_id: str) -> float | None:
    dag = await ctx.orchestrator.get_dag(dag_id)
    nodes = dag.get("nodes")
    node: Any = None
    if isinstance(nodes, dict):
        node = nodes.get(node_id)
    elif isinstance(nodes, list):
        node = next((n for n in nodes if isinstance(n, dict) and n.get("node_id") == node_id), None)
    policy = node.get("timeout_policy") if isinstance(node, dict) else None
    value = policy.get("timeout_seconds") if isinstance(policy, dict) else None
    return float(value) if isinstance(value, int | float) else None


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Pick the node holding the run up and measure it."""
    trace = state.trace
    if trace is None:
        return finding(STEP, NAME, StepStatus.UNKNOWN, "no trace to find the bottleneck in (step 2 failed)")
    now = ctx.clock.now()
    nodes = trace.node_traces
    running = sorted(
        (n for n, t in nodes.items() if t.status == "running"),
        key=lambda n: seconds_since(nodes[n].started_at, now) or 0.0,
        reverse=True,
    )
    candidates = [{"node_id": n, "running_seconds": seconds_since(nodes[n].started_at, now)} for n in running]
    if running:
        node_id = running[0]
    else:
        level_order = [n for level in trace.topology_levels for n in level]
        waiting = [
            n for n in level_order if n in nodes and nodes[n].status in ("failed", "timed_out", "pending")
        ]
        if not waiting or trace.status != "running":
            return finding(STEP, NAME, StepStatus.OK, "no node is holding the run up", candidates=[])
        node_id = waiting[0]
    node = nodes[node_id]
    state.stuck_node_id = node_id
    state.node = node
    state.agent_id = node.agent_id

    running_seconds = seconds_since(node.started_at, now) if node.status == "running" else None
    evidence: dict[str, Any] = {
        "node_id": node_id,
        "agent_id": node.agent_id,
        "node_status": node.status,
        "started_at": iso(as_utc(node.started_at)),
        "running_seconds": running_seconds,
        "attempt_count": node.attempt_count,
        "input_hash": node.input_hash,
        "error": node.error,
        "candidates": candidates,
    }
    node_timeout = node.timeout_seconds
    if node_timeout is None and state.dag_id:
        try:
            node_timeout = await _node_timeout_from_dag(ctx, state.dag_id, node_id)
        except WatchdogError as exc:
            evidence["dag_error"] = str(exc)
    evidence["node_timeout_seconds"] = node_timeout
    within: bool | None = None
    if running_seconds is not None and node_timeout:
        within = running_seconds <= node_timeout
        evidence["timeout_ratio"] = round(running_seconds / node_timeout, 3)
    evidence["within_own_timeout"] = within
    normal = ""
    if node.status == "running":
        normal = _judge_running(ctx, node_id, node, evidence)

    if ctx.prometheus is not None:
        query = (
            f"histogram_quantile(0.99, sum(rate({M_NODE_EXECUTION_DURATION}_bucket"
            f"{{node_id={promql_label(node_id)}}}[1h])) by (le))"
        )
        try:
            evidence["typical_p99_seconds"] = await ctx.prometheus.query_value(query)
        except WatchdogError as exc:
            evidence["prometheus_error"] = str(exc)

    who = f"node {node_id} (agent {node.agent_id or 'N/A'}, attempt {node.attempt_count})"
    if node.status != "running":
        summary = (
            f"{who} is {node.status}"
            + (f": {node.error}" if node.error else "")
            + "; the level cannot finish"
        )
    elif running_seconds is None:
        summary = f"{who} is running (start time unknown)"
    elif within is False:
        summary = f"{who} running for {running_seconds:.0f}s{normal}, past its own {node_timeout:g}s timeout"
    elif within:
        summary = (
            f"{who} running for {running_seconds:.0f}s{normal}, within its own {node_timeout:g}s timeout"
        )
    else:
        summary = f"{who} running for {running_seconds:.0f}s{normal} (no node timeout known)"
    stuck = evidence.get("stuck_states") or []
    if stuck:
        summary += "; " + "; ".join(state["summary"] for state in stuck)
    return finding(STEP, NAME, StepStatus.PROBLEM, summary, **evidence)


def _judge_running(ctx: DiagnosticContext, node_id: str, node: NodeTrace, evidence: dict[str, Any]) -> str:
    """Add a running node's progress, normal duration and stuck states to `evidence`; return how its
    normal duration reads next to the current one (` (normally p50 6m 20s, p95 14m 06s, 40 runs)`)."""
    history = node.normal_duration
    evidence.update(
        last_progress_at=iso(as_utc(node.last_progress_at)),
        progress_message=node.progress_message,
        progress_fraction=node.progress_fraction,
        progress_reports=node.progress_reports,
        normal_duration=None if history is None else history.model_dump(),
    )
    now = ctx.clock.now()
    signals = NodeSignals(
        node_id,
        node.agent_id,
        node.attempt_count,
        as_utc(node.started_at),
        as_utc(node.last_progress_at),
        history,
    )
    verdict = stall_verdict(signals, now, ctx.settings.stuck)
    if verdict is not None:
        evidence.update(stall_evidence(verdict))
    evidence["stuck_states"] = [state.as_json() for state in node_states(signals, now, ctx.settings.stuck)]
    if history is None or not history.count:
        return " (no completed runs of this node to compare with)"
    return (
        f" (normally p50 {format_seconds(history.p50_seconds)}, p95 {format_seconds(history.p95_seconds)}, "
        f"{history.count} runs)"
    )
