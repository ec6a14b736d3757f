"""The approval page in a real headless browser with JavaScript turned off (as some locked-down
on-call laptops and mail/chat previews have it): approve, and the page still follows the remediation
to its result."""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import missing_service
from tests.watchdog.test_browser import ARGS, CHROMIUM
from tests.watchdog.test_web import Stack, links, stack  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_without_javascript_approve_and_the_page_shows_the_result(stack: Stack) -> None:  # noqa: F811
    if shutil.which(CHROMIUM) is None:
        missing_service("chromium not installed at /usr/bin/chromium")
    message = await stack.stuck_incident()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(java_script_enabled=False)
            page = await context.new_page()
            await page.goto(links(message)["approve"])
            await expect(page.locator("#approval-state")).to_have_text("pending")
            await page.click("#approve")
            await expect(page.locator("#incident-status")).to_have_text("resolved", timeout=30_000)
            await expect(page.locator("#result")).to_contain_text("resolved by restart_agent")
            await expect(page.locator("#approval-state")).to_have_text("approved (acted on)")
        finally:
            await browser.close()
    await stack.wd.jobs.wait_idle()
    assert (await stack.wd.incidents.get(stack.incident_id)).status == "resolved"
