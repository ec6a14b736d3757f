"""Step 7 of the runbook: is the stuck node waiting on a slow external API?

Runs concurrently with steps 4-6, 8 (`watchdog.diagnostics.runner`). Log source: with Kubernetes, the
orchestrator pods' logs (`settings.orchestrator_pod_selector`, default `app=orchestrator-service`,
last 500 lines); without, the run's own
structured log lines from the orchestrator (`GET /executions/{id}/logs`). Either way the lines are
filtered as the runbook's grep does (`<agent_id>|external|http|api|timeout`, case-insensitive); the
narrower set of lines about an outside call that is waiting, slow or timing out *on the stuck node
or its agent* decides the finding. With Prometheus, the agent's p99 call latency
(`gl_orchestrator_agent_call_duration_seconds`) is added.

Evidence keys: `source` (kubernetes | orchestrator), `matched_lines` (runbook filter, last 50),
`external_call_lines` (waiting/timeout lines of the stuck node or agent), `agent_call_p99_seconds`,
`*_error`.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any

from watchdog_sdk.constants import M_AGENT_CALL_DURATION
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.step_helpers import filter_lines, finding, from_error, promql_label

# The runbook's `grep -i "<agent_id>\|external\|http\|api\|timeout"` (the agent id is added per run).
EXTERNAL_LOG_WORDS = ("external", "http", "api", "timeout")
# Narrower: a line about an outside call that is waiting, slow or timing out.
EXTERNAL_CALL = re.compile(r"external|http|api\b|upstream|erp|connector|regulatory|factor", re.IGNORECASE)
WAITING = re.compile(r"waiting|timeout|timed out|slow|no response|retrying|hang", re.IGNORECASE)

STEP = 7
NAME = "external"

LOG_TAIL = 500


async def _lines_from_kubernetes(ctx: DiagnosticContext, evidence: dict[str, Any]) -> list[str]:
    assert ctx.kubernetes is not None
    pods = await ctx.kubernetes.list_pods(ctx.settings.orchestrator_pod_selector)
    evidence["orchestrator_pods"] = [p.name for p in pods]
    lines: list[str] = []
    for pod in pods:
        try:
            lines += (await ctx.kubernetes.read_pod_log(pod.name, tail_lines=LOG_TAIL)).splitlines()
        except WatchdogError as exc:
            evidence.setdefault("log_errors", {})[pod.name] = str(exc)
    return lines


async def _lines_from_orchestrator(ctx: DiagnosticContext, state: DiagnosisState) -> list[tuple[str, str]]:
    """(text to match, node/agent context) of the run's structured log lines."""
    records = await ctx.orchestrator.get_logs(state.execution_id, limit=LOG_TAIL)
    out = []
    for record in records:
        extra = " ".join(
            f"{k}={v}" for k, v in (record.model_extra or {}).items() if isinstance(v, str | int | float)
        )
        text = " ".join(
            part
            for part in (
                str(record.ts or ""),
                record.level or "",
                f"node={record.node_id}" if record.node_id else "",
                f"agent={record.agent_id}" if record.agent_id else "",
                record.message,
                extra,
            )
            if part
        )
        out.append((text, f"{record.node_id or ''} {record.agent_id or ''}"))
    return out


def _about_stuck(text: str, state: DiagnosisState) -> bool:
    keys = [k for k in (state.stuck_node_id, state.agent_id) if k]
    return not keys or any(k in text for k in keys)


def runbook_filter(agent_id: str | None) -> re.Pattern[str]:
    """The runbook's grep: the agent id or any of external/http/api/timeout, case-insensitive."""
    words = [re.escape(w) for w in EXTERNAL_LOG_WORDS]
    if agent_id:
        words.insert(0, re.escape(agent_id))
    return re.compile("|".join(words), re.IGNORECASE)


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Look for hung or slow external calls of the stuck node."""
    evidence: dict[str, Any] = {}
    pattern = runbook_filter(state.agent_id)
    try:
        if ctx.kubernetes is not None:
            evidence["source"] = "kubernetes"
            lines = await _lines_from_kubernetes(ctx, evidence)
        else:
            evidence["source"] = "orchestrator"
            lines = [text for text, _ in await _lines_from_orchestrator(ctx, state)]
    except WatchdogError as exc:
        return from_error(STEP, NAME, exc, "cannot read the logs", source=evidence.get("source"))
    matched = filter_lines(lines, pattern)
    external = [line for line in matched if EXTERNAL_CALL.search(line) and WAITING.search(line)]
    stuck_external = [line for line in external if _about_stuck(line, state)]
    evidence["lines_read"] = len(lines)
    evidence["matched_lines"] = matched
    evidence["external_call_lines"] = stuck_external

    if ctx.prometheus is not None and state.agent_id:
        query = (
            f"histogram_quantile(0.99, sum(rate({M_AGENT_CALL_DURATION}_bucket"
            f"{{agent_id={promql_label(state.agent_id)}}}[5m])) by (le))"
        )
        try:
            value = await ctx.prometheus.query_value(query)
            evidence["agent_call_p99_seconds"] = None if value is None or math.isnan(value) else value
        except WatchdogError as exc:
            evidence["prometheus_error"] = str(exc)

    subject = f"node {state.stuck_node_id}" if state.stuck_node_id else "the run"
    if stuck_external:
        return finding(
            STEP,
            NAME,
            StepStatus.PROBLEM,
            f"{subject} is waiting on an external call: "
            + textwrap.shorten(stuck_external[-1], width=200, placeholder=" …"),
            **evidence,
        )
    return finding(
        STEP,
        NAME,
        StepStatus.OK,
        f"no slow or hung external call logged for {subject} "
        f"({len(matched)} line(s) matched the runbook filter)",
        **evidence,
    )
