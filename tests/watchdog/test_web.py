"""The approval API and web page, served by the real watchdog app over the real orchestrator service.

A stuck emissions run is opened as an incident through the watchdog API; the real diagnosis, the
planner and the remediation loop ask for approval through a Slack-format webhook (a real receiver on
loopback), whose links are what these tests (and tests/watchdog/test_browser.py) follow.
"""

from __future__ import annotations

from datetime import timedelta

from tests.watchdog.approval_stack import Stack, approval_id_of, links, token_of
from tests.watchdog.conftest import FakeClock
from watchdog.approvals import Decision


async def test_prompt_is_sent_with_signed_links_and_readable_via_api(stack: Stack) -> None:
    message = await stack.stuck_incident()
    urls = links(message)
    assert urls["approve"].endswith("&decision=approve") and urls["deny"].endswith("&decision=deny")
    approval_id = approval_id_of(urls["approve"].split("?")[0])
    async with stack.client() as api:
        view = (await api.get(f"/api/v1/approvals/{approval_id}")).json()
    assert view["state"] == "pending" and view["plan"]["playbook"] == "restart_agent"
    assert view["plan"]["params"]["agent_id"] == "emissions.scope2"
    assert "token_nonce" not in view
    async with stack.client(token=None) as anon:
        assert (await anon.get(f"/api/v1/approvals/{approval_id}")).status_code == 401
        with_link = await anon.get(
            f"/api/v1/approvals/{approval_id}", params={"token": token_of(urls["approve"])}
        )
        assert with_link.status_code == 200
        forged = await anon.get(f"/api/v1/approvals/{approval_id}", params={"token": "123.forged"})
        assert forged.status_code == 403 and forged.json()["error"] == "invalid_token"


async def test_link_token_approves_once_and_the_remediation_resolves_the_incident(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    approval_id = approval_id_of(url.split("?")[0])
    async with stack.client(token=None) as anon:
        response = await anon.post(f"/api/v1/approvals/{approval_id}/approve", json={"token": token_of(url)})
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "approved"
        await stack.wd.jobs.wait_idle()
        reused = await anon.post(f"/api/v1/approvals/{approval_id}/approve", json={"token": token_of(url)})
        assert reused.status_code == 409 and reused.json()["error"] == "used"
    async with stack.client() as api:
        incident = (await api.get(f"/api/v1/incidents/{stack.incident_id}")).json()
    assert incident["status"] == "resolved"
    assert incident["plan"]["playbook"] == "restart_agent"
    assert incident["verification"]["ok"] is True
    assert [(a["step"], a["state"]) for a in incident["actions"]] == [("restart_worker", "succeeded")]
    kinds = [(e["kind"], e["phase"]) for e in incident["audit"]]
    for step in ("diagnosis", "preconditions", "apply", "verify", "action"):
        assert (step, "before") in kinds and (step, "after") in kinds, step
    assert ("approval_decided", "after") in kinds
    assert (await stack.wd.clients.orchestrator.get_execution(stack.execution_id)).status == "completed"


async def test_bearer_deny_escalates_and_nothing_acts(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["deny"].split("?")[0])
    async with stack.client() as api:
        response = await api.post(f"/api/v1/approvals/{approval_id}/deny", json={"actor": "bob"})
        assert response.status_code == 200 and response.json()["state"] == "denied"
        await stack.wd.jobs.wait_idle()
        incident = (await api.get(f"/api/v1/incidents/{stack.incident_id}")).json()
    assert incident["status"] == "escalated" and incident["actions"] == []
    assert "denied by bootstrap:bob" in incident["summary"]
    assert (await stack.wd.clients.orchestrator.get_execution(stack.execution_id)).status == "running"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_bad_requests_get_clear_errors(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["approve"].split("?")[0])
    async with stack.client(token=None) as anon:
        assert (await anon.post(f"/api/v1/approvals/{approval_id}/approve")).status_code == 401
        forged = await anon.post(f"/api/v1/approvals/{approval_id}/approve", json={"token": "1.x"})
        assert forged.status_code == 403
        # an unknown prompt is refused as a forged token is: the answer says nothing of which ids exist
        assert (
            await anon.post("/api/v1/approvals/apr_nope/approve", json={"token": "1.x"})
        ).status_code == 403
        bad_json = await anon.post(
            f"/api/v1/approvals/{approval_id}/approve",
            content=b"{",
            headers={"Content-Type": "application/json"},
        )
        assert bad_json.status_code == 400 and bad_json.json()["error"] == "malformed_json"
        page = await anon.get(f"/approvals/{approval_id}", params={"token": "1.x"})
        assert page.status_code == 403 and "Invalid link" in page.text
        assert (await anon.get("/approvals/apr_nope", params={"token": "1.x"})).status_code == 403
    async with stack.client(token="wrong-token") as wrong:
        assert (await wrong.post(f"/api/v1/approvals/{approval_id}/approve")).status_code == 401
        assert (await wrong.post(f"/api/v1/approvals/{approval_id}/explode")).status_code in (401, 404)
    async with stack.client() as api:
        assert (await api.get(f"/api/v1/approvals/{approval_id}")).json()["state"] == "pending"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_page_shows_the_plan_and_a_get_never_decides(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    async with stack.client(token=None) as anon:
        page = await anon.get(url.replace(stack.url, ""))
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert "restart_agent" in html and "emissions.scope2" in html and 'id="approve"' in html
    assert "You followed the <b>approve</b> link: confirm below." in html
    page_part, links_part = html.split("<body>")[1].split("<h2>Links</h2>")
    assert "<script src" not in html and "http://" not in page_part.split("token=")[0]
    # the incident's links are anchors only (nothing is loaded from them): runbook, trace, provenance
    assert 'id="runbook-link"' in links_part and 'id="trace-link"' in links_part
    assert "<img" not in links_part and "<script" not in links_part
    approval_id = approval_id_of(url.split("?")[0])
    async with stack.client() as api:
        assert (await api.get(f"/api/v1/approvals/{approval_id}")).json()["state"] == "pending"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


# -- remediation web -------------------------------------------------------------------------------------
# The approval page and API as the on-call meets them: no token configured, an expired prompt, no JS.
#
# Uses the real watchdog app over the real orchestrator service (the `stack` fixture of test_web.py).


async def test_without_a_configured_api_token_nobody_decides_without_the_link_token(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["approve"].split("?")[0])
    stack.token_file.write_text("\n")  # the token file, re-read on change, now names no API token
    async with stack.client(token=None) as anon:
        approve = await anon.post(f"/api/v1/approvals/{approval_id}/approve")
        assert approve.status_code == 401, approve.text
        assert (await anon.get(f"/api/v1/approvals/{approval_id}")).status_code == 401
    async with stack.client(token="anything") as guess:
        assert (await guess.post(f"/api/v1/approvals/{approval_id}/approve")).status_code == 401
    assert (await stack.wd.approvals.get(approval_id)).state == "pending"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_a_prompt_past_its_expiry_shows_expired_and_offers_no_buttons(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    approval_id = approval_id_of(url.split("?")[0])
    approvals = stack.wd.approvals
    approval = await approvals.get(approval_id)
    later = approval.expires_at + timedelta(seconds=1)
    approvals.clock = FakeClock(later)  # past the expiry, before the sweeper marked it expired
    async with stack.client(token=None) as anon:
        page = await anon.get(url.replace(stack.url, ""))
        assert page.status_code == 200
        assert 'id="approve"' not in page.text and 'id="deny"' not in page.text
        assert 'id="approval-state">expired<' in page.text
        assert "nothing will act on it" in page.text
        # the form posted anyway (a page left open) is refused and says why
        posted = await anon.post(
            f"/approvals/{approval_id}",
            data={"token": token_of(url), "decision": "approve"},
            follow_redirects=True,
        )
        assert posted.status_code == 200 and "expired" in posted.text
    assert (await approvals.get(approval_id)).state == "pending"  # only the sweeper expires it
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_the_progress_page_refreshes_itself_without_javascript(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    approval_id = approval_id_of(url.split("?")[0])
    # Approved, and the incident being acted on: the state the page shows while the playbook runs.
    await stack.wd.approvals.decide(approval_id, Decision.APPROVE, actor="test", authenticated=True)
    await stack.wd.incidents.transition(
        stack.incident_id, "remediating", actor="test", reason="acting", expected=("awaiting_approval",)
    )
    async with stack.client(token=None) as anon:
        page = await anon.get(url.replace(stack.url, ""))
    assert page.status_code == 200
    assert '<meta http-equiv="refresh" content="2">' in page.text
    assert "<script" not in page.text
    assert 'id="progress"' in page.text
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_after_the_remediation_the_page_says_approved_not_the_stores_used(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    approval_id = approval_id_of(url.split("?")[0])
    async with stack.client(token=None) as anon:
        decided = await anon.post(
            f"/approvals/{approval_id}", data={"token": token_of(url), "decision": "approve"}
        )
        assert decided.status_code == 303
        await stack.wd.jobs.wait_idle()
        assert (await stack.wd.approvals.get(approval_id)).state == "used"
        page = await anon.get(url.replace(stack.url, ""))
        assert 'id="approval-state">approved (acted on)<' in page.text
        assert "Decision: approved (acted on) by link." in page.text
        again = await anon.post(
            f"/approvals/{approval_id}",
            data={"token": token_of(url), "decision": "deny"},
            follow_redirects=True,
        )
        assert "is already approved and acted on; nothing was changed" in again.text
