"""Replay: what a policy would have planned for a stored incident's diagnosis, acting on nothing.

Called by `gl-watchdog replay INCIDENT_ID --policy FILE` (`watchdog.cli`). Reads the incident and its
stored Diagnosis, runs the planner (`watchdog.planner.make_plan`, pure) with the given policy and the
loaded playbooks, and asks the policy's budgets and circuit breaker (`RemediationLimits.check`, read
only) whether they would allow it now. Nothing is written: no plan, audit entry, rate event or
approval, and no client is opened, so no outside system is called. This is how a team checks a policy
change, or a move from `recommend` to `auto`, against incidents it has had. `replay_window` does it
for every diagnosed incident opened since a time (`gl-watchdog replay --all --since 7d`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gl_common.clock import Clock, SystemClock
from watchdog.errors import IncidentError
from watchdog.incidents import IncidentService
from watchdog.limits import RemediationLimits
from watchdog.listing import IncidentFilter, page_incidents
from watchdog.plan import Plan
from watchdog.planner import make_plan
from watchdog.policy import Policy
from watchdog.records import Incident
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.registry import Registry


@dataclass(frozen=True)
class Replay:
    """One incident replayed: what was planned then, what the policy plans, and the limits' answer
    now ("" when they would allow it; always "" for a plan that would not act)."""

    incident_id: int
    execution_id: str
    likely_cause: str
    recorded: Plan | None
    replayed: Plan
    limits_refusal: str

    @property
    def changed(self) -> bool:
        """True when the replayed plan picks another playbook, params or approval than the recorded."""
        if self.recorded is None:
            return True
        keys = ("playbook", "params", "requires_approval", "will_act")
        return any(getattr(self.recorded, k) != getattr(self.replayed, k) for k in keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "execution_id": self.execution_id,
            "likely_cause": self.likely_cause,
            "recorded": None if self.recorded is None else self.recorded.model_dump(mode="json"),
            "replayed": self.replayed.model_dump(mode="json"),
            "limits_refusal": self.limits_refusal or None,
            "changed": self.changed,
        }


async def replay_incident(
    store: WatchdogStore,
    incident_id: int,
    *,
    policy: Policy,
    registry: Registry,
    mode: Mode,
    clock: Clock | None = None,
) -> Replay:
    """Replay incident `incident_id` under `policy` (IncidentNotFound when there is none,
    IncidentError when it was never diagnosed)."""
    incident = await IncidentService(store).get(incident_id)
    if incident.diagnosis is None:
        raise IncidentError(f"incident {incident_id} has no diagnosis to replay (status {incident.status})")
    return await _replay(store, incident, incident.diagnosis, policy, registry, mode, clock)


async def replay_window(
    store: WatchdogStore,
    window: timedelta,
    *,
    policy: Policy,
    registry: Registry,
    mode: Mode,
    clock: Clock | None = None,
    page_size: int = 200,
) -> list[Replay]:
    """Replay every diagnosed incident opened in the last `window`, newest first (the undiagnosed are
    left out: there is nothing to plan from)."""
    clock = clock or SystemClock()
    since = clock.now() - window
    replays: list[Replay] = []
    before: int | None = None
    while True:
        page = await page_incidents(store, IncidentFilter(opened_after=since), before=before, limit=page_size)
        for incident in page.incidents:
            if incident.diagnosis is not None:
                replays.append(
                    await _replay(store, incident, incident.diagnosis, policy, registry, mode, clock)
                )
        if page.next_before is None:
            return replays
        before = page.next_before


async def _replay(
    store: WatchdogStore,
    incident: Incident,
    stored: dict[str, Any],
    policy: Policy,
    registry: Registry,
    mode: Mode,
    clock: Clock | None = None,
) -> Replay:
    diagnosis = Diagnosis.model_validate(stored)
    plan = make_plan(diagnosis, policy, mode, registry)
    refusal = ""
    if plan.will_act:
        refusal = await RemediationLimits(store, policy.limits, clock or SystemClock()).check(plan)
    return Replay(
        incident_id=incident.id,
        execution_id=incident.execution_id,
        likely_cause=diagnosis.likely_cause,
        recorded=incident.plan,
        replayed=plan,
        limits_refusal=refusal,
    )
