"""The remediation loop with the real playbooks and the real orchestrator: a run that finishes on its
own while on-call is still reading the prompt must not page them as a failed remediation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tests.playbooks.conftest import Env, gate_dag
from watchdog.approvals import Decision
from watchdog.settings import Mode
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

POLICY = {
    "playbooks": {"restart_agent": {"requires_approval": True, "params": {"verify_timeout_seconds": 10}}},
    "rules": [
        {"name": "agent", "when": {"likely_cause": ["agent_unresponsive"]}, "playbook": "restart_agent"}
    ],
}


async def test_a_run_that_completes_before_the_approval_is_resolved_and_nothing_acts(env: Env) -> None:
    execution_id = await env.run(gate_dag("rv-self-heal"))
    await env.wait_running_node(execution_id, "stuck")
    loop = env.responder(POLICY, Mode.RECOMMEND)
    approvals = loop.approvals
    opened = await env.incidents.open_or_join(
        execution_id, dag_id="rv-self-heal", source="sweep", detection_source="api"
    )
    now = datetime.now(UTC)
    diagnosis = Diagnosis(
        execution_id=execution_id,
        started_at=now,
        completed_at=now,
        findings=[Finding(step=4, name="agent", status=StepStatus.PROBLEM, summary="agent hung")],
        likely_cause="agent_unresponsive",
        cause_evidence=["agent test.gate answers nothing"],
        agent_id="test.gate",
        stuck_node_id="stuck",
        dag_id="rv-self-heal",
    )
    outcome = await loop.handle_diagnosed(opened.incident.id, diagnosis)
    assert outcome.status == "awaiting_approval", outcome
    [pending] = await _approvals(env, opened.incident.id)
    # The agent answers after all and the run completes while the prompt is open.
    env.gates.open("rv-self-heal")
    assert await _wait_finished(env, execution_id) == "completed"
    approval = await approvals.decide(pending, Decision.APPROVE, actor="alice", authenticated=True)
    outcome = await loop.on_decision(approval)
    assert outcome.status == "resolved", outcome
    assert "completed by itself" in outcome.detail and "nothing was done" in outcome.detail
    detail = await env.incidents.detail(opened.incident.id)
    assert detail.incident.status == "resolved"
    assert detail.actions == []
    agents = await env.client.list_agents()
    assert next(a.restarts for a in agents if a.agent_id == "test.gate") == 0


async def _approvals(env: Env, incident_id: int) -> list[str]:
    async with env.store.transaction() as tx:
        return [a.id for a in await tx.list_approvals(incident_id=incident_id)]


async def _wait_finished(env: Env, execution_id: str) -> str:
    async with asyncio.timeout(10):  # bounded poll of the real service
        while True:
            status = (await env.client.get_execution(execution_id)).status
            if status in ("completed", "failed", "cancelled"):
                return status
            await asyncio.sleep(0.05)
