"""The Slack bot: prompts posted with chat.postMessage and updated with chat.update on every change.

Where it sits: built by `watchdog.notify_router.notifier_from_settings` when `slack_bot_token` is set,
and then the chat notifier of the `RoutedNotifier` (prompts and escalations) in place of the
incoming webhook; the responder (`watchdog.responder`) calls `state_changed` after a decision and
when the remediation it started resolves. The interactions route that the buttons post to is
`watchdog.slack`.

    prompt      chat.postMessage to `slack_channel`, interactive approve/deny buttons; the message's
                channel and ts are stored with the approval (`approvals.slack_channel/slack_ts`)
    decision    chat.update: "Approved by slack:alice; acting" / "Denied by ..." (buttons gone)
    resolved    chat.update: "Resolved: ..."
    escalated   chat.postMessage of the escalation, and chat.update of the incident's prompts
                ("Escalated: approval ... expired ...": expiry and denial end there)

Slack's Web API (https://api.slack.com/methods/chat.postMessage, .../chat.update): a JSON POST with
`Authorization: Bearer <bot token>`, answered 200 with `{"ok": true, "channel", "ts"}` or
`{"ok": false, "error"}`. Every call runs under `timeout`; every failure (timeout, unreachable,
HTTP error, `ok: false`) is a `NotifyResult` with ok=False naming Slack's error, never raised, and
counted in `gl_watchdog_notifications_total{target="slack_bot"}` (updates here, prompts and
escalations by the router), once per delivery whatever its attempts. The token is never logged.

Slack's rate limit answers HTTP 429 with `Retry-After`: the call is sent again after that wait,
bounded by `watchdog.rate_limit` (twice at most, 30 s of waiting in all), the same rule as the
incoming-webhook notifier's; then the 429 is the call's failure, its detail saying why it was not
tried again.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Final

import httpx

from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import (
    SLACK_HEADER_MAX,
    EscalationMessage,
    NotifyResult,
    PromptMessage,
    clip,
    mrkdwn,
    slack_escalation,
    slack_prompt,
)
from watchdog.rate_limit import (
    RATE_LIMIT_RETRIES,
    RATE_LIMIT_WAIT_SECONDS,
    RateLimitRetry,
    Sleep,
    retry_after,
)
from watchdog.store import WatchdogStore

TARGET: Final = "slack_bot"


class SlackApi:
    """Two methods of Slack's Web API under a timeout, a 429 tried again after its Retry-After (see
    the module docstring); results, never exceptions. `sleep` waits (injected by tests)."""

    def __init__(
        self,
        token: str,
        base_url: str,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = RATE_LIMIT_RETRIES,
        max_wait_seconds: float = RATE_LIMIT_WAIT_SECONDS,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.transport = transport
        self.rate_limit = RateLimitRetry(retries, max_wait_seconds, sleep)

    async def call(self, method: str, body: dict[str, Any]) -> tuple[NotifyResult, dict[str, Any]]:
        """POST `body` to `method`; the result and Slack's answer (empty when there is none). A 429
        is sent again after its Retry-After while retries and wait are left."""
        (result, answer), gave_up = await self.rate_limit.call(lambda: self._post(method, body))
        if gave_up is not None:
            result = replace(result, detail=f"{result.detail} ({gave_up})")
        return result, answer

    async def _post(
        self, method: str, body: dict[str, Any]
    ) -> tuple[tuple[NotifyResult, dict[str, Any]], float | None]:
        """One POST: the result, Slack's answer, and the wait a 429 asks for (None: not rate limited)."""
        what = f"Slack {method}"
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self.transport) as client:
                response = await client.post(f"{self.base_url}/{method}", json=body, headers=headers)
        except httpx.TimeoutException:
            return (NotifyResult(False, False, f"{what} timed out after {self.timeout:g}s"), {}), None
        except httpx.HTTPError as exc:
            return (NotifyResult(False, False, f"{what} unreachable: {exc or type(exc).__name__}"), {}), None
        return _answered(what, response), retry_after(response)


def _answered(what: str, response: httpx.Response) -> tuple[NotifyResult, dict[str, Any]]:
    """The result of Slack's HTTP answer, and its JSON (empty when there is none)."""
    status = response.status_code
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return NotifyResult(False, False, f"{what} answered {status} without JSON", status), {}
    if status >= 400 or answer.get("ok") is not True:
        error = str(answer.get("error", "unknown error"))[:200]
        return NotifyResult(False, False, f"{what} answered {status}: {error}", status), answer
    return NotifyResult(True, True, f"{what} delivered", status), answer


class SlackBot:
    """The bot as the chat notifier (see the module docstring)."""

    def __init__(
        self,
        api: SlackApi,
        channel: str,
        store: WatchdogStore,
        metrics: WatchdogMetrics | None = None,
    ) -> None:
        self.api = api
        self.channel = channel
        self.store = store
        self.metrics = metrics

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        body = {"channel": self.channel, **slack_prompt(message, interactive=True)}
        result, answer = await self.api.call("chat.postMessage", body)
        if result.ok:
            async with self.store.transaction() as tx:
                await tx.update_approval(
                    message.approval_id,
                    slack_channel=str(answer.get("channel")),
                    slack_ts=str(answer.get("ts")),
                )
        return result

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        body = {"channel": self.channel, **slack_escalation(message)}
        posted, _ = await self.api.call("chat.postMessage", body)
        updated = await self.state_changed(message.incident_id, "Escalated", message.reason)
        if updated is None or updated.ok:
            return posted
        return NotifyResult(posted.ok and updated.ok, posted.sent, f"{posted.detail}; {updated.detail}")

    async def state_changed(self, incident_id: int, state: str, detail: str) -> NotifyResult | None:
        """Update every posted prompt of the incident to say `state: detail` (its buttons gone); None
        when the bot posted none."""
        async with self.store.read() as tx:
            approvals = await tx.list_approvals(incident_id=incident_id)
        posted = [a for a in approvals if a.slack_channel and a.slack_ts]
        if not posted:
            return None
        results = []
        for approval in posted:
            body = {
                "channel": approval.slack_channel,
                "ts": approval.slack_ts,
                **status_message(incident_id, approval.id, state, detail),
            }
            result, _ = await self.api.call("chat.update", body)
            if self.metrics is not None:  # prompts and escalations are counted by the router
                self.metrics.notified(TARGET, "update", result.ok)
            results.append(result)
        failed = [r for r in results if not r.ok]
        return failed[0] if failed else results[0]


def status_message(incident_id: int, approval_id: str, state: str, detail: str) -> dict[str, Any]:
    """What a prompt's message becomes after `state` (no buttons: nothing is left to decide there)."""
    headline = f"{state}: incident {incident_id}"
    return {
        "text": f"gl-watchdog: {headline}: {detail}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": clip(headline, SLACK_HEADER_MAX)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": clip(mrkdwn(detail), 3000)}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"approval `{mrkdwn(approval_id)}`"}],
            },
        ],
    }
