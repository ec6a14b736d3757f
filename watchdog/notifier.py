"""Notifiers: tell on-call that an approval is wanted, or that an incident was escalated.

Called by the responder (prompts) and the remediation state machine (escalations), through
`RemediationService.notify`, which audits every result. Two formats,
chosen by `settings.notifier_kind`: a Slack-compatible incoming-webhook message (text + blocks with
approve/deny link buttons) and a generic JSON document. Both POST with httpx under a timeout. A
notifier never raises for the webhook's failure: it returns a `NotifyResult` with `ok=False` and the
reason, which the loop writes to the audit log and the log (reported, not swallowed). With no
`notifier_url` the `NullNotifier` records that nothing was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from watchdog.settings import NotifierKind, WatchdogSettings


@dataclass(frozen=True)
class PromptMessage:
    """What an approval notification says."""

    approval_id: str
    incident_id: int
    execution_id: str
    diagnosis_summary: str
    plan_headline: str
    rationale: str
    actions: list[str]
    risk: str | None
    expires_at: str
    page_url: str
    approve_url: str
    deny_url: str


@dataclass(frozen=True)
class EscalationMessage:
    """What an escalation notification says."""

    incident_id: int
    execution_id: str
    reason: str
    diagnosis_summary: str = ""
    plan_headline: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotifyResult:
    """How a delivery went. `sent` is False when no webhook is configured (not a failure)."""

    ok: bool
    sent: bool
    detail: str
    status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "sent": self.sent, "detail": self.detail, "status": self.status}


class Notifier(Protocol):
    """Anything that can deliver the two messages."""

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        """Ask on-call to approve or deny."""

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        """Tell on-call the watchdog stopped and a human must take over."""


class NullNotifier:
    """No webhook configured: nothing is sent, and the result says so."""

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        return NotifyResult(ok=True, sent=False, detail="no notifier_url configured; prompt not sent")

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        return NotifyResult(ok=True, sent=False, detail="no notifier_url configured; escalation not sent")


async def post_json(
    url: str,
    body: dict[str, Any],
    *,
    timeout_seconds: float,
    transport: httpx.AsyncBaseTransport | None = None,
    headers: dict[str, str] | None = None,
    what: str = "notifier webhook",
) -> NotifyResult:
    """POST `body` as JSON within `timeout_seconds`; every failure (timeout, unreachable, 4xx/5xx) is
    the result, named after `what`, never raised. `headers` may carry a credential: never in a result."""
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_seconds), transport=transport) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.TimeoutException:
        return NotifyResult(ok=False, sent=False, detail=f"{what} timed out after {timeout_seconds:g}s")
    except httpx.HTTPError as exc:
        return NotifyResult(ok=False, sent=False, detail=f"{what} unreachable: {exc or type(exc).__name__}")
    if response.status_code >= 400:
        return NotifyResult(
            ok=False,
            sent=False,
            detail=f"{what} answered {response.status_code}: {response.text[:200]}",
            status=response.status_code,
        )
    return NotifyResult(
        ok=True, sent=True, detail=f"delivered ({response.status_code})", status=response.status_code
    )


class _WebhookNotifier:
    def __init__(
        self, url: str, *, timeout: float = 5.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport = transport

    async def _post(self, body: dict[str, Any]) -> NotifyResult:
        return await post_json(self.url, body, timeout_seconds=self.timeout, transport=self.transport)


class SlackNotifier(_WebhookNotifier):
    """Slack incoming-webhook messages (also understood by Mattermost and Rocket.Chat)."""

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        return await self._post(slack_prompt(message))

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        return await self._post(slack_escalation(message))


class JsonNotifier(_WebhookNotifier):
    """A generic JSON document: `{"event": "approval_requested" | "escalated", ...fields}`."""

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        return await self._post({"event": "approval_requested", **message.__dict__})

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        return await self._post({"event": "escalated", **message.__dict__})


# Slack refuses a whole message (400 invalid_blocks) whose section text passes 3000 characters or
# whose header passes 150: a long diagnosis must never cost the on-call the prompt itself.
SLACK_SECTION_MAX = 3000
SLACK_HEADER_MAX = 150


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> str:
    """Text shown literally in Slack mrkdwn: `&`, `<`, `>` escaped (`<...>` would be read as a link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _not_in(text: str, already_said: str) -> str:
    """`text` without the evidence `already_said` states (the diagnosis summary), so no sentence shows twice.

    The planner's rationale is `evidence; evidence → decision` and the diagnosis summary ends with the same
    evidence (`likely cause X (...): evidence; evidence`): the items of the part before ` → ` that the
    summary already contains are left out, the decision always stays. Text without ` → ` is left out
    whole when the summary contains it. Empty when nothing is new.
    """
    if not already_said:
        return text
    because, arrow, decision = text.partition(" → ")
    if not arrow:
        return "" if text in already_said else text
    new = "; ".join(item for item in because.split("; ") if item and item not in already_said)
    return f"{new} → {decision}" if new else decision


def slack_prompt(message: PromptMessage) -> dict[str, Any]:
    """The Slack message of an approval prompt, with approve and deny link buttons.

    The risk is shown once: the plan headline carries it (`[risk medium]`, `Plan.headline`). "Why" shows
    only what the diagnosis does not already say (`_not_in`).
    """
    why = _not_in(message.rationale, message.diagnosis_summary)
    actions = "\n".join(f"• {_mrkdwn(a)}" for a in message.actions) or "• (no actions)"
    text = (
        f"gl-watchdog: approval needed for incident {message.incident_id} "
        f"(execution {message.execution_id}): {message.plan_headline}. "
        f"Approve: {message.approve_url} Deny: {message.deny_url}"
    )
    return {
        "text": text,
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _clip(f"Approval needed: incident {message.incident_id}", SLACK_HEADER_MAX),
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(
                        f"*Execution* `{_mrkdwn(message.execution_id)}`\n"
                        f"*Plan* {_mrkdwn(message.plan_headline)}\n"
                        f"*Actions*\n{actions}\n*Expires* {message.expires_at} · "
                        f"or `gl-watchdog approve|deny {_mrkdwn(message.approval_id)}`\n"
                        f"*Diagnosis* {_mrkdwn(message.diagnosis_summary)}"
                        + (f"\n*Why* {_mrkdwn(why)}" if why else ""),
                        SLACK_SECTION_MAX,
                    ),
                },
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Approve"},
                        "style": "primary",
                        "url": message.approve_url,
                    },
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Deny"},
                        "style": "danger",
                        "url": message.deny_url,
                    },
                ],
            },
        ],
    }


def slack_escalation(message: EscalationMessage) -> dict[str, Any]:
    """The Slack message of an escalation ("Reason" leaves out the evidence "Diagnosis" repeats)."""
    text = (
        f"gl-watchdog escalated incident {message.incident_id} "
        f"(execution {message.execution_id}): {message.reason}"
    )
    body = f"*Reason* {_mrkdwn(_not_in(message.reason, message.diagnosis_summary) or message.reason)}"
    if message.plan_headline:
        body += f"\n*Plan* {_mrkdwn(message.plan_headline)}"
    if message.diagnosis_summary:
        body += f"\n*Diagnosis* {_mrkdwn(message.diagnosis_summary)}"
    return {
        "text": text,
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _clip(f"Escalated: incident {message.incident_id}", SLACK_HEADER_MAX),
                },
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(body, SLACK_SECTION_MAX)}},
        ],
    }


def notifier_from_settings(
    settings: WatchdogSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> Notifier:
    """The notifier the settings ask for (NullNotifier without a URL)."""
    if not settings.notifier_url:
        return NullNotifier()
    timeout = settings.notifier_timeout_seconds
    if settings.notifier_kind is NotifierKind.JSON:
        return JsonNotifier(settings.notifier_url, timeout=timeout, transport=transport)
    return SlackNotifier(settings.notifier_url, timeout=timeout, transport=transport)
