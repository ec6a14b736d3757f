"""Notifiers against a real webhook receiver on loopback: Slack and JSON formats, failures reported."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from playbooks.registry import default_registry
from tests.conftest import free_port
from tests.watchdog.conftest import make_diagnosis
from tests.watchdog.messages import PROMPT
from tests.watchdog.waits import Waits
from watchdog.notifier import (
    EscalationMessage,
    JsonNotifier,
    NullNotifier,
    PromptMessage,
    SlackNotifier,
    notifier_from_settings,
    slack_escalation,
    slack_prompt,
)
from watchdog.planner import make_plan
from watchdog.policy import ApprovalRule, Mode, load_policy
from watchdog.rate_limit import (
    DEFAULT_RETRY_AFTER_SECONDS,
    RATE_LIMIT_RETRIES,
    RATE_LIMIT_WAIT_SECONDS,
    RateLimitRetry,
)
from watchdog.responder import diagnosis_summary
from watchdog.settings import WatchdogSettings


class Receiver:
    """A webhook receiver: records bodies, answers with `status`, or hangs when `hang` is set."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.hang = asyncio.Event()
        self.release = asyncio.Event()
        self.handled = asyncio.Event()
        self.url = ""
        self.limited: list[str | None] = []  # the next requests answer 429 with these Retry-After

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if self.limited:
            retry_after = self.limited.pop(0)
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            return web.Response(status=429, text="rate_limited", headers=headers)
        if self.hang.is_set():
            await asyncio.wait_for(self.release.wait(), timeout=30)
        self.handled.set()
        return web.Response(status=self.status, text="ok" if self.status < 400 else "boom")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    rec.release.set()
    await runner.cleanup()


async def test_slack_prompt_has_approve_and_deny_buttons(receiver: Receiver) -> None:
    result = await SlackNotifier(receiver.url, timeout=2).approval_requested(PROMPT)
    assert result.ok and result.sent and result.status == 200
    body = receiver.bodies[0]
    assert "approval needed for incident 7" in body["text"]
    buttons = body["blocks"][-1]["elements"]
    assert [(b["text"]["text"], b["url"]) for b in buttons] == [
        ("Approve", PROMPT.approve_url),
        ("Deny", PROMPT.deny_url),
    ]
    assert "CrashLoopBackOff" in body["blocks"][1]["text"]["text"]


def test_a_webhook_prompt_under_an_approval_rule_says_a_signed_in_approver_is_needed() -> None:
    rule = ApprovalRule(approvers_required=2, groups=["sre"])
    body = slack_prompt(dataclasses.replace(PROMPT, approval_rule=rule))
    needs = (
        "Needs 2 distinct approvers of role approver or higher in sre, signed in: the Approve link alone "
        "cannot approve it; open it through the login proxy"
    )
    assert needs in body["text"] and f"*{needs[:5]}*{needs[5:]}" in body["blocks"][1]["text"]["text"]
    assert "Needs" not in slack_prompt(PROMPT)["text"]


async def test_the_json_prompt_carries_the_approval_rule(receiver: Receiver) -> None:
    rule = ApprovalRule(role="operator", approvers_required=2)
    result = await JsonNotifier(receiver.url, timeout=2).approval_requested(
        dataclasses.replace(PROMPT, approval_rule=rule)
    )
    assert result.ok
    expected = {"role": "operator", "groups": [], "approvers_required": 2}
    assert receiver.bodies[0]["approval_rule"] == expected


async def test_json_notifier_sends_the_fields(receiver: Receiver) -> None:
    result = await JsonNotifier(receiver.url, timeout=2).escalated(
        EscalationMessage(
            incident_id=7,
            execution_id="exec-1",
            reason="approval expired",
            links={"runbook": "https://runbooks.example/stuck"},
            alert_summary="run exec-1 is stuck",
        )
    )
    assert result.ok
    assert receiver.bodies == [
        {
            "event": "escalated",
            "incident_id": 7,
            "execution_id": "exec-1",
            "reason": "approval expired",
            "diagnosis_summary": "",
            "plan_headline": "",
            "details": {},
            "links": {"runbook": "https://runbooks.example/stuck"},
            "alert_summary": "run exec-1 is stuck",
            "rule": None,
        }
    ]


async def test_error_status_is_reported_not_raised(receiver: Receiver) -> None:
    receiver.status = 500
    result = await SlackNotifier(receiver.url, timeout=2).approval_requested(PROMPT)
    assert not result.ok and result.status == 500
    assert "answered 500: boom" in result.detail


async def test_a_rate_limited_webhook_is_sent_again_after_its_retry_after(receiver: Receiver) -> None:
    waits = Waits()
    notifier = SlackNotifier(receiver.url, timeout=2, rate_limit=RateLimitRetry(sleep=waits))
    receiver.limited = ["3", None]
    result = await notifier.approval_requested(PROMPT)
    assert result.ok and result.status == 200
    assert waits.seconds == [3.0, DEFAULT_RETRY_AFTER_SECONDS] and len(receiver.bodies) == 3


async def test_a_webhook_rate_limited_for_ever_fails_after_its_retries(receiver: Receiver) -> None:
    waits = Waits()
    notifier = JsonNotifier(receiver.url, timeout=2, rate_limit=RateLimitRetry(sleep=waits))
    receiver.limited = ["2"] * 10
    result = await notifier.escalated(EscalationMessage(incident_id=7, execution_id="exec-1", reason="r"))
    assert (result.ok, result.status) == (False, 429)
    assert result.detail == "notifier webhook answered 429: rate_limited (rate limited; tried 3 times)"
    assert waits.seconds == [2.0] * RATE_LIMIT_RETRIES and len(receiver.bodies) == 1 + RATE_LIMIT_RETRIES


async def test_a_webhook_retry_after_past_the_allowed_wait_is_not_waited_for(receiver: Receiver) -> None:
    waits = Waits()
    notifier = SlackNotifier(receiver.url, timeout=2, rate_limit=RateLimitRetry(sleep=waits))
    receiver.limited = [str(RATE_LIMIT_WAIT_SECONDS + 1)]
    result = await notifier.approval_requested(PROMPT)
    assert not result.ok and waits.seconds == [] and len(receiver.bodies) == 1
    assert result.detail.endswith("(rate limited; Retry-After 31s is past the 30s of waiting allowed)")


async def test_the_configured_webhook_notifier_retries_a_429(receiver: Receiver) -> None:
    settings = WatchdogSettings(notifier_url=receiver.url)
    receiver.limited = ["0"]
    result = await notifier_from_settings(settings).approval_requested(PROMPT)
    assert result.ok and len(receiver.bodies) == 2


async def test_unreachable_webhook_is_reported() -> None:
    result = await SlackNotifier(f"http://127.0.0.1:{free_port()}/hook", timeout=2).approval_requested(PROMPT)
    assert not result.ok and "unreachable" in result.detail


async def test_hanging_webhook_times_out(receiver: Receiver) -> None:
    receiver.hang.set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await JsonNotifier(receiver.url, timeout=0.3).approval_requested(PROMPT)
    assert not result.ok and "timed out after 0.3s" in result.detail
    assert loop.time() - started < 5
    receiver.release.set()  # let the receiver's handler finish before the test ends
    await asyncio.wait_for(receiver.handled.wait(), timeout=5)
    await asyncio.sleep(0.05)


async def test_settings_choose_the_notifier() -> None:
    assert isinstance(notifier_from_settings(WatchdogSettings()), NullNotifier)
    slack = notifier_from_settings(WatchdogSettings(notifier_url="http://x/hook"))
    assert isinstance(slack, SlackNotifier)
    json_kind = notifier_from_settings(WatchdogSettings(notifier_url="http://x/hook", notifier_kind="json"))
    assert isinstance(json_kind, JsonNotifier)
    null = await NullNotifier().approval_requested(PROMPT)
    assert null.ok and not null.sent


# -- remediation notifier --------------------------------------------------------------------------------
# The Slack prompt survives a long, log-laden diagnosis: Slack refuses a whole message whose section
# passes 3000 characters, and reads `<...>` as a link, so the on-call would get no prompt at all.


LOG_LINE = "WARNING node=scope2 external call GET <https://factors.example/api?a=1&b=2> still waiting; "


def test_a_long_diagnosis_is_clipped_and_the_actions_and_buttons_survive() -> None:
    message = dataclasses.replace(PROMPT, diagnosis_summary=LOG_LINE * 80, rationale=LOG_LINE * 40)
    body = slack_prompt(message)
    section = body["blocks"][1]["text"]["text"]
    assert len(section) <= 3000 and section.endswith("…")
    assert "kubectl delete pod -n greenlang calc-1" in section  # actions come before the evidence
    assert "*Expires* 2026-03-01T12:15:00+00:00" in section
    assert "gl-watchdog approve|deny apr_1" in section
    assert [b["text"]["text"] for b in body["blocks"][-1]["elements"]] == ["Approve", "Deny"]
    assert len(body["blocks"][0]["text"]["text"]) <= 150


def test_angle_brackets_and_ampersands_are_shown_not_parsed() -> None:
    body = slack_prompt(dataclasses.replace(PROMPT, diagnosis_summary=LOG_LINE))
    section = body["blocks"][1]["text"]["text"]
    assert "&lt;https://factors.example/api?a=1&amp;b=2&gt;" in section
    assert "<https://" not in section


def test_a_long_escalation_is_clipped() -> None:
    body = slack_escalation(
        EscalationMessage(incident_id=7, execution_id="e", reason="r <x>", diagnosis_summary=LOG_LINE * 80)
    )
    section = body["blocks"][1]["text"]["text"]
    assert len(section) <= 3000 and section.startswith("*Reason* r &lt;x&gt;")


def _prompt_as_the_responder_builds_it(cause: str) -> PromptMessage:
    """A prompt from the real diagnosis summary and the real plan of the shipped policy (not hand-written)."""
    diagnosis = make_diagnosis("exec-1", agent="calc", cause=cause)
    plan = make_plan(diagnosis, load_policy(), Mode.RECOMMEND, default_registry())
    assert plan.playbook is not None and plan.risk is not None
    return dataclasses.replace(
        PROMPT,
        diagnosis_summary=diagnosis_summary(diagnosis),
        plan_headline=plan.headline(),
        rationale=plan.rationale,
        risk=plan.risk.value,
    )


EVIDENCE = "node stuck-node (agent calc) has run past its timeout"


def test_the_risk_is_shown_once_in_a_slack_prompt() -> None:
    message = _prompt_as_the_responder_builds_it("agent_unresponsive")
    section = slack_prompt(message)["blocks"][1]["text"]["text"]
    assert section.count("risk") == 1
    assert f"[risk {message.risk}]" in section


def test_diagnosis_and_why_do_not_repeat_the_evidence_in_a_slack_prompt() -> None:
    message = _prompt_as_the_responder_builds_it("agent_unresponsive")
    assert EVIDENCE in message.diagnosis_summary and EVIDENCE in message.rationale  # what used to repeat
    section = slack_prompt(message)["blocks"][1]["text"]["text"]
    assert section.count(EVIDENCE) == 1
    diagnosis_line, why_line = section.split("\n")[-2:]
    assert (
        diagnosis_line.startswith("*Diagnosis* likely cause agent_unresponsive")
        and EVIDENCE in diagnosis_line
    )
    # "Why" keeps what the diagnosis does not say: the decision and the rule's rationale.
    assert why_line.startswith("*Why* restart_agent")
    assert why_line.removeprefix("*Why* ") == message.rationale.split(" → ", 1)[1]


def test_evidence_the_diagnosis_does_not_state_stays_in_why() -> None:
    section = slack_prompt(PROMPT)["blocks"][1]["text"]["text"]
    assert "*Why* agent pod in CrashLoopBackOff for 12 min → restart_agent" in section


def test_an_escalation_states_the_evidence_once_and_keeps_its_decision() -> None:
    diagnosis = make_diagnosis("exec-1", agent="calc", cause="checkpoint_store")
    plan = make_plan(diagnosis, load_policy(), Mode.RECOMMEND, default_registry())
    assert plan.playbook is None
    message = EscalationMessage(
        incident_id=7,
        execution_id="exec-1",
        reason=plan.rationale,
        diagnosis_summary=diagnosis_summary(diagnosis),
        plan_headline=plan.headline(),
    )
    section = slack_escalation(message)["blocks"][1]["text"]["text"]
    assert section.count(EVIDENCE) == 1
    assert section.startswith("*Reason* no automatic fix (rule ")


def test_an_escalation_reason_that_is_all_evidence_is_still_shown() -> None:
    message = EscalationMessage(
        incident_id=7, execution_id="e", reason="run ended", diagnosis_summary="likely cause x: run ended"
    )
    assert slack_escalation(message)["blocks"][1]["text"]["text"].startswith("*Reason* run ended\n")
