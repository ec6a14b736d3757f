"""Grafana annotations of remediations and their approval prompts, on the dashboards.

Called by the remediation state machine (`watchdog.remediation`) once a remediation that applied its
playbook is resolved or escalated, and by the responder (`watchdog.responder`) when it posts an
approval prompt and when the prompt is decided (approved, denied, expired); built from the settings
by `watchdog.assembly` (off while `grafana_api_url` is unset). One region annotation per remediation,
from the incident's last transition (into `remediating`, or `verifying` for a resumed one) to its
close:

    POST {grafana_api_url}/api/annotations          Authorization: Bearer <service-account token>
    {"time": ms, "timeEnd": ms, "tags": ["gl-watchdog", "remediation", <playbook>, <outcome>,
     "execution:<id>", "dag:<id>"], "text": "<playbook> on <execution>: <outcome> (incident N)",
     "dashboardUID": <grafana_annotation_dashboard_uid>}       (without it: organisation-wide)

and one point annotation per prompt posted and per decision:

    {"time": ms, "tags": ["gl-watchdog", "approval", <playbook>, "prompted"|"approved"|"denied"|"expired",
     "execution:<id>", "dag:<id>"], "text": "approval <id> of <playbook> on <execution>: denied by alice
     (incident N)", "dashboardUID": ...}

The shipped dashboards query the `gl-watchdog` tag with `remediation`, and with `approval`. The call
goes through `watchdog.notifier.post_json` (a timeout, failures returned, never raised); a failure is
logged, audited (`annotation_failed`) and counted in
`gl_watchdog_notifications_total{target="grafana",kind="annotation"}`, and never reaches the
remediation or the prompt. The token is never part of a result, an audit entry or a log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
from pydantic import SecretStr

from gl_common.clock import Clock
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import NotifyResult, post_json
from watchdog.records import Approval, Incident
from watchdog.settings import WatchdogSettings
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

TARGET: Final = "grafana"
KIND: Final = "annotation"
TAGS: Final = ("gl-watchdog", "remediation")
APPROVAL_TAGS: Final = ("gl-watchdog", "approval")
PROMPTED: Final = "prompted"  # the state tag of a posted prompt (a decision's is the approval's state)
DECIDED_BY_A_PERSON: Final = frozenset({"approved", "denied"})  # "expired" is the watchdog's


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _tagged(
    tags: tuple[str, ...], incident: Incident, playbook: str, state: str, dashboard_uid: str | None
) -> dict[str, Any]:
    """The tags and dashboard shared by every annotation of `incident`: `tags`, the playbook, the
    state, the run and (when known) its DAG."""
    body: dict[str, Any] = {"tags": [*tags, playbook, state, f"execution:{incident.execution_id}"]}
    if incident.dag_id:
        body["tags"].append(f"dag:{incident.dag_id}")
    if dashboard_uid:
        body["dashboardUID"] = dashboard_uid
    return body


def annotation_body(
    incident: Incident, playbook: str, outcome: str, ended_at: datetime, dashboard_uid: str | None = None
) -> dict[str, Any]:
    """The annotation of `incident`'s remediation by `playbook` that ended at `ended_at` as `outcome`."""
    return {
        "time": _ms(min(incident.updated_at, ended_at)),
        "timeEnd": _ms(ended_at),
        **_tagged(TAGS, incident, playbook, outcome, dashboard_uid),
        "text": f"{playbook} on {incident.execution_id}: {outcome} (incident {incident.id})",
    }


def approval_body(
    incident: Incident, approval: Approval, state: str, at: datetime, dashboard_uid: str | None = None
) -> dict[str, Any]:
    """The point annotation of `approval` (a prompt of `incident`) at `at`: posted (`PROMPTED`) or
    decided (its state: approved, denied, expired), with the person who approved or denied it."""
    playbook = approval.plan.playbook or "no playbook"  # a prompt always asks for one
    by = f" by {approval.decided_by}" if state in DECIDED_BY_A_PERSON and approval.decided_by else ""
    said = f"{state}{by} (incident {incident.id})"
    text = f"approval {approval.id} of {playbook} on {incident.execution_id}: {said}"
    return {"time": _ms(at), **_tagged(APPROVAL_TAGS, incident, playbook, state, dashboard_uid), "text": text}


@dataclass(frozen=True)
class RemediationAnnotations:
    """Posts one annotation per remediation that acted and per approval prompt posted or decided;
    reports, never raises, a failure."""

    api_url: str
    token: SecretStr
    incidents: IncidentService
    clock: Clock
    metrics: WatchdogMetrics | None = None
    dashboard_uid: str | None = None
    timeout: float = 5.0
    transport: httpx.AsyncBaseTransport | None = None

    async def remediated(self, incident: Incident, playbook: str, outcome: str) -> NotifyResult:
        """Annotate `incident`'s remediation by `playbook`, ended now as `outcome` (resolved, escalated)."""
        body = annotation_body(incident, playbook, outcome, self.clock.now(), self.dashboard_uid)
        return await self._post(incident.id, body)

    async def approval(self, incident: Incident, approval: Approval, state: str) -> NotifyResult:
        """Annotate `approval` of `incident` as posted (`PROMPTED`, at its creation) or decided (its
        state, at its decision)."""
        at = approval.created_at if state == PROMPTED else (approval.decided_at or self.clock.now())
        return await self._post(incident.id, approval_body(incident, approval, state, at, self.dashboard_uid))

    async def _post(self, incident_id: int, body: dict[str, Any]) -> NotifyResult:
        """Post one annotation of `incident_id`; counted, and a failure audited."""
        result = await post_json(
            f"{self.api_url.rstrip('/')}/api/annotations",
            body,
            timeout_seconds=self.timeout,
            transport=self.transport,
            headers={"Authorization": f"Bearer {self.token.get_secret_value()}"},
            what="Grafana annotation",
        )
        if self.metrics is not None:
            self.metrics.notified(TARGET, KIND, result.ok)
        if not result.ok:
            await self._report(incident_id, result)
        return result

    async def _report(self, incident_id: int, result: NotifyResult) -> None:
        log.warning("incident %s: %s", incident_id, result.detail)
        try:
            await self.incidents.record(incident_id, "annotation_failed", data=result.as_dict())
        except WatchdogError as exc:
            log.error("incident %s: the failed annotation could not be audited: %s", incident_id, exc)


def annotations_from_settings(
    settings: WatchdogSettings,
    incidents: IncidentService,
    clock: Clock,
    metrics: WatchdogMetrics | None = None,
) -> RemediationAnnotations | None:
    """The annotations the settings ask for (None while `grafana_api_url` is unset)."""
    if settings.grafana_api_url is None or settings.grafana_api_token is None:
        return None
    return RemediationAnnotations(
        api_url=settings.grafana_api_url,
        token=settings.grafana_api_token,
        incidents=incidents,
        clock=clock,
        metrics=metrics,
        dashboard_uid=settings.grafana_annotation_dashboard_uid,
        timeout=settings.grafana_timeout_seconds,
    )
