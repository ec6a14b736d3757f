"""Paging services as escalation targets: PagerDuty Events API v2 and Opsgenie's Alert API.

Built by `watchdog.notify_router.notifier_from_settings` for the targets `escalation_targets` names,
called by its `RoutedNotifier`: `trigger()` when an incident is escalated (a human must take over),
`acknowledge()` when a named person takes the run over, `resolve()` when the problem is over (its
alert resolved, or another incident of the run resolved: `watchdog.notify_router.PageResolver`).
One page per incident: its dedup key (PagerDuty) or alias (Opsgenie) is
`dedup_key(incident_id, execution_id)`, so a repeated trigger updates the open page instead of paging
twice, and the acknowledge and the resolve reach exactly that page.

    PagerDuty  POST {pagerduty_url}                 {"routing_key", "dedup_key", "payload": {...},
                                                     "event_action": "trigger"|"acknowledge"|"resolve"}
                                                                                            → 202
    Opsgenie   POST {opsgenie_url}/v2/alerts        {"message", "alias", "description", "priority", ...}
               POST {opsgenie_url}/v2/alerts/{alias}/acknowledge?identifierType=alias       → 202
               POST {opsgenie_url}/v2/alerts/{alias}/close?identifierType=alias             → 202
               with `Authorization: GenieKey <key>`

Every call goes through `watchdog.notifier.post_json` (a timeout, failures returned as a
`NotifyResult`, never raised). The routing key and the API key are never part of a result or a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from watchdog.notifier import EscalationMessage, NotifyResult, post_json

SOURCE: Final = "gl-watchdog"
# Documented limits of the two APIs: PagerDuty's summary, Opsgenie's message and description.
PAGERDUTY_SUMMARY_MAX: Final = 1024
OPSGENIE_MESSAGE_MAX: Final = 130
OPSGENIE_DESCRIPTION_MAX: Final = 15000


@dataclass(frozen=True)
class ResolvedMessage:
    """A page's follow-up: the problem it paged for is over (resolve), or someone took it
    (acknowledge); `reason` says which and who."""

    incident_id: int
    execution_id: str
    reason: str
    rule: str | None = None  # the policy rule that planned the incident: the targets it was paged on


def dedup_key(incident_id: int, execution_id: str) -> str:
    """The one key of an incident's page on every paging service."""
    return f"gl-watchdog/incident/{incident_id}/{execution_id}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary(message: EscalationMessage) -> str:
    return (
        f"gl-watchdog escalated incident {message.incident_id} "
        f"(execution {message.execution_id}): {message.reason}"
    )


def _details(message: EscalationMessage) -> dict[str, str]:
    details = {
        "incident_id": str(message.incident_id),
        "execution_id": message.execution_id,
        "reason": message.reason,
        "plan": message.plan_headline,
        "diagnosis": message.diagnosis_summary,
    }
    return {key: value for key, value in details.items() if value}


class Pager(Protocol):
    """A paging service: opens a page for an escalated incident and resolves it."""

    @property
    def target(self) -> str:
        """The service's name in metrics and audit details."""
        ...

    async def trigger(self, message: EscalationMessage) -> NotifyResult:
        """Page for an escalated incident."""
        ...

    async def acknowledge(self, message: ResolvedMessage) -> NotifyResult:
        """Acknowledge the incident's page (someone took it)."""
        ...

    async def resolve(self, message: ResolvedMessage) -> NotifyResult:
        """Resolve the incident's page."""
        ...


@dataclass(frozen=True)
class PagerDutyPager:
    """PagerDuty Events API v2 (`trigger`, `acknowledge` and `resolve` with one dedup key per incident)."""

    routing_key: SecretStr
    url: str
    severity: str = "critical"
    timeout: float = 10.0
    transport: httpx.AsyncBaseTransport | None = None
    target: ClassVar[str] = "pagerduty"

    async def trigger(self, message: EscalationMessage) -> NotifyResult:
        return await self._send(
            "trigger",
            message.incident_id,
            message.execution_id,
            payload={
                "summary": _clip(_summary(message), PAGERDUTY_SUMMARY_MAX),
                "source": SOURCE,
                "severity": self.severity,
                "component": message.execution_id,
                "class": "escalation",
                "custom_details": _details(message),
            },
        )

    async def acknowledge(self, message: ResolvedMessage) -> NotifyResult:
        return await self._send("acknowledge", message.incident_id, message.execution_id)

    async def resolve(self, message: ResolvedMessage) -> NotifyResult:
        return await self._send("resolve", message.incident_id, message.execution_id)

    async def _send(
        self, action: str, incident_id: int, execution_id: str, payload: dict[str, Any] | None = None
    ) -> NotifyResult:
        body: dict[str, Any] = {
            "routing_key": self.routing_key.get_secret_value(),
            "event_action": action,
            "dedup_key": dedup_key(incident_id, execution_id),
            "client": SOURCE,
        }
        if payload is not None:
            body["payload"] = payload
        return await post_json(
            self.url, body, timeout_seconds=self.timeout, transport=self.transport, what=f"PagerDuty {action}"
        )


@dataclass(frozen=True)
class OpsgeniePager:
    """Opsgenie's Alert API (create with an alias per incident, acknowledge and close by that alias)."""

    api_key: SecretStr
    url: str  # https://api.opsgenie.com, or the EU instance
    priority: str = "P2"
    timeout: float = 10.0
    transport: httpx.AsyncBaseTransport | None = None
    target: ClassVar[str] = "opsgenie"

    async def trigger(self, message: EscalationMessage) -> NotifyResult:
        body = {
            "message": _clip(
                f"gl-watchdog: incident {message.incident_id} escalated ({message.execution_id})",
                OPSGENIE_MESSAGE_MAX,
            ),
            "alias": dedup_key(message.incident_id, message.execution_id),
            "description": _clip(_summary(message), OPSGENIE_DESCRIPTION_MAX),
            "details": _details(message),
            "entity": message.execution_id,
            "source": SOURCE,
            "priority": self.priority,
            "tags": [SOURCE, "escalation"],
        }
        return await self._post(f"{self.url.rstrip('/')}/v2/alerts", body, "Opsgenie create")

    async def acknowledge(self, message: ResolvedMessage) -> NotifyResult:
        return await self._follow_up("acknowledge", message)

    async def resolve(self, message: ResolvedMessage) -> NotifyResult:
        return await self._follow_up("close", message)

    async def _follow_up(self, action: str, message: ResolvedMessage) -> NotifyResult:
        """`acknowledge` or `close` the incident's alert, by its alias, with `message.reason` as note."""
        alias = quote(dedup_key(message.incident_id, message.execution_id), safe="")
        url = f"{self.url.rstrip('/')}/v2/alerts/{alias}/{action}?identifierType=alias"
        return await self._post(url, {"source": SOURCE, "note": message.reason}, f"Opsgenie {action}")

    async def _post(self, url: str, body: dict[str, Any], what: str) -> NotifyResult:
        headers = {"Authorization": f"GenieKey {self.api_key.get_secret_value()}"}
        return await post_json(
            url, body, timeout_seconds=self.timeout, transport=self.transport, headers=headers, what=what
        )
