"""Grafana annotations of remediations: each remediation that acted, and how it ended, on the dashboards.

Called by the remediation state machine (`watchdog.remediation`) once a remediation that applied its
playbook is resolved or escalated; built from the settings by `watchdog.assembly` (off while
`grafana_api_url` is unset). One region annotation per remediation, from the incident's last
transition (into `remediating`, or `verifying` for a resumed one) to its close:

    POST {grafana_api_url}/api/annotations          Authorization: Bearer <service-account token>
    {"time": ms, "timeEnd": ms, "tags": ["gl-watchdog", "remediation", <playbook>, <outcome>,
     "execution:<id>", "dag:<id>"], "text": "<playbook> on <execution>: <outcome> (incident N)",
     "dashboardUID": <grafana_annotation_dashboard_uid>}       (without it: organisation-wide)

The shipped dashboards query the `gl-watchdog` tag. The call goes through `watchdog.notifier.post_json`
(a timeout, failures returned, never raised); a failure is logged, audited (`annotation_failed`) and
counted in `gl_watchdog_notifications_total{target="grafana",kind="annotation"}`, and never reaches
the remediation. The token is never part of a result, an audit entry or a log.
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
from watchdog.records import Incident
from watchdog.settings import WatchdogSettings
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

TARGET: Final = "grafana"
KIND: Final = "annotation"
TAGS: Final = ("gl-watchdog", "remediation")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def annotation_body(
    incident: Incident, playbook: str, outcome: str, ended_at: datetime, dashboard_uid: str | None = None
) -> dict[str, Any]:
    """The annotation of `incident`'s remediation by `playbook` that ended at `ended_at` as `outcome`."""
    tags = [*TAGS, playbook, outcome, f"execution:{incident.execution_id}"]
    if incident.dag_id:
        tags.append(f"dag:{incident.dag_id}")
    body: dict[str, Any] = {
        "time": _ms(min(incident.updated_at, ended_at)),
        "timeEnd": _ms(ended_at),
        "tags": tags,
        "text": f"{playbook} on {incident.execution_id}: {outcome} (incident {incident.id})",
    }
    if dashboard_uid:
        body["dashboardUID"] = dashboard_uid
    return body


@dataclass(frozen=True)
class RemediationAnnotations:
    """Posts one annotation per remediation that acted; reports, never raises, a failure."""

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
            await self._report(incident.id, result)
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
