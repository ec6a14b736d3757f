"""Where an incident's humans look: its runbook, Grafana dashboard, trace, provenance and alert source.

Where it sits: the intake keeps what an alert says of itself (`alert_links`: its `runbook_url`,
`summary` and `description` annotations and its `generatorURL`) on the incident it opens
(`incidents.alert_links`, migration 5); `links()` turns an incident and the settings (`LinkSettings`)
into the links that every notification (`watchdog.notify_router` adds them to the Slack and JSON
messages), the approval page (`watchdog.web`) and the console (`watchdog.console.views`) show.

    runbook      the alert's runbook_url, else the setting `runbook_url`
    grafana      the setting `grafana_url` with the execution's variables and the incident's window
    trace        the setting `trace_url_template` (Tempo/Jaeger) filled with the execution, else the
                 orchestrator's trace of the run
    provenance   the orchestrator's provenance of the run
    alert        the alert's generatorURL (the Prometheus expression that fired)

Only http(s) URLs are ever linked: an annotation holding `javascript:` or anything else is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import quote, urlencode, urlsplit

from gl_common.clock import Clock
from watchdog.incidents import IncidentService
from watchdog.records import Incident
from watchdog.settings import WatchdogSettings

ORCHESTRATOR_API: Final = "/api/v1/orchestrator"
GRAFANA_LEAD: Final = timedelta(minutes=15)  # the Grafana window starts this long before the incident
MAX_URL: Final = 1024
MAX_TEXT: Final = 1000  # an annotation's summary or description, as kept
TEXT_ANNOTATIONS: Final = ("summary", "description")
LINK_TITLES: Final = {
    "runbook": "Runbook",
    "grafana": "Grafana",
    "trace": "Trace",
    "provenance": "Provenance",
    "alert": "Alert source",
}  # as shown


@dataclass(frozen=True)
class LinkSettings:
    """Where the links point (from `WatchdogSettings`)."""

    orchestrator_url: str
    grafana_url: str | None
    runbook_url: str
    trace_url_template: str | None = None  # `{execution_id}`, `{dag_id}` are filled in (URL-quoted)

    @classmethod
    def of(cls, settings: WatchdogSettings) -> LinkSettings:
        """The link settings of the watchdog's settings (the orchestrator as a browser reaches it)."""
        return cls(
            orchestrator_url=settings.orchestrator_public_url or settings.orchestrator_url,
            grafana_url=settings.grafana_url,
            runbook_url=settings.runbook_url,
            trace_url_template=settings.trace_url_template,
        )


@dataclass(frozen=True)
class Links:
    """An incident's links (None: not known) and what its alert said."""

    runbook: str
    trace: str
    provenance: str
    grafana: str | None = None
    alert: str | None = None
    summary: str = ""
    description: str = ""

    def urls(self) -> dict[str, str]:
        """The links by name, those known only, in the order they are shown."""
        named = {
            "runbook": self.runbook,
            "grafana": self.grafana,
            "trace": self.trace,
            "provenance": self.provenance,
            "alert": self.alert,
        }
        return {name: url for name, url in named.items() if url}


def web_url(value: str | None) -> str | None:
    """`value` when it is an http(s) URL of a sane length, else None."""
    if not value or len(value) > MAX_URL or not value.isprintable():
        return None
    parts = urlsplit(value)
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def alert_links(annotations: Mapping[str, str], generator_url: str) -> dict[str, str]:
    """What an alert says of itself, as the incident keeps it (empty when it says nothing usable)."""
    kept: dict[str, str] = {}
    runbook, source = web_url(annotations.get("runbook_url")), web_url(generator_url)
    if runbook:
        kept["runbook_url"] = runbook
    if source:
        kept["generator_url"] = source
    for name in TEXT_ANNOTATIONS:
        text = " ".join(annotations.get(name, "").split())
        if text:
            kept[name] = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    return kept


def links(incident: Incident, settings: LinkSettings, *, now: datetime) -> Links:
    """The incident's links (see the module docstring)."""
    said = incident.alert_links or {}
    execution = quote(incident.execution_id, safe="")
    base = f"{settings.orchestrator_url.rstrip('/')}{ORCHESTRATOR_API}/executions/{execution}"
    return Links(
        runbook=web_url(said.get("runbook_url")) or settings.runbook_url,
        trace=_trace(incident, settings.trace_url_template) or f"{base}/trace",
        provenance=f"{base}/provenance",
        grafana=grafana_link(incident, settings.grafana_url, now=now),
        alert=web_url(said.get("generator_url")),
        summary=said.get("summary", ""),
        description=said.get("description", ""),
    )


def _trace(incident: Incident, template: str | None) -> str | None:
    if not template:
        return None
    return template.format(
        execution_id=quote(incident.execution_id, safe=""), dag_id=quote(incident.dag_id or "", safe="")
    )


def grafana_link(incident: Incident, dashboard: str | None, *, now: datetime) -> str | None:
    """The dashboard with the execution's variables and the incident's time window (ms)."""
    if not dashboard:
        return None
    start = incident.opened_at - GRAFANA_LEAD
    end = incident.closed_at or now
    variables = {"var-execution_id": incident.execution_id, "from": _ms(start), "to": _ms(end)}
    if incident.dag_id:
        variables["var-dag_id"] = incident.dag_id
    separator = "&" if "?" in dashboard else "?"
    return f"{dashboard}{separator}{urlencode(variables)}"


def _ms(at: datetime) -> str:
    return str(int(at.timestamp() * 1000))


class IncidentLinks:
    """The links of an incident by its id (the notifier's and the approval page's view)."""

    def __init__(self, incidents: IncidentService, settings: LinkSettings, clock: Clock) -> None:
        self.incidents = incidents
        self.settings = settings
        self.clock = clock

    async def of(self, incident_id: int) -> Links:
        """The incident's links; IncidentNotFound, or the store's error, when it cannot be read."""
        incident = await self.incidents.get(incident_id)
        return links(incident, self.settings, now=self.clock.now())
