"""The approval page in a real headless browser (Debian's chromium driven by playwright): open the link
from the notifier's message, see the plan, click Approve, the remediation happens, and the page shows
the result."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.conftest import missing_service
from tests.watchdog.approval_stack import Stack, links

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless chromium (skipped locally when it is not installed, failed under CI)."""
    if shutil.which(CHROMIUM) is None:
        missing_service(f"chromium not installed at {CHROMIUM}")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_open_link_see_plan_click_approve_and_see_the_result(stack: Stack, browser: Browser) -> None:
    message = await stack.stuck_incident()
    approve_url = links(message)["approve"]
    page = await browser.new_page()
    await page.goto(approve_url)
    await expect(page.locator("#plan")).to_contain_text("restart_agent(agent_id=emissions.scope2")
    await expect(page.locator("#diagnosis")).to_contain_text("external_api_slow")
    await expect(page.locator("#actions")).to_contain_text("restart the in-process agent worker")
    await expect(page.locator("#approval-state")).to_have_text("pending")
    await page.click("#approve")
    # The page reloads itself while the remediation runs, then shows the outcome.
    await expect(page.locator("#incident-status")).to_have_text("resolved", timeout=30_000)
    await expect(page.locator("#decision")).to_contain_text("by link")
    await expect(page.locator("#result")).to_contain_text("resolved by restart_agent")
    await expect(page.locator("#verification")).to_contain_text("provenance_chain_valid")
    await expect(page.locator("#approve")).to_have_count(0)
    await stack.wd.jobs.wait_idle()
    execution = await stack.wd.clients.orchestrator.get_execution(stack.execution_id)
    assert execution.status == "completed"
    assert (await stack.wd.incidents.get(stack.incident_id)).status == "resolved"


async def test_a_second_click_after_the_decision_shows_why_nothing_happened(
    stack: Stack, browser: Browser
) -> None:
    message = await stack.stuck_incident()
    deny_url = links(message)["deny"]
    first = await browser.new_page()
    second = await browser.new_page()
    await first.goto(deny_url)
    await second.goto(deny_url)  # a stale tab with the buttons still showing
    await first.click("#deny")
    await expect(first.locator("#approval-state")).to_have_text("denied")
    await second.click("#approve")
    await expect(second.locator("#notice")).to_contain_text("already denied")
    await expect(second.locator("#approval-state")).to_have_text("denied")
    await stack.wd.jobs.wait_idle()
    assert (await stack.wd.incidents.get(stack.incident_id)).status == "escalated"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


# -- remediation browser ---------------------------------------------------------------------------------
# The approval page in a real headless browser with JavaScript turned off (as some locked-down
# on-call laptops and mail/chat previews have it): approve, and the page still follows the remediation
# to its result.


async def test_without_javascript_approve_and_the_page_shows_the_result(
    stack: Stack, browser: Browser
) -> None:
    message = await stack.stuck_incident()
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(links(message)["approve"])
    await expect(page.locator("#approval-state")).to_have_text("pending")
    await page.click("#approve")
    await expect(page.locator("#incident-status")).to_have_text("resolved", timeout=30_000)
    await expect(page.locator("#result")).to_contain_text("resolved by restart_agent")
    await expect(page.locator("#approval-state")).to_have_text("approved (acted on)")
    await stack.wd.jobs.wait_idle()
    assert (await stack.wd.incidents.get(stack.incident_id)).status == "resolved"
