"""Notification messages shared by the notifier and paging tests."""

from __future__ import annotations

from watchdog.notifier import PromptMessage

PROMPT = PromptMessage(
    approval_id="apr_1",
    incident_id=7,
    execution_id="exec-1",
    diagnosis_summary="likely cause agent_unresponsive (agent calc)",
    plan_headline="run restart_agent(agent_id=calc) [risk medium]",
    rationale="agent pod in CrashLoopBackOff for 12 min → restart_agent",
    actions=["kubectl delete pod -n greenlang calc-1"],
    risk="medium",
    expires_at="2026-03-01T12:15:00+00:00",
    page_url="http://wd/approvals/apr_1?token=t",
    approve_url="http://wd/approvals/apr_1?token=t&decision=approve",
    deny_url="http://wd/approvals/apr_1?token=t&decision=deny",
)
