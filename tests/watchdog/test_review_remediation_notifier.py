"""The Slack prompt survives a long, log-laden diagnosis: Slack refuses a whole message whose section
passes 3000 characters, and reads `<...>` as a link, so the on-call would get no prompt at all."""

from __future__ import annotations

import dataclasses

from tests.watchdog.test_notifier import PROMPT
from watchdog.notifier import EscalationMessage, slack_escalation, slack_prompt

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
