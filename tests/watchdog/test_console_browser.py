"""The incident console in a real headless browser (Debian's chromium driven by playwright) over the
real orchestrator, behind a simulated sign-in proxy (the watchdog trusts 127.0.0.1 as its proxy; the
browser contexts send its identity headers): list → incident → approve as alice, then as bob (the
restart needs two approvers here), and alice's open page follows the votes and the remediation by
itself (server-sent events, no polling); an operator diagnoses again, then runs a playbook from its
dry run, and the page follows; a stream that fails is opened again after growing delays; a forged
identity header from an address that is not the proxy is ignored; without JavaScript, by keyboard
alone; on a phone. axe-core (bundled by axe-playwright-python) finds no serious or critical violation
on the list, the incident page and the dry run. Screenshots are kept in test-artifacts/console/
(gitignored)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from tests.watchdog.approval_stack import Stack
from tests.watchdog.console_stack import PROXY, console_settings, running_console, signed_in
from watchdog.policy import DEFAULT_POLICY_FILE

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
SERIOUS = ("serious", "critical")


@pytest.fixture
def stack_settings(tmp_path: Path) -> dict[str, Any]:
    """Behind the proxy, with the shipped policy but two approvers for a restart."""
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["playbooks"]["restart_agent"]["approval"] = {"approvers_required": 2}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    return {**PROXY, "policy_file": policy_file}


async def as_user(browser: Browser, user: str, **options: Any) -> BrowserContext:
    """A browser context whose requests carry the proxy's identity headers of `user`."""
    return await browser.new_context(extra_http_headers=signed_in(user), **options)


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


async def test_list_incident_approve_by_two_and_the_page_follows_the_remediation(
    stack: Stack, browser: Browser
) -> None:
    await stack.stuck_incident()
    alice = await (await as_user(browser, "alice")).new_page()
    polls = console_requests(alice, "version")
    await alice.goto(f"{stack.url}/console/incidents")
    await expect(alice.locator("#who")).to_contain_text("alice@example.com")
    await expect(alice.locator("#incidents")).to_contain_text("awaiting_approval")
    assert await serious_violations(alice) == []
    await screenshot(alice, "incidents")
    await alice.get_by_role("link", name=f"Incident {stack.incident_id}").click()
    await expect(alice.locator("h1")).to_have_text(f"Incident {stack.incident_id}")
    await expect(alice.locator("#likely-cause")).to_have_text("external_api_slow")
    for step in range(1, 9):  # the runbook's eight steps (and any plugin's after them)
        await expect(alice.locator(f"#step-{step} h3")).to_contain_text(f"Step {step}: ")
    await expect(alice.locator("#playbook")).to_contain_text("restart_agent(agent_id=emissions.scope2")
    await expect(alice.locator("#dry-run")).to_contain_text("restart the in-process agent worker")
    await expect(alice.locator("#approval-progress")).to_have_text("0 of 2")
    assert await serious_violations(alice) == []
    await screenshot(alice, "incident")
    await alice.get_by_role("button", name="Approve the plan").click()
    await expect(alice.locator("#notice")).to_contain_text("needs a second, different approver")
    await expect(alice.locator("#approval-progress")).to_have_text("1 of 2: proxy:alice@example.com")

    bob = await (await as_user(browser, "bob")).new_page()
    await bob.goto(f"{stack.url}/console/incidents/{stack.incident_id}")
    await bob.get_by_role("button", name="Approve the plan").click()
    await expect(bob.locator("#notice")).to_contain_text("Your approval is recorded")
    # alice's page, not reloaded: its script follows the incident until it is settled
    await expect(alice.locator("#timeline")).to_contain_text("proxy:bob@example.com")
    await expect(alice.locator("#incident-status")).to_have_text("resolved", timeout=30_000)
    await expect(alice.locator("#approval-progress")).to_contain_text("2 of 2")
    await expect(alice.locator("#verification")).to_contain_text("provenance_chain_valid")
    await expect(alice.locator("#refresh-status")).to_contain_text("settled")
    await expect(alice.locator("#approve")).to_have_count(0)
    # "needs a second approver" is stale: it goes (once it could be read: 8 s after it was shown)
    await expect(alice.locator("#notice")).to_have_count(0, timeout=15_000)
    assert polls == []  # it followed the incident's events
    await screenshot(alice, "incident-resolved")
    await stack.wd.jobs.wait_idle()
    audit = (await stack.wd.incidents.detail(stack.incident_id)).audit
    assert [e.actor for e in audit if e.kind in ("approval_vote", "approval_decided")] == [
        "proxy:alice@example.com",
        "proxy:bob@example.com",
    ]


# The shipped policy (a restart needs no approval rule: an operator's run starts at once), the group
# ops operates, and an event stream lasts a second (the page reconnects after its end).
OPERATORS = {**PROXY, "proxy_role_map": {"oncall": "approver", "ops": "operator"}, "events_stream_seconds": 1}


def console_requests(page: Page, kind: str) -> list[str]:
    """The URLs of the console requests `page` makes from now on whose path ends with `/kind`."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url) if f"/{kind}" in request.url else None)
    return seen


@pytest.mark.parametrize("stack_settings", [OPERATORS])
async def test_an_operator_diagnoses_again_and_runs_a_playbook_and_events_update_the_page(
    stack: Stack, browser: Browser
) -> None:
    await stack.stuck_incident()
    # the incident open again (its prompt set aside), as only an open incident is diagnosed again
    await stack.wd.incidents.transition(stack.incident_id, "open", actor="test", reason="set aside")
    olga = await (await browser.new_context(extra_http_headers=signed_in("olga", groups="ops"))).new_page()
    polls, streams = console_requests(olga, "version"), console_requests(olga, "events")
    await olga.goto(f"{stack.url}/console/incidents/{stack.incident_id}")
    await expect(olga.locator("#who")).to_contain_text("(operator, via proxy)")
    await olga.get_by_role("button", name="Diagnose again").click()
    # back on the page with its notice (which the first update may already have taken away)
    await expect(olga).to_have_url(f"{stack.url}/console/incidents/{stack.incident_id}?notice=diagnosing")
    await olga.evaluate("window.notReloaded = true")
    # the diagnosis runs and asks again for approval: the page follows by itself, not reloaded
    await expect(olga.locator("#incident-status")).to_have_text("awaiting_approval", timeout=30_000)
    await expect(olga.locator("#timeline")).to_contain_text("diagnosis_requested")
    await expect(olga.locator("#not-diagnosable")).to_contain_text("it is awaiting_approval")
    shown_after = int(await olga.locator("#refresh-status").get_attribute("data-after") or 0)
    # a stream lasts a second here: the page opens the next by itself, after the last event it had
    async with olga.expect_request(lambda request: "/events?after=" in request.url) as reconnected:
        pass
    assert int((await reconnected.value).url.rsplit("=", 1)[1]) > shown_after
    assert await olga.evaluate("window.notReloaded === true")
    assert await serious_violations(olga) == []
    await screenshot(olga, "incident-operator")

    await olga.get_by_label("Playbook", exact=True).select_option("restart_agent")
    await olga.get_by_role("button", name="Dry run").click()
    await expect(olga.locator("h1")).to_have_text(f"Dry run of restart_agent on incident {stack.incident_id}")
    await expect(olga.locator("#planned")).to_contain_text("restart the in-process agent worker")
    await expect(olga.locator("#precheck")).to_have_text("met")
    assert await serious_violations(olga) == []
    await screenshot(olga, "playbook-dry-run")
    await olga.get_by_role("button", name="Run the playbook").click()
    await expect(olga).to_have_url(
        f"{stack.url}/console/incidents/{stack.incident_id}?notice=playbook_started"
    )
    await olga.evaluate("window.notReloaded = true")
    await expect(olga.locator("#incident-status")).to_have_text("resolved", timeout=30_000)
    await expect(olga.locator("#refresh-status")).to_contain_text("settled")
    await expect(olga.locator("#act-settled")).to_contain_text("This incident is resolved")
    await expect(olga.locator("#dry-run-playbook")).to_have_count(0)
    assert await olga.evaluate("window.notReloaded === true")
    assert polls == [] and streams  # event-driven: no version poll
    await stack.wd.jobs.wait_idle()
    audit = (await stack.wd.incidents.detail(stack.incident_id)).audit
    mine = {e.kind for e in audit if e.actor == "proxy:olga@example.com"}
    assert {"diagnosis_requested", "playbook_requested"} <= mine


async def test_a_failing_event_stream_is_opened_again_after_growing_delays_without_polling(
    _no_pending_tasks: None, postgres_url: str, browser: Browser
) -> None:
    settings = console_settings(postgres_url, console_local_mode=True)  # the browser is on loopback
    async with running_console(settings) as served:
        incident, _ = await served.incident("exec-retry", prompt=False)
        page = await browser.new_page()
        attempts: list[float] = []
        fourth = asyncio.Event()

        async def first_three_fail(route: Route) -> None:
            attempts.append(time.monotonic())
            if len(attempts) <= 3:
                await route.abort()
                return
            fourth.set()
            await route.continue_()

        await page.route("**/events?*", first_three_fail)
        polls = console_requests(page, "version")
        await page.goto(f"{served.http.base_url}/console/incidents/{incident.id}")
        async with asyncio.timeout(30):
            await fourth.wait()
        await served.wd.incidents.record(incident.id, "note", actor="test:after-the-failures")
        await expect(page.locator("#timeline")).to_contain_text("test:after-the-failures")
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.9 and gaps[0] < gaps[1] < gaps[2]  # 1 s, 2 s, 5 s
        assert polls == []  # the fallback poll waits for six failures in a row
        await served.wd.incidents.transition(incident.id, "escalated", actor="test", reason="done")
        await expect(page.locator("#refresh-status")).to_contain_text("settled")
        await page.close()


async def test_a_forged_identity_header_from_an_untrusted_address_is_ignored(
    _no_pending_tasks: None, postgres_url: str, browser: Browser
) -> None:
    settings = console_settings(postgres_url, **{**PROXY, "trusted_proxies": ["10.0.0.0/8"]})
    async with running_console(settings) as served:
        incident, _ = await served.incident("exec-forged")
        page = await (await as_user(browser, "mallory")).new_page()
        answer = await page.goto(f"{served.http.base_url}/console/incidents/{incident.id}")
        assert answer is not None and answer.status == 401
        await expect(page.locator("h1")).to_have_text("Sign in")
        await expect(page.locator("body")).not_to_contain_text("exec-forged")
        await expect(page.locator("body")).not_to_contain_text("mallory")


async def press_tab_until(page: Page, element_id: str, most: int = 40) -> None:
    """Tab through the page until `element_id` has the focus; the first stop is the skip link."""
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(most):
        if await page.evaluate("document.activeElement.id") == element_id:
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} not reached in {most} Tab presses")


async def test_without_javascript_two_approve_by_keyboard_and_a_reload_shows_the_result(
    stack: Stack, browser: Browser
) -> None:
    await stack.stuck_incident()
    for user, notice in (("alice", "needs a second"), ("bob", "Your approval is recorded")):
        context = await as_user(browser, user, java_script_enabled=False)
        page = await context.new_page()
        await page.goto(f"{stack.url}/console/incidents/{stack.incident_id}")
        await press_tab_until(page, "approve")  # by keyboard alone: Tab to the button, Enter
        await page.keyboard.press("Enter")
        await expect(page.locator("#notice")).to_contain_text(notice)
    await stack.wd.jobs.wait_idle()
    await page.get_by_role("link", name="Reload").click()
    await expect(page.locator("#incident-status")).to_have_text("resolved")
    await context.close()


async def test_on_a_phone_the_page_is_one_column_with_large_buttons(stack: Stack, browser: Browser) -> None:
    await stack.stuck_incident()
    context = await as_user(browser, "alice", viewport={"width": 390, "height": 844}, is_mobile=True)
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
