"""Notifiers: tell on-call that an approval is wanted, or that an incident was escalated.

Called by the responder (prompts) and the remediation state machine (escalations), through
`RemediationService.notify`, which audits every result. Two formats,
chosen by `settings.notifier_kind`: a Slack-compatible incoming-webhook message (text + blocks with
approve/deny link buttons and the incident's links) and a generic JSON document (its `links` field).
With a Slack bot the same blocks carry interactive buttons instead (`watchdog.slack_bot`).
Both POST with httpx under a timeout; a 429 is sent again after its `Retry-After`, twice at most and
30 s of waiting in all (`watchdog.rate_limit`, shared with the bot). A notifier never raises for the
webhook's failure: it returns a `NotifyResult` with `ok=False` and the reason, which the loop writes
to the audit log and the log (reported, not swallowed). With no `notifier_url` the `NullNotifier`
records that nothing was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from watchdog.links import LINK_TITLES
from watchdog.policy import ApprovalRule
from watchdog.rate_limit import DEFAULT_RATE_LIMIT, RateLimitRetry, retry_after
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
    # The incident's runbook, grafana, trace, provenance and alert links by name, and what its alert
    # said (`watchdog.links`; added by `watchdog.notify_router`).
    links: dict[str, str] = field(default_factory=dict)
    alert_summary: str = ""
    # The policy's approval rule of the plan (`ApprovalService.rule_for`, as the approval page shows
    # it); None: its link alone may decide.
    approval_rule: ApprovalRule | None = None


@dataclass(frozen=True)
class EscalationMessage:
    """What an escalation notification says."""

    incident_id: int
    execution_id: str
    reason: str
    diagnosis_summary: str = ""
    plan_headline: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    alert_summary: str = ""
    rule: str | None = None  # the policy rule that planned the incident (its `escalate_to` routes it)


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


class MessageUpdates(Protocol):
    """Something that updates a posted prompt when its incident changes (the Slack bot, through the
    router); None when there is no message to update."""

    async def state_changed(self, incident_id: int, state: str, detail: str) -> NotifyResult | None:
        """Say `state: detail` where the incident's prompt was posted."""


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
    rate_limit: RateLimitRetry | None = None,
) -> NotifyResult:
    """POST `body` as JSON within `timeout_seconds`; every failure (timeout, unreachable, 4xx/5xx) is
    the result, named after `what`, never raised. With `rate_limit`, a 429 is sent again after its
    Retry-After within its bounds (`watchdog.rate_limit`). `headers` may carry a credential: never in
    a result."""

    async def attempt() -> tuple[NotifyResult, float | None]:
        return await _post_once(url, body, timeout_seconds, transport, headers, what)

    if rate_limit is None:
        return (await attempt())[0]
    result, gave_up = await rate_limit.call(attempt)
    return result if gave_up is None else replace(result, detail=f"{result.detail} ({gave_up})")


async def _post_once(
    url: str,
    body: dict[str, Any],
    timeout_seconds: float,
    transport: httpx.AsyncBaseTransport | None,
    headers: dict[str, str] | None,
    what: str,
) -> tuple[NotifyResult, float | None]:
    """One POST: its result and the wait a 429 asks for (None: not rate limited)."""
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_seconds), transport=transport) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.TimeoutException:
        return NotifyResult(ok=False, sent=False, detail=f"{what} timed out after {timeout_seconds:g}s"), None
    except httpx.HTTPError as exc:
        unreachable = f"{what} unreachable: {exc or type(exc).__name__}"
        return NotifyResult(ok=False, sent=False, detail=unreachable), None
    status = response.status_code
    if status >= 400:
        answered = f"{what} answered {status}: {response.text[:200]}"
        return NotifyResult(ok=False, sent=False, detail=answered, status=status), retry_after(response)
    return NotifyResult(ok=True, sent=True, detail=f"delivered ({status})", status=status), None


class _WebhookNotifier:
    """POSTs to one webhook URL under a timeout; a 429 is sent again after its Retry-After
    (`watchdog.rate_limit`, the same bounds as the Slack bot's)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limit: RateLimitRetry = DEFAULT_RATE_LIMIT,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport = transport
        self.rate_limit = rate_limit

    async def _post(self, body: dict[str, Any]) -> NotifyResult:
        return await post_json(
            self.url, body, timeout_seconds=self.timeout, transport=self.transport, rate_limit=self.rate_limit
        )


class SlackNotifier(_WebhookNotifier):
    """Slack incoming-webhook messages (also understood by Mattermost and Rocket.Chat)."""

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        return await self._post(slack_prompt(message))

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        return await self._post(slack_escalation(message))


class JsonNotifier(_WebhookNotifier):
    """A generic JSON document: `{"event": "approval_requested" | "escalated", ...fields}`."""

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        rule = message.approval_rule.model_dump() if message.approval_rule is not None else None
        return await self._post({"event": "approval_requested", **message.__dict__, "approval_rule": rule})

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        return await self._post({"event": "escalated", **message.__dict__})


# Slack refuses a whole message (400 invalid_blocks) whose section text passes 3000 characters or
# whose header passes 150: a long diagnosis must never cost the on-call the prompt itself.
SLACK_SECTION_MAX = 3000
SLACK_HEADER_MAX = 150


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mrkdwn(text: str) -> str:
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


def links_block(links: dict[str, str], alert_summary: str = "") -> list[dict[str, Any]]:
    """A context block with the incident's links (`<url|Runbook> · ...`) and what its alert said; none
    when there is neither."""
    parts = [f"<{mrkdwn(url)}|{LINK_TITLES.get(name, name)}>" for name, url in links.items()]
    text = " · ".join(parts)
    if alert_summary:
        text = f"{mrkdwn(alert_summary)}\n{text}" if text else mrkdwn(alert_summary)
    if not text:
        return []
    return [{"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, SLACK_SECTION_MAX)}]}]


def _button(label: str, style: str, *, url: str | None, action: str, value: str) -> dict[str, Any]:
    """A link button (`url`: incoming-webhook mode) or an interactive one (`action_id`, `value`)."""
    button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": label}, "style": style}
    if url is not None:
        button["url"] = url
    else:
        button.update(action_id=action, value=value)
    return button


def approval_rule_text(rule: ApprovalRule, *, interactive: bool) -> str:
    """Who the plan's approval rule asks for (the prompt's "Needs ...") and how they decide: through
    the approval page (link buttons: signed in, as the page itself says) or by a Slack click (`interactive`:
    the clicker's `slack_role_map` role counts; a Slack identity has no groups)."""
    needs = rule.describe()
    if not interactive:
        return (
            f"{needs}, signed in: the Approve link alone cannot approve it; open it through the login "
            "proxy (or approve with a named API token)"
        )
    if rule.groups:
        return (
            f"{needs}: Slack user groups are not read, so a click approves only for a user whose Slack "
            "role is admin; others approve on the approval page, signed in"
        )
    role = "`slack_role_map` (else `slack_default_role`)"
    return f"{needs}: a click counts for a user {role} gives {rule.role} or higher"


def slack_prompt(message: PromptMessage, *, interactive: bool = False) -> dict[str, Any]:
    """The Slack message of an approval prompt, with approve and deny buttons: links to the approval page
    (incoming-webhook mode), or, `interactive` (the bot), buttons that post to the watchdog's
    interactions route with `action_id` approve/deny and the approval id as `value`.

    The risk is shown once: the plan headline carries it (`[risk medium]`, `Plan.headline`). "Why" shows
    only what the diagnosis does not already say (`_not_in`). Under an approval rule, "Needs" says who
    may approve and how (`approval_rule_text`), in the fallback text too.
    """
    why = _not_in(message.rationale, message.diagnosis_summary)
    rule = message.approval_rule
    needs = approval_rule_text(rule, interactive=interactive) if rule is not None else ""
    page = f" (<{mrkdwn(message.page_url)}|approval page>)" if interactive else ""
    actions = "\n".join(f"• {mrkdwn(a)}" for a in message.actions) or "• (no actions)"
    text = (
        f"gl-watchdog: approval needed for incident {message.incident_id} "
        f"(execution {message.execution_id}): {message.plan_headline}. "
        + (f"Needs {needs}. " if needs else "")
        + f"Approve: {message.approve_url} Deny: {message.deny_url}"
    )
    approve, deny = (None, None) if interactive else (message.approve_url, message.deny_url)
    return {
        "text": text,
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": clip(f"Approval needed: incident {message.incident_id}", SLACK_HEADER_MAX),
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(
                        f"*Execution* `{mrkdwn(message.execution_id)}`\n"
                        f"*Plan* {mrkdwn(message.plan_headline)}\n"
                        + (f"*Needs* {mrkdwn(needs)}{page}\n" if needs else "")
                        + f"*Actions*\n{actions}\n*Expires* {message.expires_at} · "
                        f"or `gl-watchdog approve|deny {mrkdwn(message.approval_id)}`\n"
                        f"*Diagnosis* {mrkdwn(message.diagnosis_summary)}"
                        + (f"\n*Why* {mrkdwn(why)}" if why else ""),
                        SLACK_SECTION_MAX,
                    ),
                },
            },
            *links_block(message.links, message.alert_summary),
            {
                "type": "actions",
                "elements": [
                    _button("Approve", "primary", url=approve, action="approve", value=message.approval_id),
                    _button("Deny", "danger", url=deny, action="deny", value=message.approval_id),
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
    body = f"*Reason* {mrkdwn(_not_in(message.reason, message.diagnosis_summary) or message.reason)}"
    if message.plan_headline:
        body += f"\n*Plan* {mrkdwn(message.plan_headline)}"
    if message.diagnosis_summary:
        body += f"\n*Diagnosis* {mrkdwn(message.diagnosis_summary)}"
    return {
        "text": text,
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": clip(f"Escalated: incident {message.incident_id}", SLACK_HEADER_MAX),
                },
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": clip(body, SLACK_SECTION_MAX)}},
            *links_block(message.links, message.alert_summary),
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
