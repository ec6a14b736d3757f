"""Step 4 of the runbook: is the agent of the bottleneck node responsive?

Runs concurrently with steps 5-8 (`watchdog.diagnostics.runner`), from `state.agent_id`. Always asks
the orchestrator what it knows of the agent (`GET /agents`: kind, restarts, running nodes) and reads
the stuck node's own log lines of its current attempt (`GET /executions/{id}/logs?node_id=`), filtered
as the runbook filters agent logs: a line saying the agent hangs, is stuck, blocked or waiting is the
sign of a hung agent, as opposed to a node that is merely slow (step 3 alone cannot tell them apart
while the node is within its own timeout). With
Kubernetes: the agent's pods by label `agent-id=<id>` (phase, readiness, restarts, waiting/terminated
reasons such as CrashLoopBackOff and OOMKilled), the last 200 log lines of each pod filtered as the
runbook filters them, and CPU/memory from metrics.k8s.io against the containers' limits. Without
Kubernetes (embedded mode) the finding is `unknown` with the reason, plus the orchestrator's view.

Evidence keys: `agent_id`, `orchestrator_agent` ({kind, restarts, running_nodes}: at most
RUNNING_NODES_SHOWN of them — an agent may run a node of each of thousands of runs),
`agent_running_nodes_total`, `pods` (list of
pod dicts, see `PodInfo.as_dict`), `pod_count`, `unhealthy_pods`, `reasons` (waiting/terminated
reasons now, and each container's last termination if it ended after the stuck attempt started),
`earlier_reasons` / `reasons_since` (last terminations before that: history, not a cause),
`log_lines` ({pod: matching lines}), `usage` ({pod: {cpu_cores, memory_bytes, cpu_ratio,
memory_ratio}}), `near_limit` (pods using >= 90% of a limit), `node_log_lines` (the stuck node's
lines of its current attempt matching the runbook filter, last 50), `hung_lines` (those saying it
hangs, is stuck, blocked or waiting), `*_error` (per failed sub-query).
"""

from __future__ import annotations

import re
import textwrap
from datetime import datetime, timedelta
from typing import Any

from watchdog_sdk.clients.kubernetes import PodInfo
from watchdog_sdk.constants import AGENT_LABEL
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.step_helpers import MAX_EVIDENCE_LINES, as_utc, filter_lines, finding, from_error

# `kubectl logs ... | grep -i "error\|timeout\|hang\|stuck\|blocked\|waiting"`
AGENT_LOG_FILTER = re.compile(r"error|timeout|hang|stuck|blocked|waiting", re.IGNORECASE)

STEP = 4
NAME = "agent"

BAD_REASONS = frozenset(
    {"CrashLoopBackOff", "OOMKilled", "Error", "ImagePullBackOff", "ErrImagePull", "CreateContainerError"}
)
LOG_TAIL = 200
MAX_PODS_FOR_LOGS = 5
NEAR_LIMIT = 0.9
# The runbook's filter, narrowed to "the agent is hung" (errors and timeouts are other stories).
HUNG = re.compile(
    r"\b(hang|hangs|hanging|hung|stuck|blocked|waiting|deadlock(ed)?|not responding|unresponsive)\b",
    re.IGNORECASE,
)


RUNNING_NODES_SHOWN = 20


async def _orchestrator_view(ctx: DiagnosticContext, agent_id: str, evidence: dict[str, Any]) -> None:
    try:
        agents = await ctx.orchestrator.list_agents()
    except WatchdogError as exc:
        evidence["orchestrator_agents_error"] = str(exc)
        return
    match = next((a for a in agents if a.agent_id == agent_id), None)
    if match is None:
        evidence["orchestrator_agent"] = None
        return
    running = list(match.running_nodes)
    evidence["orchestrator_agent"] = {
        "kind": match.kind,
        "restarts": match.restarts,
        "running_nodes": running[:RUNNING_NODES_SHOWN],
    }
    evidence["agent_running_nodes_total"] = len(running)


async def _node_logs(ctx: DiagnosticContext, state: DiagnosisState, evidence: dict[str, Any]) -> str:
    """Put the stuck node's log lines of its current attempt that match the runbook's agent-log filter
    in `evidence`; the last one saying the agent hangs, as summary text ("" when none does)."""
    node = state.node
    if state.stuck_node_id is None or node is None or node.status != "running":
        return ""
    try:
        records = await ctx.orchestrator.get_logs(
            state.execution_id, node_id=state.stuck_node_id, limit=LOG_TAIL
        )
    except WatchdogError as exc:
        evidence["node_logs_error"] = str(exc)
        return ""
    since = as_utc(node.started_at)
    lines: list[str] = []
    hung: list[str] = []
    said = ""
    for record in records:
        if record.node_id not in (None, state.stuck_node_id):
            continue
        at = as_utc(record.ts)
        if since is not None and at is not None and at < since:
            continue  # an earlier attempt
        if not AGENT_LOG_FILTER.search(record.message):
            continue
        line = " ".join(part for part in (str(record.ts or ""), record.level or "", record.message) if part)
        lines.append(line)
        # The agent id itself may contain a word such as "hang" (builtin.hang): match without it.
        message = record.message.replace(state.agent_id, "") if state.agent_id else record.message
        if HUNG.search(message):
            hung.append(line)
            said = record.message
    evidence["node_log_lines"] = lines[-MAX_EVIDENCE_LINES:]
    evidence["hung_lines"] = hung[-10:]
    if not said:
        return ""
    quoted = textwrap.shorten(said, width=160, placeholder=" …")
    return f"node {state.stuck_node_id} logs that its agent hangs: {quoted!r}"


def _relevant_since(ctx: DiagnosticContext, state: DiagnosisState) -> datetime:
    """A container's last termination matters when it ended after the stuck attempt started (or,
    with no start known, within the last hour); an OOM kill of last week is history."""
    started = as_utc(state.node.started_at) if state.node is not None else None
    return started if started is not None else ctx.clock.now() - timedelta(hours=1)


def _current_reasons(pod: PodInfo, since: datetime) -> list[str]:
    """The pod's waiting/terminated reasons now, and its last termination's if it ended after `since`
    (or when it is not known when it ended)."""
    found: list[str] = []
    for c in pod.containers:
        ended = as_utc(c.last_terminated_at)
        last = c.last_terminated_reason if ended is None or ended >= since else None
        for reason in (c.waiting_reason, c.terminated_reason, last):
            if reason and reason not in found:
                found.append(reason)
    return found


def _hung_in_pod_log(state: DiagnosisState, pod: str, lines: list[str], evidence: dict[str, Any]) -> str:
    """An HTTP agent logs in its own pod: a filtered line that names this execution and says the
    agent hangs counts as the node's own (the pod serves other runs too, hence the execution id)."""
    node = state.node
    if node is None or node.status != "running":
        return ""
    mine = [line for line in lines if state.execution_id in line]
    hung = [
        line for line in mine if HUNG.search(line.replace(state.agent_id, "") if state.agent_id else line)
    ]
    if not hung:
        return ""
    evidence["hung_lines"] = [*evidence.get("hung_lines", []), *(f"{pod}: {line}" for line in hung)][-10:]
    quoted = textwrap.shorten(hung[-1], width=160, placeholder=" …")
    return f"pod {pod} logs that the agent hangs on this run: {quoted!r}"


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Judge the agent's pods, logs and resource use."""
    agent_id = state.agent_id
    if not agent_id:
        return finding(STEP, NAME, StepStatus.UNKNOWN, "no bottleneck agent identified (step 3)")
    evidence: dict[str, Any] = {"agent_id": agent_id}
    await _orchestrator_view(ctx, agent_id, evidence)
    hung = await _node_logs(ctx, state, evidence)
    known = evidence.get("orchestrator_agent")
    if ctx.kubernetes is None:
        view = (
            f"; orchestrator: {known['kind']} agent, {known['restarts']} restarts, "
            f"running {evidence['agent_running_nodes_total']} node(s)"
            if known
            else ""
        )
        if hung:
            return finding(
                STEP,
                NAME,
                StepStatus.PROBLEM,
                f"agent {agent_id}: {hung} (pods not checked: Kubernetes not configured{view})",
                reason="kubernetes_not_configured",
                **evidence,
            )
        return finding(
            STEP,
            NAME,
            StepStatus.UNKNOWN,
            f"Kubernetes not configured (embedded mode): agent {agent_id} pods cannot be checked{view}",
            reason="kubernetes_not_configured",
            **evidence,
        )

    selector = f"{AGENT_LABEL}={agent_id}"
    try:
        pods = await ctx.kubernetes.list_pods(selector)
    except WatchdogError as exc:
        return from_error(STEP, NAME, exc, f"cannot list pods {selector}", **evidence)
    evidence["pod_count"] = len(pods)
    evidence["pods"] = [p.as_dict() for p in pods]
    if not pods:
        return finding(
            STEP, NAME, StepStatus.PROBLEM, f"no pod runs agent {agent_id} (selector {selector})", **evidence
        )

    since = _relevant_since(ctx, state)
    current = {p.name: _current_reasons(p, since) for p in pods}
    reasons = sorted({r for p in pods for r in current[p.name]})
    evidence["reasons"] = reasons
    earlier = sorted({r for p in pods for r in p.reasons()} - set(reasons))
    if earlier:
        evidence["earlier_reasons"] = earlier  # last terminations before `since`: history, not the cause
        evidence["reasons_since"] = since.isoformat()
    unhealthy = [p.name for p in pods if not p.ready or p.terminated or BAD_REASONS & set(current[p.name])]
    evidence["unhealthy_pods"] = unhealthy

    log_lines: dict[str, list[str]] = {}
    for pod in pods[:MAX_PODS_FOR_LOGS]:
        try:
            text = await ctx.kubernetes.read_pod_log(pod.name, tail_lines=LOG_TAIL)
        except WatchdogError as exc:
            evidence.setdefault("log_errors", {})[pod.name] = str(exc)
            continue
        log_lines[pod.name] = filter_lines(text.splitlines(), AGENT_LOG_FILTER)
        if not hung:
            hung = _hung_in_pod_log(state, pod.name, log_lines[pod.name], evidence)
    evidence["log_lines"] = log_lines

    near_limit: list[str] = []
    try:
        usage = await ctx.kubernetes.pod_metrics(selector)
    except WatchdogError as exc:
        evidence["metrics_error"] = str(exc)
        usage = []
    limits = {p.name: p.containers for p in pods}
    usage_evidence: dict[str, dict[str, Any]] = {}
    for item in usage:
        containers = limits.get(item.name, [])
        cpu_limit = sum(c.cpu_limit_cores or 0 for c in containers) or None
        mem_limit = sum(c.memory_limit_bytes or 0 for c in containers) or None
        entry: dict[str, Any] = {"cpu_cores": item.cpu_cores, "memory_bytes": item.memory_bytes}
        if cpu_limit:
            entry["cpu_ratio"] = round(item.cpu_cores / cpu_limit, 3)
        if mem_limit:
            entry["memory_ratio"] = round(item.memory_bytes / mem_limit, 3)
        if max(entry.get("cpu_ratio", 0), entry.get("memory_ratio", 0)) >= NEAR_LIMIT:
            near_limit.append(item.name)
        usage_evidence[item.name] = entry
    evidence["usage"] = usage_evidence
    evidence["near_limit"] = near_limit

    if unhealthy:
        why = ", ".join(reasons) if reasons else "not ready"
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"agent {agent_id}: {len(unhealthy)}/{len(pods)} pod(s) unhealthy ({why})",
            **evidence,
        )
    if near_limit:
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"agent {agent_id}: pod(s) {', '.join(near_limit)} at >= {NEAR_LIMIT:.0%} of a resource limit",
            **evidence,
        )
    if hung:
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"agent {agent_id}: {len(pods)} pod(s) running and ready, but {hung}",
            **evidence,
        )
    matched = sum(len(v) for v in log_lines.values())
    tail = f"; {matched} log line(s) mention errors/timeouts/waiting" if matched else ""
    return finding(
        STEP, NAME, StepStatus.OK, f"agent {agent_id}: {len(pods)} pod(s) running and ready{tail}", **evidence
    )
