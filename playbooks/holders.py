"""Is the owner of a run alive? The one judgement `release_lock` and `resume` must never get wrong.

A holder (the orchestrator replica named in `gl:orchestrator:lock:<execution_id>`, or the execution's
`owner`) is *confirmed dead* only when both:

- its heartbeat (`gl:orchestrator:heartbeat:<replica_id>`) is gone (a missing key has already gone
  unrefreshed for a whole heartbeat TTL), or it lingers without a TTL and its timestamp is older than
  the grace period (a key that still has its TTL was refreshed in time: alive), and
- its pod is gone or terminated (phase Succeeded/Failed, or being deleted), asked of Kubernetes.
  A holder that names no pod is not running in Kubernetes, so the heartbeat alone decides; a holder
  that names a pod while Kubernetes is not configured stays *unconfirmed*.

Anything else — a fresh heartbeat, a running pod, Redis or Kubernetes not answering — is "not confirmed
dead", with the reason, and the playbooks refuse. Used by `playbooks.release_lock` and
`playbooks.resume`; reads Redis and Kubernetes through `watchdog_sdk.clients`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from watchdog_sdk.clients.redis import LockInfo
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.playbook import PlaybookContext

TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class HolderVerdict:
    """Whether `replica_id` is confirmed dead, why, and the facts that decided it."""

    replica_id: str | None
    dead: bool
    reason: str
    facts: dict[str, Any] = field(default_factory=dict)


async def judge_replica(ctx: PlaybookContext, replica_id: str, pod: str | None) -> HolderVerdict:
    """Judge one orchestrator replica by its heartbeat and its pod."""
    if ctx.redis is None:
        return HolderVerdict(replica_id, False, "no Redis configured: cannot read the holder's heartbeat")
    grace = ctx.limits.lock_grace_seconds
    try:
        heartbeat = await ctx.redis.heartbeat(replica_id)
    except WatchdogError as exc:
        return HolderVerdict(replica_id, False, f"cannot read the heartbeat of {replica_id}: {exc}")
    facts: dict[str, Any] = {"heartbeat": heartbeat.as_dict(), "grace_seconds": grace}
    expiring = heartbeat.ttl_seconds is not None and heartbeat.ttl_seconds >= 0
    if heartbeat.exists and (expiring or heartbeat.age_seconds is None or heartbeat.age_seconds <= grace):
        age = "unknown age" if heartbeat.age_seconds is None else f"{heartbeat.age_seconds:.0f}s ago"
        return HolderVerdict(replica_id, False, f"holder {replica_id} is alive (heartbeat {age})", facts)
    pod = pod or heartbeat.pod
    facts["pod"] = pod
    beat = (
        "heartbeat gone"
        if not heartbeat.exists
        else f"heartbeat {heartbeat.age_seconds:.0f}s old (> {grace:g}s)"
    )
    if pod is None:
        return HolderVerdict(
            replica_id, True, f"holder {replica_id}: {beat}; it runs outside Kubernetes", facts
        )
    if ctx.kubernetes is None:
        return HolderVerdict(
            replica_id,
            False,
            f"holder {replica_id}: {beat}, but its pod {pod} cannot be checked (no Kubernetes)",
            facts,
        )
    try:
        info = await ctx.kubernetes.get_pod(pod)
    except WatchdogError as exc:
        return HolderVerdict(
            replica_id, False, f"holder {replica_id}: {beat}, but pod {pod} cannot be read: {exc}", facts
        )
    if info is None:
        return HolderVerdict(replica_id, True, f"holder {replica_id}: {beat} and pod {pod} is gone", facts)
    facts["pod_phase"] = info.phase
    if info.phase in TERMINATED_PHASES or info.deleting:
        return HolderVerdict(
            replica_id, True, f"holder {replica_id}: {beat} and pod {pod} is terminated ({info.phase})", facts
        )
    return HolderVerdict(
        replica_id, False, f"holder {replica_id}: {beat}, but pod {pod} is still {info.phase}", facts
    )


async def judge_lock(ctx: PlaybookContext, lock: LockInfo) -> HolderVerdict:
    """Judge the holder of `lock`."""
    if lock.owner is None:
        return HolderVerdict(
            None, False, f"lock {lock.key} has an unreadable value ({lock.parse_error}); left alone"
        )
    verdict = await judge_replica(ctx, lock.owner, lock.pod)
    return HolderVerdict(
        verdict.replica_id, verdict.dead, verdict.reason, {"lock": lock.as_dict(), **verdict.facts}
    )
