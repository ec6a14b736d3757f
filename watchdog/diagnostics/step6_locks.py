"""Step 6 of the runbook: distributed lock contention.

Runs concurrently with steps 4, 5, 7, 8 (`watchdog.diagnostics.runner`). Reads this execution's
lock, and the TTL of every `gl:orchestrator:lock:*` key, found with `SCAN` (never `KEYS`) and read
with one pipelined PTTL per page (a lock without TTL is a problem; thousands of running runs cost a
few round trips, and no other lock's value is read). It judges the holder of this run's lock: alive
when its heartbeat key is fresh; *confirmed dead* only when the heartbeat is gone (or older than
`heartbeat_grace_seconds`) **and** its pod is absent or terminated (asked of Kubernetes); otherwise
*unconfirmed*. A holder that names no pod runs outside Kubernetes, so its heartbeat alone decides.
Without Redis (embedded mode: in-process locks) the finding is `unknown`.

Evidence keys: `locks_total`, `locks_without_ttl` (execution ids), `lock` (this execution's lock:
key, owner, pod, token, ttl_seconds, acquired_at) or None, `holder_state` (alive | dead | unconfirmed |
unknown), `holder_reason`, `heartbeat` (see `HeartbeatInfo.as_dict`), `pod`, `pod_phase`.
"""

from __future__ import annotations

from typing import Any

from watchdog_sdk.clients.redis import HeartbeatInfo, LockInfo
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.step_helpers import finding, from_error

STEP = 6
NAME = "locks"

TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})


def _heartbeat_fresh(beat: HeartbeatInfo, grace: float) -> bool:
    if not beat.exists:
        return False
    return beat.age_seconds is None or grace <= 0 or beat.age_seconds <= grace


async def judge_holder(ctx: DiagnosticContext, lock: LockInfo) -> tuple[str, str, dict[str, Any]]:
    """(holder_state, reason, facts) for the holder of `lock`."""
    assert ctx.redis is not None
    if lock.owner is None:
        return "unknown", f"lock value is not readable ({lock.parse_error})", {}
    grace = ctx.settings.heartbeat_grace_seconds
    try:
        beat = await ctx.redis.heartbeat(lock.owner)
    except WatchdogError as exc:
        return "unknown", f"cannot read the heartbeat of {lock.owner}: {exc}", {}
    facts: dict[str, Any] = {"heartbeat": beat.as_dict()}
    if _heartbeat_fresh(beat, grace):
        age = "age unknown" if beat.age_seconds is None else f"{beat.age_seconds:.0f}s old"
        return "alive", f"holder {lock.owner} is alive (heartbeat {age})", facts
    gone = "heartbeat gone" if not beat.exists else f"heartbeat {beat.age_seconds:.0f}s old (> {grace:g}s)"
    pod = lock.pod or beat.pod or None
    facts["pod"] = pod
    if pod is None:
        return "dead", f"holder {lock.owner}: {gone}; it names no pod (runs outside Kubernetes)", facts
    if ctx.kubernetes is None:
        return (
            "unconfirmed",
            f"holder {lock.owner}: {gone}; pod {pod} cannot be checked (no Kubernetes)",
            facts,
        )
    try:
        info = await ctx.kubernetes.get_pod(pod)
    except WatchdogError as exc:
        return "unconfirmed", f"holder {lock.owner}: {gone}; pod {pod} cannot be read: {exc}", facts
    if info is None:
        facts["pod_phase"] = None
        return "dead", f"holder {lock.owner}: {gone} and pod {pod} is gone", facts
    facts["pod_phase"] = info.phase
    if info.phase in TERMINATED_PHASES or info.deleting:
        return "dead", f"holder {lock.owner}: {gone} and pod {pod} is terminated ({info.phase})", facts
    return "unconfirmed", f"holder {lock.owner}: {gone}, but pod {pod} is still {info.phase}", facts


async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    """Scan the locks, check TTLs, judge this execution's lock holder."""
    if ctx.redis is None:
        return finding(
            STEP,
            NAME,
            StepStatus.UNKNOWN,
            "Redis not configured (embedded mode: in-process locks); no distributed locks to inspect",
            reason="redis_not_configured",
        )
    try:
        ttls = await ctx.redis.lock_ttls()
        mine = await ctx.redis.get_lock(state.execution_id)
    except WatchdogError as exc:
        return from_error(STEP, NAME, exc, "cannot scan the lock keys")
    without_ttl = sorted(execution_id for execution_id, ttl in ttls.items() if ttl == -1)
    evidence: dict[str, Any] = {"locks_total": len(ttls), "locks_without_ttl": without_ttl}
    evidence["lock"] = mine.as_dict() if mine else None

    problems: list[str] = []
    if mine is None:
        evidence["holder_state"] = None
        summary_lock = f"no lock held for {state.execution_id}"
    else:
        holder_state, reason, facts = await judge_holder(ctx, mine)
        evidence.update(facts)
        evidence["holder_state"] = holder_state
        evidence["holder_reason"] = reason
        ttl = "no TTL" if not mine.has_ttl else f"TTL {mine.ttl_seconds:.0f}s"
        summary_lock = f"lock held by {mine.owner or '?'} (token {mine.token}, {ttl}); {reason}"
        if not mine.has_ttl:
            problems.append(f"the lock of {state.execution_id} has no TTL and never expires")
        if holder_state in ("dead", "unconfirmed"):
            problems.append(reason)
    others = [e for e in without_ttl if e != state.execution_id]
    if others:
        problems.append(f"{len(others)} other lock(s) without TTL: {', '.join(others[:5])}")
    if problems:
        return finding(
            STEP, NAME, StepStatus.PROBLEM, "; ".join(problems), summary_lock=summary_lock, **evidence
        )
    return finding(
        STEP, NAME, StepStatus.OK, f"{summary_lock}; {len(ttls)} lock(s) in total, all with TTLs", **evidence
    )
