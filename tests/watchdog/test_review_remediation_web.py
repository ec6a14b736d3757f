"""The approval page and API as the on-call meets them: no token configured, an expired prompt, no JS.

Uses the real watchdog app over the real orchestrator service (the `stack` fixture of test_web.py).
"""

from __future__ import annotations

from datetime import timedelta

from tests.watchdog.conftest import FakeClock
from tests.watchdog.test_web import Stack, approval_id_of, links, stack, token_of
from watchdog.approvals import Decision

__all__ = ["stack"]  # the fixture, re-used


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
        assert "Decision: approved (acted on) by web." in page.text
        again = await anon.post(
            f"/approvals/{approval_id}",
            data={"token": token_of(url), "decision": "deny"},
            follow_redirects=True,
        )
        assert "is already approved and acted on; nothing was changed" in again.text
