"""The security headers of the watchdog's pages and the Origin check of form posts, on the real app:
every HTML answer carries a CSP without inline script and `frame-ancestors 'none'`, no referrer, no
caching and nosniff; a form post from another site is refused with 403 before it decides anything."""

from __future__ import annotations

import pytest

from tests.watchdog.identity_app import IdentityApp


async def test_the_approval_page_carries_the_security_headers(identity_app: IdentityApp) -> None:
    approval = await identity_app.prompt()
    token = identity_app.wd.approvals.token_for(approval)
    async with identity_app.client(None) as browser:
        page = await browser.get(f"/approvals/{approval.id}", params={"token": token})
        invalid = await browser.get(f"/approvals/{approval.id}", params={"token": "1.x"})
    for answer in (page, invalid):
        assert answer.headers["Content-Type"].startswith("text/html")
        csp = answer.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in page.text


async def test_json_answers_are_nosniff_and_not_framed_as_pages(identity_app: IdentityApp) -> None:
    async with identity_app.client() as client:
        answer = await client.get("/api/v1/incidents")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in answer.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example.net"},
        {"Origin": "https://evil.example.net", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "null"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Referer": "https://evil.example.net/page"},
    ],
)
async def test_a_form_post_from_another_site_is_refused(
    identity_app: IdentityApp, headers: dict[str, str]
) -> None:
    approval = await identity_app.prompt()
    token = identity_app.wd.approvals.token_for(approval)
    async with identity_app.client(None) as browser:
        answer = await browser.post(
            f"/approvals/{approval.id}", data={"token": token, "decision": "approve"}, headers=headers
        )
    assert answer.status_code == 403 and answer.json()["error"] == "foreign_origin"
    assert (await identity_app.wd.approvals.get(approval.id)).state == "pending"


@pytest.mark.parametrize(
    "sent",
    [
        {"Origin": "own"},
        {"Origin": "https://watchdog.example.com"},
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # a browser under no-referrer
        {},
    ],
)
async def test_a_form_post_from_this_site_or_without_origin_is_taken(
    identity_app: IdentityApp, sent: dict[str, str]
) -> None:
    approval = await identity_app.prompt()
    token = identity_app.wd.approvals.token_for(approval)
    headers = {k: identity_app.url if v == "own" else v for k, v in sent.items()}
    async with identity_app.client(None) as browser:
        answer = await browser.post(
            f"/approvals/{approval.id}",
            data={"token": token, "decision": "deny"},
            headers=headers,
            follow_redirects=False,
        )
    assert answer.status_code == 303, answer.text
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert (await identity_app.wd.approvals.get(approval.id)).state == "denied"


async def test_a_script_on_another_site_cannot_approve_with_the_proxy_session(
    identity_app: IdentityApp,
) -> None:
    approval = await identity_app.prompt()
    sre = {"X-Forwarded-User": "bob", "X-Forwarded-Groups": "sre", "Origin": "https://evil.example.net"}
    async with identity_app.client(None, **sre) as browser:
        answer = await browser.post(f"/api/v1/incidents/{approval.incident_id}/approve")
    assert answer.status_code == 403 and answer.json()["error"] == "foreign_origin"
    assert (await identity_app.wd.approvals.get(approval.id)).state == "pending"
