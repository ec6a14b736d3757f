"""Two-person approval and the policy's approval rules, on the real app (SQLite and PostgreSQL): a
high-risk plan needs two distinct approvers (one is not enough, the same one twice is refused), and
a plan under a rule cannot be approved by its link alone (the page asks to sign in through the proxy;
link and proxy identity together are fine)."""

from __future__ import annotations

import pytest

from tests.watchdog.identity_app import IdentityApp
from watchdog.approvals import ApprovalService, Decision
from watchdog.errors import ApproverRefused
from watchdog.identity import Identity, Role
from watchdog.policy import ApprovalRule, Policy
from watchdog_sdk.outcomes import Risk

SRE = {"X-Forwarded-User": "bob", "X-Forwarded-Email": "bob@example.com", "X-Forwarded-Groups": "sre"}


async def test_one_approver_is_not_enough_for_a_high_risk_plan(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    alice = await identity_app.token("alice", "approver")
    async with identity_app.client(alice) as client:
        first = await client.post(f"/api/v1/incidents/{approval.incident_id}/approve")
    assert first.status_code == 200
    assert first.json()["approval"]["state"] == "pending"
    votes = await identity_app.audit(approval.incident_id, "approval_vote")
    assert [(v["actor"], v["votes"]) for v in votes] == [("token:alice", "1 of 2")]
    assert await identity_app.audit(approval.incident_id, "approval_decided") == []


async def test_two_distinct_approvers_settle_a_high_risk_plan(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    alice = await identity_app.token("alice", "approver")
    async with identity_app.client(alice) as client:
        await client.post(f"/api/v1/incidents/{approval.incident_id}/approve")
    async with identity_app.client(None, **SRE) as bob:
        second = await bob.post(f"/api/v1/incidents/{approval.incident_id}/approve")
    assert second.status_code == 200, second.text
    assert second.json()["approval"]["state"] == "approved"
    assert second.json()["approval"]["votes"] == ["token:alice", "proxy:bob@example.com"]
    decided = await identity_app.audit(approval.incident_id, "approval_decided")
    assert [(d["actor"], d["votes"]) for d in decided] == [("proxy:bob@example.com", "2 of 2")]


async def test_the_same_approver_twice_is_refused_with_409(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    alice = await identity_app.token("alice", "approver")
    async with identity_app.client(alice) as client:
        await client.post(f"/api/v1/incidents/{approval.incident_id}/approve")
        again = await client.post(f"/api/v1/incidents/{approval.incident_id}/approve")
    assert again.status_code == 409
    assert again.json()["detail"].startswith("token:alice already approved")
    assert "a second, different approver is needed (1 of 2)" in again.json()["detail"]
    assert (await identity_app.wd.approvals.get(approval.id)).state == "pending"


async def test_the_shared_bootstrap_token_is_one_approver_whatever_name_it_gives(
    identity_app: IdentityApp,
) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    async with identity_app.client() as admin:
        first = await admin.post(f"/api/v1/approvals/{approval.id}/approve", json={"actor": "alice"})
        second = await admin.post(f"/api/v1/approvals/{approval.id}/approve", json={"actor": "bob"})
    assert first.json()["votes"] == ["bootstrap:alice"]
    assert second.status_code == 409 and second.json()["error"] == "same_approver"


async def test_a_deny_settles_a_two_person_approval_at_once(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    async with identity_app.client(None, **SRE) as bob:
        denied = await bob.post(f"/api/v1/incidents/{approval.incident_id}/deny", json={"reason": "no"})
    assert denied.json()["approval"]["state"] == "denied"


async def test_the_link_alone_cannot_approve_a_plan_under_a_rule(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    token = identity_app.wd.approvals.token_for(approval)
    async with identity_app.client(None) as anonymous:
        api = await anonymous.post(f"/api/v1/approvals/{approval.id}/approve", json={"token": token})
        page = await anonymous.get(f"/approvals/{approval.id}", params={"token": token})
    assert api.status_code == 403 and "an approval link alone is not enough" in api.json()["detail"]
    assert 'id="sign-in"' in page.text and 'id="approve"' not in page.text and 'id="deny"' in page.text


async def test_the_link_with_the_proxy_identity_votes_as_that_person(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    token = identity_app.wd.approvals.token_for(approval)
    async with identity_app.client(None, **SRE) as bob:
        page = await bob.get(f"/approvals/{approval.id}", params={"token": token})
        assert 'id="approve"' in page.text and "proxy:bob@example.com" in page.text
        posted = await bob.post(
            f"/approvals/{approval.id}",
            data={"token": token, "decision": "approve"},
            headers={"Origin": identity_app.url},
            follow_redirects=False,
        )
    assert posted.status_code == 303
    assert "second approver is needed" in posted.headers["Location"].replace("%20", " ")
    assert (await identity_app.wd.approvals.get(approval.id)).votes == ["proxy:bob@example.com"]


async def test_a_rule_with_groups_refuses_an_approver_outside_them(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.LOW)
    policy = Policy(approval={Risk.LOW: ApprovalRule(groups=["dba"])})
    service = ApprovalService(
        identity_app.wd.store,
        b"k" * 32,
        ttl_seconds=900,
        public_url="https://watchdog.example.com",
        rules=lambda plan: policy.approval_for(plan.playbook, plan.risk),
    )
    bob = Identity(name="bob", role=Role.OPERATOR, source="proxy", groups=("sre",))
    with pytest.raises(ApproverRefused, match="proxy:bob is not in dba: a member is needed"):
        await service.decide(approval.id, Decision.APPROVE, identity=bob)
    dan = Identity(name="dan", role=Role.APPROVER, source="proxy", groups=("dba",))
    assert (await service.decide(approval.id, Decision.APPROVE, identity=dan)).state == "approved"


def test_the_default_policy_asks_two_approvers_for_high_risk_only() -> None:
    policy = Policy()
    assert policy.approval_for("cancel", Risk.HIGH) == ApprovalRule(approvers_required=2)
    assert policy.approval_for("restart_agent", Risk.MEDIUM) is None
    own = Policy.model_validate({"playbooks": {"cancel": {"approval": {"role": "admin"}}}})
    assert own.approval_for("cancel", Risk.HIGH) == ApprovalRule(role="admin")
