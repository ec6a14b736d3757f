"""Limits count what acts: a remediation refused by its preconditions uses up neither the agent's
restarts nor the global budget (the limits are for harm done, not for attempts that did nothing)."""

from __future__ import annotations

from tests.watchdog.test_remediation import POLICY, Harness, auto, store
from watchdog.settings import Mode

__all__ = ["auto", "store"]  # the fixtures, re-used


async def test_refused_attempts_do_not_use_up_the_agents_restarts(auto: Harness) -> None:
    limits = POLICY["limits"]
    assert isinstance(limits, dict)
    limit = int(limits["agent_restarts_per_agent_per_hour"])
    auto.playbook.refuse = "no node of the run is running on agent calc"
    for i in range(limit + 1):
        incident_id, diagnosis = await auto.incident(f"refused-{i}")
        outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
        assert outcome.status == "escalated" and "refused" in outcome.detail
    auto.playbook.refuse = None
    incident_id, diagnosis = await auto.incident("real")
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "resolved", outcome
    assert auto.playbook.applied == 1
    assert auto.responder.mode is Mode.AUTO
