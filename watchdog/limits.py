"""The remediation budgets and the circuit breaker, held in the store so they span restarts and replicas.

Called by the remediation state machine (`watchdog.remediation`): `reserve()` after a playbook's
preconditions held and right before it acts, `count_failure_in()` when a remediation fails (inside the
transaction that escalates its incident). Limits come from the policy (`watchdog.policy.Limits`); the
counts are `rate_events` rows (the breaker's window is read through `watchdog.breaker`, which the
scrape-time gauge reads too):

    remediation         key "*"         one per remediation that acts: the global budget per hour
    agent_restart       key agent id    one per restart_agent: restarts per agent per hour
    remediation_failed  key "*"         one per failed remediation: the circuit breaker's window

Check and count happen in one transaction, serialised across replicas (`Tx.serialize_limits`), so
two replicas cannot both take the last unit of a budget; counting only what is about to act means a
refused or unneeded attempt never uses up a budget.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from gl_common.clock import Clock
from watchdog.breaker import GLOBAL_KEY, RATE_FAILED, failures_in, is_open
from watchdog.plan import Plan
from watchdog.policy import Limits
from watchdog.store import Tx, WatchdogStore

RATE_AGENT_RESTART: Final = "agent_restart"
RATE_REMEDIATION: Final = "remediation"


class RemediationLimits:
    """The policy's limits, checked and counted against the store."""

    def __init__(self, store: WatchdogStore, limits: Limits, clock: Clock) -> None:
        self.store = store
        self.limits = limits
        self.clock = clock

    async def reserve(self, incident_id: int, plan: Plan, *, actor: str) -> str:
        """Check the limits for `plan` and count it when they allow it; the refusal, or "" to go on.

        One transaction, audited as `limits` on the incident.
        """
        async with self.store.transaction() as tx:
            await tx.serialize_limits()
            now = self.clock.now()
            refusal = await self._refusal(tx, plan, now)
            await tx.add_audit(
                incident_id,
                "limits",
                actor=actor,
                data={
                    "ok": not refusal,
                    "reason": refusal or "within limits",
                    "limits": self.limits.model_dump(),
                },
            )
            if not refusal:
                await tx.add_rate_event(RATE_REMEDIATION, GLOBAL_KEY, now)
                if plan.playbook == "restart_agent":
                    await tx.add_rate_event(RATE_AGENT_RESTART, str(plan.params.get("agent_id")), now)
        return refusal

    async def check(self, plan: Plan) -> str:
        """What `reserve()` would answer for `plan` now, counting and auditing nothing (replay)."""
        async with self.store.transaction() as tx:
            return await self._refusal(tx, plan, self.clock.now())

    async def count_failure_in(self, tx: Tx) -> None:
        """Count one failed remediation toward the circuit breaker (inside the caller's transaction)."""
        await tx.add_rate_event(RATE_FAILED, GLOBAL_KEY, self.clock.now())

    async def _refusal(self, tx: Tx, plan: Plan, now: datetime) -> str:
        limits = self.limits
        hour_ago = now - timedelta(hours=1)
        breaker = limits.circuit_breaker
        failures = await failures_in(tx, breaker, now)
        if is_open(failures, breaker):
            return (
                f"circuit open: {failures} failed remediations in the last {breaker.window_seconds}s "
                f"(limit {breaker.failures}); not acting"
            )
        done = await tx.count_rate_events(RATE_REMEDIATION, GLOBAL_KEY, hour_ago)
        if done >= limits.remediations_per_hour:
            budget = limits.remediations_per_hour
            return f"rate limit reached: {done} remediations in the last hour (budget {budget})"
        if plan.playbook == "restart_agent":
            agent = str(plan.params.get("agent_id"))
            restarts = await tx.count_rate_events(RATE_AGENT_RESTART, agent, hour_ago)
            if restarts >= limits.agent_restarts_per_agent_per_hour:
                return (
                    f"rate limit reached: agent {agent} restarted {restarts} times in the last hour "
                    f"(limit {limits.agent_restarts_per_agent_per_hour})"
                )
        return ""
