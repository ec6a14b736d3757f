"""The incident console in a real headless browser (Debian's chromium driven by playwright) over the
real orchestrator: list → incident → approve as a named user, the page follows the remediation on its
own; an accessibility check (axe-core, bundled by axe-playwright-python) on the list and the incident
page. Screenshots of both pages are kept in test-artifacts/console/ (gitignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, expect

from tests.watchdog.approval_stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
SERIOUS = ("serious", "critical")


@pytest.fixture
def stack_settings() -> dict[str, Any]:
    return {"console_local_mode": True, "console_local_user": "alice", "console_local_role": "approver"}


async def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on `page`: rule id and the first offending node."""
    results = await Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['nodes'][0]['html'] if v['nodes'] else ''}"
        for v in results.response["violations"]
        if v["impact"] in SERIOUS
    ]


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_list_incident_approve_and_the_page_follows_the_remediation(
    stack: Stack, browser: Browser
) -> None:
    await stack.stuck_incident()
    page = await browser.new_page()
    await page.goto(f"{stack.url}/console/incidents")
    await expect(page.locator("#who")).to_contain_text("alice")
    row = page.get_by_role("link", name=f"Incident {stack.incident_id}")
    await expect(page.locator("#incidents")).to_contain_text("awaiting_approval")
    assert await serious_violations(page) == []
    await screenshot(page, "incidents")
    await row.click()
    await expect(page.locator("h1")).to_have_text(f"Incident {stack.incident_id}")
    await expect(page.locator("#likely-cause")).to_have_text("external_api_slow")
    for step in range(1, 9):  # the runbook's eight steps (and any plugin's after them)
        await expect(page.locator(f"#step-{step} h3")).to_contain_text(f"Step {step}: ")
    await expect(page.locator("#playbook")).to_contain_text("restart_agent(agent_id=emissions.scope2")
    await expect(page.locator("#dry-run")).to_contain_text("restart the in-process agent worker")
    await expect(page.locator("#approval-progress")).to_have_text("0 of 1")
    assert await serious_violations(page) == []
    await screenshot(page, "incident")
    await page.get_by_role("button", name="Approve the plan").click()
    await expect(page.locator("#notice")).to_contain_text("Your approval is recorded")
    # no reload from here on: the script follows the incident until it is settled
    await expect(page.locator("#incident-status")).to_have_text("resolved", timeout=30_000)
    await expect(page.locator("#timeline")).to_contain_text("local:alice")
    await expect(page.locator("#verification")).to_contain_text("provenance_chain_valid")
    await expect(page.locator("#refresh-status")).to_contain_text("settled")
    await expect(page.locator("#approve")).to_have_count(0)
    await screenshot(page, "incident-resolved")
    await stack.wd.jobs.wait_idle()
    audit = (await stack.wd.incidents.detail(stack.incident_id)).audit
    assert any(e.kind == "approval_decided" and e.actor == "local:alice" for e in audit)


async def press_tab_until(page: Page, element_id: str, most: int = 40) -> None:
    """Tab through the page until `element_id` has the focus; the first stop is the skip link."""
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(most):
        if await page.evaluate("document.activeElement.id") == element_id:
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} not reached in {most} Tab presses")


async def test_without_javascript_the_console_approves_by_keyboard_and_offers_a_reload(
    stack: Stack, browser: Browser
) -> None:
    await stack.stuck_incident()
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(f"{stack.url}/console/incidents/{stack.incident_id}")
    await press_tab_until(page, "approve")  # by keyboard alone: Tab to the button, Enter
    await page.keyboard.press("Enter")
    await expect(page.locator("#notice")).to_contain_text("Your approval is recorded")
    await stack.wd.jobs.wait_idle()
    await page.get_by_role("link", name="Reload").click()
    await expect(page.locator("#incident-status")).to_have_text("resolved")
    await context.close()


async def test_on_a_phone_the_page_is_one_column_with_large_buttons(stack: Stack, browser: Browser) -> None:
    await stack.stuck_incident()
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await context.new_page()
    await page.goto(f"{stack.url}/console/incidents/{stack.incident_id}")
    approve = await page.locator("#approve").bounding_box()
    assert approve is not None
    assert approve["height"] >= 44 and approve["width"] >= 300  # full width, a thumb's height
    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= 390  # nothing runs off the side
    await screenshot(page, "incident-phone")
    await context.close()
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_the_accessibility_check_finds_what_a_page_without_labels_lacks(browser: Browser) -> None:
    """The check above can fail: on a page with an unlabelled field and button it reports them."""
    page = await browser.new_page()
    await page.set_content('<html><body><main><h1>x</h1><input id="a"><button></button></main></body></html>')
    found = await serious_violations(page)
    assert any(v.startswith("label (critical)") for v in found)
    assert any(v.startswith("button-name (critical)") for v in found)
