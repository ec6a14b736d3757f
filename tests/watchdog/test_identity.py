"""Identity and roles on the real app (SQLite and PostgreSQL): named tokens created, listed, used and
revoked through the API; a role too low refused with 403 naming the role needed; the audit log names
the token's owner; the proxy's identity headers believed from the trusted address only."""

from __future__ import annotations

import pytest

from tests.watchdog.conftest import FakeClock
from tests.watchdog.identity_app import UNTRUSTED_PEER, IdentityApp
from watchdog.identity import Identity, ProxyAuth, Role
from watchdog.tokens import TokenStore
from watchdog_sdk.outcomes import Risk


def test_roles_are_ordered_by_rank_not_by_spelling() -> None:
    assert Role.VIEWER < Role.APPROVER < Role.OPERATOR < Role.ADMIN
    assert max(Role) is Role.ADMIN and sorted([Role.ADMIN, Role.VIEWER])[0] is Role.VIEWER
    assert Role.ADMIN >= "operator" and not Role.APPROVER >= Role.OPERATOR


async def test_a_named_token_is_shown_once_listed_without_it_and_works_until_revoked(
    identity_app: IdentityApp,
) -> None:
    token = await identity_app.token("alice", "approver")
    assert token.startswith("glw_") and len(token) == 47
    async with identity_app.client() as admin:
        listed = (await admin.get("/api/v1/tokens")).json()["items"]
        assert [(t["name"], t["role"], t["created_by"]) for t in listed] == [
            ("alice", "approver", "bootstrap:admin")
        ]
        assert token not in str(listed) and listed[0]["last_used_at"] is None
        async with identity_app.client(token) as alice:
            assert (await alice.get("/api/v1/incidents")).status_code == 200
            listed = (await admin.get("/api/v1/tokens")).json()["items"]
            assert listed[0]["last_used_at"] is not None
            revoked = await admin.delete("/api/v1/tokens/alice")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
            refused = await alice.get("/api/v1/incidents")
            assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


async def test_a_token_name_is_never_reused_and_an_unknown_one_cannot_be_revoked(
    identity_app: IdentityApp,
) -> None:
    await identity_app.token("ci", "viewer")
    async with identity_app.client() as admin:
        again = await admin.post("/api/v1/tokens", json={"name": "ci", "role": "admin"})
        assert again.status_code == 409 and "exists already" in again.json()["detail"]
        bad_role = await admin.post("/api/v1/tokens", json={"name": "x", "role": "root"})
        assert bad_role.status_code == 422 and bad_role.json()["field"] == "role"
        missing = await admin.delete("/api/v1/tokens/nobody")
        assert missing.status_code == 404 and "nobody" in missing.json()["detail"]


async def test_only_an_admin_manages_tokens(identity_app: IdentityApp) -> None:
    operator = await identity_app.token("op", "operator")
    async with identity_app.client(operator) as client:
        refused = await client.post("/api/v1/tokens", json={"name": "mine", "role": "admin"})
        assert refused.status_code == 403
        assert refused.json()["detail"] == "role operator cannot create tokens: admin or higher needed"
        assert (await client.get("/api/v1/tokens")).status_code == 403


async def test_a_viewer_is_refused_approve_with_403_naming_the_role_needed(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt()
    viewer = await identity_app.token("val", "viewer")
    async with identity_app.client(viewer) as client:
        refused = await client.post(f"/api/v1/incidents/{approval.incident_id}/approve")
        assert (await client.get(f"/api/v1/incidents/{approval.incident_id}")).status_code == 200
    assert refused.status_code == 403
    assert refused.json()["detail"] == "role viewer cannot approve: approver or higher needed"
    assert (await identity_app.wd.approvals.get(approval.id)).state == "pending"


async def test_every_route_that_changes_something_refuses_a_viewer(identity_app: IdentityApp) -> None:
    viewer = await identity_app.token("val", "viewer")
    writes = [
        ("POST", "/api/v1/alerts", {"version": "4", "status": "firing", "alerts": []}),
        ("POST", "/api/v1/incidents", {"execution_id": "e-9"}),
        ("POST", "/api/v1/incidents/1/diagnose", {}),
        ("POST", "/api/v1/incidents/1/deny", {}),
        ("POST", "/api/v1/approvals/apr_x/approve", {}),
        ("POST", "/api/v1/tokens", {"name": "n", "role": "viewer"}),
        ("DELETE", "/api/v1/tokens/val", None),
    ]
    async with identity_app.client(viewer) as client:
        for method, path, body in writes:
            answer = await client.request(method, path, json=body)
            assert answer.status_code == 403, (path, answer.text)
            assert "role viewer cannot" in answer.json()["detail"], path


async def test_the_audit_names_the_owner_of_the_token_that_approved(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt()
    alice = await identity_app.token("alice", "approver")
    async with identity_app.client(alice) as client:
        answer = await client.post(
            f"/api/v1/incidents/{approval.incident_id}/approve", json={"reason": "looks right"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["approval"]["state"] == "approved" and answer.json()["actor"] == "token:alice"
    decided = await identity_app.audit(approval.incident_id, "approval_decided")
    assert [(d["actor"], d["decision"], d["reason"]) for d in decided] == [
        ("token:alice", "approve", "looks right")
    ]
    assert (await identity_app.wd.approvals.get(approval.id)).decided_by == "token:alice"


async def test_approving_an_incident_without_a_pending_approval_is_409(identity_app: IdentityApp) -> None:
    opened = await identity_app.wd.incidents.open_or_join(
        "exec-2", dag_id="d", source="manual", detection_source="api"
    )
    async with identity_app.client() as client:
        answer = await client.post(f"/api/v1/incidents/{opened.incident.id}/approve")
        unknown = await client.post("/api/v1/incidents/999/approve")
    assert answer.status_code == 409 and "no pending approval" in answer.json()["detail"]
    assert unknown.status_code == 404


async def test_the_proxy_identity_is_believed_from_the_trusted_address(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt()
    headers = {"X-Forwarded-User": "bob", "X-Forwarded-Email": "bob@example.com", "X-Forwarded-Groups": "sre"}
    async with identity_app.client(None, **headers) as bob:
        answer = await bob.post(f"/api/v1/incidents/{approval.incident_id}/approve")
    assert answer.status_code == 200, answer.text
    assert answer.json()["actor"] == "proxy:bob@example.com"
    decided = await identity_app.audit(approval.incident_id, "approval_decided")
    assert [d["actor"] for d in decided] == ["proxy:bob@example.com"]


async def test_a_proxy_header_from_an_untrusted_address_is_ignored_and_counted(
    identity_app: IdentityApp,
) -> None:
    approval = await identity_app.prompt()
    forged = {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "sre-leads"}
    async with identity_app.client(None, peer=UNTRUSTED_PEER, **forged) as mallory:
        answer = await mallory.post(f"/api/v1/incidents/{approval.incident_id}/approve")
        metrics = (await mallory.get("/metrics")).text
    assert answer.status_code == 401
    assert (await identity_app.wd.approvals.get(approval.id)).state == "pending"
    assert 'gl_watchdog_auth_failures_total{reason="untrusted_proxy_header"} 1.0' in metrics


async def test_only_the_configured_set_of_proxy_headers_is_read(identity_app: IdentityApp) -> None:
    """The app reads X-Forwarded-*: X-Auth-Request-* headers, which its proxy would pass through from
    the client untouched, give no identity even from the trusted address."""
    other_set = {"X-Auth-Request-User": "mallory", "X-Auth-Request-Groups": "sre-leads"}
    async with identity_app.client(None, **other_set) as client:
        refused = await client.get("/api/v1/whoami")
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("user", "email", "groups", "role"),
    [
        ("carol", None, ("sre",), Role.APPROVER),
        ("carol", None, ("sre", "sre-leads"), Role.OPERATOR),
        ("boss", "boss@example.com", (), Role.ADMIN),
        ("dave", None, ("marketing",), Role.VIEWER),
    ],
)
def test_the_proxy_role_is_the_highest_one_mapped(
    user: str, email: str | None, groups: tuple[str, ...], role: Role
) -> None:
    proxy = ProxyAuth(
        enabled=True,
        trusted_proxies=["10.0.0.0/8"],
        role_map={"sre": Role.APPROVER, "sre-leads": Role.OPERATOR, "boss@example.com": Role.ADMIN},
    )
    assert proxy.role_of(user, email, groups) is role
    assert proxy.trusts("10.1.2.3") and not proxy.trusts("192.168.0.1") and not proxy.trusts(None)
    assert proxy.trusts("::ffff:10.1.2.3") and not proxy.trusts("not-an-address")
    assert not ProxyAuth(enabled=False, trusted_proxies=["10.0.0.0/8"]).trusts("10.1.2.3")


async def test_whoami_shows_the_callers_identity(identity_app: IdentityApp) -> None:
    alice = await identity_app.token("alice", "approver")
    async with identity_app.client(alice) as client:
        by_token = (await client.get("/api/v1/whoami")).json()
    async with identity_app.client(
        None, **{"X-Forwarded-User": "bob", "X-Forwarded-Groups": "sre, ops"}
    ) as bob:
        by_proxy = (await bob.get("/api/v1/whoami")).json()
    assert by_token == {
        "name": "alice",
        "role": "approver",
        "source": "token",
        "groups": [],
        "email": None,
        "actor": "token:alice",
    }
    assert by_proxy["actor"] == "proxy:bob" and by_proxy["groups"] == ["sre", "ops"]
    assert by_proxy["role"] == "approver"


def test_an_identity_is_audited_as_source_and_name() -> None:
    identity = Identity(name="alice@example.com", role=Role.APPROVER, source="proxy")
    assert identity.actor == "proxy:alice@example.com"


async def test_a_high_risk_plan_lists_its_votes(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt(Risk.HIGH)
    alice = await identity_app.token("alice", "approver")
    async with identity_app.client(alice) as client:
        answer = await client.post(f"/api/v1/incidents/{approval.incident_id}/approve")
        shown = await client.get(f"/api/v1/approvals/{approval.id}")
    assert answer.json()["approvals_required"] == 2 and answer.json()["approval"]["votes"] == ["token:alice"]
    assert shown.json()["state"] == "pending" and shown.json()["votes"] == ["token:alice"]


async def test_last_use_is_written_at_most_once_a_minute(identity_app: IdentityApp) -> None:
    tokens = TokenStore(identity_app.wd.store)
    _, token = await tokens.create("ci", Role.OPERATOR, created_by="test")
    clock = identity_app.wd.clock
    assert isinstance(clock, FakeClock)
    first_use = clock.now()
    assert await tokens.identify(token) == Identity(name="ci", role=Role.OPERATOR, source="token")
    clock.advance(59)
    await tokens.identify(token)
    assert [t.last_used_at for t in await tokens.list()] == [first_use]
    clock.advance(2)
    await tokens.identify(token)
    assert [t.last_used_at for t in await tokens.list()] == [clock.now()]
    assert await tokens.identify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
