"""Runs diagnostic steps 1-8 for one execution and names the most likely cause.

Called by the watchdog app (incidents opened by alerts and sweeps), `gl-watchdog diagnose` and the
demo, with a `DiagnosticContext`. Steps 1, 2, 3 run in order (each needs the one before); steps 4-8 run
concurrently. Every step runs under its own timeout (`ctx.timeout_for(step)`) inside a guard, so a
step that hangs, fails or has no backend yields an `error`/`unknown` Finding and never aborts the
diagnosis. The cause is chosen by ranked rules over the findings (`likely_cause`); the planner maps it
to a playbook through the policy file.

Causes, in rank order: `execution_not_found`, the run's own stuck states that step 1 judged
(`owner_gone`, `resume_loop`, `cancel_not_completing`, `queued_too_long`: the orchestrator's signals
say directly what holds the run, and a resume loop must not be answered with one more resume),
`interrupted` (left by a replica that stopped and never resumed), `not_stuck`, `agent_unresponsive`
(pods down), `stuck_lock`, `checkpoint_store`, `retry_storm` (the node at attempt N or later),
`external_api_slow`, `agent_unresponsive` (the node logs that its agent hangs, or it runs past its
own timeout), `resource_contention`, `node_stalling` (far beyond its normal duration without
progress), `slow_node`, `agent_unresponsive` (resources near their limits), `over_max_age` (a run
with no timeout at all, running past the maximum age), `unknown`. What the stuck node shows outranks
contention, which a stuck run causes as often as it suffers from it; a stall is the symptom, so a
cause found for it (its agent down or hung, a stuck lock, contention) outranks it, but a stalling
node is never taken for a merely slow one (`slow_node` would raise its timeout).

An execution the orchestrator does not know (step 1 answers `not_found`) ends the diagnosis there: the
cause is `execution_not_found` whatever the others would find, so the other steps are not run (each
gets an `unknown` Finding saying so, reason `execution_not_found`). An alert or a typo naming an
unknown run costs one orchestrator call, not eight steps' worth (issue 11: no diagnosis storm).

Plugin steps (`watchdog.plugins`, numbered 9-99) run concurrently with steps 4-8, under their own
timeout, in the same guard. When the rules above find no cause (`unknown`), the first plugin step
(by number) whose `problem` finding names one of the causes it declared (`evidence["likely_cause"]`)
gives the cause, with its summary as the evidence.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from watchdog.diagnostics import (
    step1_execution,
    step2_trace,
    step3_bottleneck,
    step4_agent,
    step5_contention,
    step6_locks,
    step7_external,
    step8_checkpoints,
)
from watchdog.diagnostics.shared_reads import SharedReads
from watchdog_sdk.diagnosis import CAUSE_KEY, Diagnosis, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext, DiagnosticStep
from watchdog_sdk.step_helpers import finding
from watchdog_sdk.stuck import StuckCause

STEPS: tuple[DiagnosticStep, ...] = tuple(
    DiagnosticStep(module.STEP, module.NAME, module.run)
    for module in (
        step1_execution,
        step2_trace,
        step3_bottleneck,
        step4_agent,
        step5_contention,
        step6_locks,
        step7_external,
        step8_checkpoints,
    )
)
SEQUENTIAL = (1, 2, 3)
# Every cause `likely_cause` can name (a policy rule may match only these, or a plugin step's).
BUILTIN_CAUSES = frozenset(
    {
        "execution_not_found",
        "interrupted",
        "not_stuck",
        "agent_unresponsive",
        "stuck_lock",
        "checkpoint_store",
        "external_api_slow",
        "resource_contention",
        "slow_node",
        "over_max_age",
        "unknown",
        *(cause.value for cause in StuckCause),
    }
)
# The stuck states of the run itself (step 1) that name the cause before anything else, in rank order.
RUN_STATES = (
    StuckCause.OWNER_GONE,
    StuckCause.RESUME_LOOP,
    StuckCause.CANCEL_NOT_COMPLETING,
    StuckCause.QUEUED_TOO_LONG,
)


STEP_SPAN = "watchdog.diagnosis.step"


async def run_step(ctx: DiagnosticContext, state: DiagnosisState, step: DiagnosticStep) -> Finding:
    """Run one step under its timeout, in a span (`watchdog.diagnosis.step`: `step`, `name`, the
    finding's `status`); any failure becomes an `error` Finding. Never raises (except cancellation
    of the caller)."""
    attributes: dict[str, str | int] = {"step": step.number, "name": step.name}
    with ctx.tracer.start_as_current_span(STEP_SPAN, attributes=attributes) as span:
        result = await _run_step(ctx, state, step)
        span.set_attribute("status", result.status.value)
        return result


async def _run_step(ctx: DiagnosticContext, state: DiagnosisState, step: DiagnosticStep) -> Finding:
    budget = ctx.timeout_for(step.number, step.timeout_seconds)
    started = ctx.clock.monotonic()
    try:
        async with asyncio.timeout(budget):
            result = await step.run(ctx, state)
        if not isinstance(result, Finding):  # a plugin's bug, reported like any other
            raise TypeError(f"the step returned {type(result).__name__}, not a Finding")
        result = result.model_copy(update={"step": step.number, "name": step.name})
    except TimeoutError:
        result = finding(
            step.number,
            step.name,
            StepStatus.ERROR,
            f"step timed out after {budget:g}s",
            reason="timeout",
            timeout_seconds=budget,
        )
    except Exception as exc:  # a step must never take the diagnosis down; the bug is reported
        result = finding(
            step.number,
            step.name,
            StepStatus.ERROR,
            f"step failed: {type(exc).__name__}: {exc}",
            reason="step_failed",
            exception=type(exc).__name__,
        )
    elapsed = round((ctx.clock.monotonic() - started) * 1000, 3)
    return result.model_copy(update={"duration_ms": elapsed})


async def diagnose(
    ctx: DiagnosticContext, execution_id: str, *, steps: Sequence[DiagnosticStep] = STEPS
) -> Diagnosis:
    """Run steps 1-3 in order, then 4-8 concurrently, and build the Diagnosis (only step 1 for an
    execution the orchestrator does not know)."""
    state = DiagnosisState(execution_id=execution_id)
    started_at = ctx.clock.now()
    findings: list[Finding] = []
    for step in steps:
        if step.number in SEQUENTIAL:
            skip = _execution_unknown(findings)
            findings.append(_not_run(step) if skip else await run_step(ctx, state, step))
    concurrent = [step for step in steps if step.number not in SEQUENTIAL]
    if _execution_unknown(findings):
        findings += [_not_run(step) for step in concurrent]
    else:
        findings += await asyncio.gather(*(run_step(ctx, state, step) for step in concurrent))
    findings.sort(key=lambda f: f.step)
    cause, evidence = likely_cause(findings)
    if cause == "unknown":
        cause, evidence = plugin_cause(findings, steps) or (cause, evidence)
    return Diagnosis(
        execution_id=execution_id,
        started_at=started_at,
        completed_at=ctx.clock.now(),
        findings=findings,
        likely_cause=cause,
        cause_evidence=evidence,
        dag_id=state.dag_id,
        stuck_node_id=state.stuck_node_id,
        agent_id=state.agent_id,
        namespace=ctx.namespace,
    )


def _execution_unknown(findings: Sequence[Finding]) -> bool:
    """Whether step 1 found that the orchestrator knows no such execution."""
    return bool(findings) and findings[0].step == 1 and findings[0].evidence.get("reason") == "not_found"


def _not_run(step: DiagnosticStep) -> Finding:
    return finding(
        step.number,
        step.name,
        StepStatus.UNKNOWN,
        "not run: the orchestrator knows no such execution",
        reason="execution_not_found",
    ).model_copy(update={"duration_ms": 0.0})


def diagnoser(
    ctx: DiagnosticContext, steps: Sequence[DiagnosticStep] = STEPS
) -> Callable[[str], Awaitable[Diagnosis]]:
    """`diagnose` bound to a context and steps: the `execution_id -> Diagnosis` callable the app takes.
    The diagnoses it runs share their orchestrator-wide reads for a second (`shared_reads`)."""
    shared = SharedReads(ctx.orchestrator)
    ctx = dataclasses.replace(ctx, clients=dataclasses.replace(ctx.clients, orchestrator=shared))

    async def run(execution_id: str) -> Diagnosis:
        return await diagnose(ctx, execution_id, steps=steps)

    return run


# -- the cause ---------------------------------------------------------------------------------------


def likely_cause(findings: Sequence[Finding]) -> tuple[str, list[str]]:
    """The most likely cause of the stall and the evidence for it (ranked rules, first match wins)."""
    by_step = {f.step: f for f in findings}

    def ev(step: int) -> dict[str, Any]:
        f = by_step.get(step)
        return dict(f.evidence) if f is not None else {}

    def problem(step: int) -> bool:
        f = by_step.get(step)
        return f is not None and f.status is StepStatus.PROBLEM

    def says(step: int) -> str:
        f = by_step[step]
        return f"step {f.step} ({f.name}): {f.summary}"

    s1 = by_step.get(1)
    if s1 is not None and s1.evidence.get("reason") == "not_found":
        return "execution_not_found", [says(1)]
    run_state = _stuck_state(ev(1), RUN_STATES)
    if run_state is not None:
        return run_state, [says(1)]
    status = ev(1).get("status")
    if status == "interrupted":
        # Its replica shut down or fenced itself; the checkpoints decide whether resuming is safe.
        return "interrupted", [says(1), *(_supporting(by_step, 8))]
    if isinstance(status, str) and status != "running":
        return "not_stuck", [says(1)]

    # The agent of the stuck node is down, crashing, OOM-killed or not ready.
    agent = ev(4)
    reasons = set(agent.get("reasons") or [])
    if problem(4) and (
        agent.get("pod_count") == 0 or agent.get("unhealthy_pods") or reasons & step4_agent.BAD_REASONS
    ):
        return "agent_unresponsive", [says(4), *(_supporting(by_step, 3))]

    # The run's lock is held by a dead holder, or never expires.
    locks = ev(6)
    lock = locks.get("lock")
    lock_no_ttl = isinstance(lock, dict) and lock.get("ttl_seconds") == -1
    if problem(6) and (locks.get("holder_state") in ("dead", "unconfirmed") or lock_no_ttl):
        return "stuck_lock", [says(6)]

    # Checkpoint saves fail, so the run cannot advance past a completed node.
    cp = ev(8)
    if problem(8) and (
        (cp.get("save_errors_15m") or 0) > 0
        or ("save_errors_15m" not in cp and (cp.get("save_errors_total") or 0) > 0)
        or cp.get("completed_without_checkpoint")
        or cp.get("failed_checkpoints")
    ):
        return "checkpoint_store", [says(8)]

    # What the stuck node itself shows outranks contention: a run stuck on a hung node fills a slot
    # and makes the queue grow, so "at the limit with a queue" is often its effect, not its cause.
    node = ev(3)
    if _stuck_state(node, (StuckCause.RETRY_STORM,)) is not None:
        return StuckCause.RETRY_STORM.value, [says(3), *(_supporting(by_step, 4))]

    # The stuck node waits on an outside call.
    if problem(7) and ev(7).get("external_call_lines"):
        return "external_api_slow", [says(7), *(_supporting(by_step, 3)), *(_supporting(by_step, 5))]

    # The node's own log says its agent hangs (is stuck, blocked, waiting): not merely slow.
    if problem(4) and agent.get("hung_lines"):
        return "agent_unresponsive", [says(4), *(_supporting(by_step, 3)), *(_supporting(by_step, 5))]

    # The node runs past its own timeout: its agent neither answers nor honours cancellation.
    if problem(3) and node.get("node_status") == "running" and node.get("within_own_timeout") is False:
        return "agent_unresponsive", [says(3), *(_supporting(by_step, 4)), *(_supporting(by_step, 5))]

    # Too many runs for the limits, or the DB pool is exhausted: the node is slow because of it.
    contention = ev(5)
    if problem(5) and (contention.get("saturated") or (contention.get("db_pool_pending") or 0) > 0):
        return "resource_contention", [says(5), *(_supporting(by_step, 3))]

    # The node has run far beyond what it normally takes, without progress (the stall rule).
    if _stuck_state(node, (StuckCause.NODE_STALLING,)) is not None:
        return StuckCause.NODE_STALLING.value, [
            says(3),
            *(_supporting(by_step, 4)),
            *(_supporting(by_step, 7)),
        ]

    # The node is simply slow: running, making progress, within its own timeout.
    if problem(3) and node.get("node_status") == "running" and node.get("within_own_timeout") is True:
        return "slow_node", [says(3)]

    # Agent resources near their limits (without a crash) also point at the agent.
    if problem(4) and agent.get("near_limit"):
        return "agent_unresponsive", [says(4)]

    # A run with no timeout at all has run past the maximum age, and nothing above says why.
    if problem(1) and ev(1).get("over_max_age"):
        return "over_max_age", [says(1)]

    # Nothing matched: every problem found, and why steps 1-3 could not establish the stuck run
    # (e.g. the orchestrator unreachable), so on-call sees that the diagnosis is incomplete.
    blind = [
        f"step {f.step} ({f.name}) could not look: {f.summary}"
        for f in findings
        if f.step in SEQUENTIAL and f.status in (StepStatus.UNKNOWN, StepStatus.ERROR)
    ][:1]  # the first one is the root: the later steps depend on it
    found = [f"step {f.step} ({f.name}): {f.summary}" for f in findings if f.status is StepStatus.PROBLEM]
    return "unknown", [*blind, *found]


def plugin_cause(
    findings: Sequence[Finding], steps: Sequence[DiagnosticStep]
) -> tuple[str, list[str]] | None:
    """The cause named by the first plugin step whose `problem` finding names one it declared."""
    declared = {step.number: step.causes for step in steps}
    for f in findings:
        cause = f.evidence.get(CAUSE_KEY)
        if f.status is StepStatus.PROBLEM and isinstance(cause, str) and cause in declared.get(f.step, ()):
            return cause, [f"step {f.step} ({f.name}): {f.summary}"]
    return None


def _stuck_state(evidence: dict[str, Any], causes: Sequence[StuckCause]) -> str | None:
    """The first of `causes` among a finding's `stuck_states` (in the order of `causes`), or None."""
    states = evidence.get("stuck_states")
    named = {s.get("cause") for s in states if isinstance(s, dict)} if isinstance(states, list) else set()
    return next((cause.value for cause in causes if cause.value in named), None)


def _supporting(by_step: dict[int, Finding], step: int) -> list[str]:
    f = by_step.get(step)
    if f is None or f.status is not StepStatus.PROBLEM:
        return []
    return [f"step {f.step} ({f.name}): {f.summary}"]
