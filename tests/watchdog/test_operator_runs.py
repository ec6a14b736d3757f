"""A playbook run asked for through the API is executed by the service, and replay through the API
acts on nothing: the real orchestrator service with a stuck emissions run, the watchdog served on
loopback (the `stack` fixture), a named operator token."""

from __future__ import annotations

import json

from tests.watchdog.approval_stack import Stack, approval_id_of, links

REPLAY_POLICY = """
version: 1
rules:
  - name: everything-cancels
    when: {likely_cause: [external_api_slow, agent_unresponsive, slow_node, unknown]}
    playbook: cancel
"""


async def _status(stack: Stack) -> str:
    answer = await stack.orch.api("GET", f"/executions/{stack.execution_id}")
    status: str = answer.json()["status"]
    return status


async def _audit_kinds(stack: Stack) -> list[str]:
    """The incident's audit kinds, but the notifier's record of the prompt's delivery (written after
    the test's hook has the message, so it may come at any time here)."""
    async with stack.wd.store.read() as tx:
        entries = await tx.list_audit(stack.incident_id)
    return [e.kind for e in entries if e.kind != "approval_notified"]


async def _token(stack: Stack, name: str, role: str) -> str:
    async with stack.client() as admin:
        answer = await admin.post("/api/v1/tokens", json={"name": name, "role": role})
    token: str = answer.json()["token"]
    return token


async def test_a_high_risk_playbook_asked_for_is_proposed_and_runs_once_a_second_person_approves(
    stack: Stack,
) -> None:
    diagnosed_prompt = await stack.stuck_incident()
    olga = await _token(stack, "olga", "operator")
    alice = await _token(stack, "alice", "approver")
    path = f"/api/v1/incidents/{stack.incident_id}/playbooks/cancel"
    async with stack.client(olga) as client:
        dry = await client.post(path, json={"dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json()["state"] == "dry_run" and dry.json()["precheck"]["ok"] and dry.json()["actions"]
        assert await _status(stack) == "running"
        asked = await client.post(path, json={})
    assert asked.status_code == 202, asked.text
    assert asked.json()["state"] == "awaiting_approval"
    assert asked.json()["approval"]["votes"] == ["token:olga"] and await _status(stack) == "running"
    superseded = approval_id_of(links(diagnosed_prompt)["approve"])
    assert (await stack.wd.approvals.get(superseded)).state == "denied"
    async with stack.client(alice) as client:
        approved = await client.post(f"/api/v1/incidents/{stack.incident_id}/approve")
        assert approved.json()["approval"]["state"] == "approved", approved.text
        streamed = await client.get(
            asked.json()["events"], headers={"Accept": "text/event-stream"}, timeout=60.0
        )
    events = [
        json.loads(f.split("data: ", 1)[1]) for f in streamed.text.split("\n\n") if f.startswith("id: ")
    ]
    kinds = {(e["kind"], e["actor"]) for e in events}
    assert ("playbook_requested", "token:olga") in kinds and ("approval_superseded", "token:olga") in kinds
    assert ("approval_vote", "token:olga") in kinds and ("approval_decided", "token:alice") in kinds
    end = json.loads(streamed.text.rsplit("event: end\ndata: ", 1)[1])
    assert end["incident_status"] == "resolved"
    assert await _status(stack) == "cancelled"


async def test_replay_through_the_api_plans_again_and_acts_on_nothing(stack: Stack) -> None:
    await stack.stuck_incident()
    audit_before = await _audit_kinds(stack)
    async with stack.client() as client:
        answer = await client.post(
            "/api/v1/replay", json={"incident_id": stack.incident_id, "policy": REPLAY_POLICY}
        )
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["items"]
    assert item["replayed"]["playbook"] == "cancel" and item["recorded"]["playbook"] != "cancel"
    assert answer.json()["changed"] == 1
    assert await _audit_kinds(stack) == audit_before
    assert (await _status(stack)) == "running"
