"""New firing alerts of a batch of deliveries recorded, and their incidents opened, in four statements.

Where it sits: `watchdog.intake.AlertIntake` calls `record_new_episodes()` first in each intake
transaction (a batch of deliveries, `watchdog.episodes.GroupCommit`) and applies every alert it
does not settle one by one, as before. It settles the common case of a burst of distinct alerts: a
firing alert of a new episode for an execution without an open incident. Their episodes are
recorded in one multi-row INSERT, their incidents opened in one, the `incident_opened` audit entries
written in one and the episodes linked to their incidents in one (executemany): four round trips for
the batch instead of four per alert, the same rows and audit entries as `incidents.open_or_join_in`
writes for one alert.

What it leaves to the one-by-one path: resolved alerts; an episode recorded before (a duplicate or a
conflict; the INSERT skips it); an alert whose fingerprint or execution id appears twice in the batch
(the order between them matters); and, once recorded, an episode whose execution has an open incident
already (`recorded`: the caller joins it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from watchdog.links import alert_links
from watchdog.records import AlertDelivery, Incident
from watchdog.store import Tx
from watchdog.webhook import AmAlert

SOURCE = "alert"
DETECTION_SOURCE = "prometheus"

EpisodeKey = tuple[str, datetime]


@dataclass
class NewEpisodes:
    """What `record_new_episodes` settled, by episode (fingerprint, startsAt)."""

    # recorded, incident opened and linked: (the episode's row, its new incident)
    opened: dict[EpisodeKey, tuple[AlertDelivery, Incident]] = field(default_factory=dict)
    # recorded, not linked: its execution has an open incident, to join
    recorded: dict[EpisodeKey, AlertDelivery] = field(default_factory=dict)


def _candidates(alerts: list[tuple[AmAlert, str]]) -> list[tuple[AmAlert, str]]:
    """The firing alerts whose fingerprint and execution id appear once in the batch."""
    firing = [(alert, receiver) for alert, receiver in alerts if alert.status == "firing"]
    fingerprints = Counter(alert.episode_key for alert, _ in firing)
    executions = Counter(alert.labels["execution_id"] for alert, _ in firing)
    return [
        (alert, receiver)
        for alert, receiver in firing
        if fingerprints[alert.episode_key] == 1 and executions[alert.labels["execution_id"]] == 1
    ]


async def record_new_episodes(tx: Tx, alerts: list[tuple[AmAlert, str]], *, actor: str) -> NewEpisodes:
    """Record the batch's new firing episodes and open their incidents (see the module docstring);
    `alerts` are (alert, the receiver of its delivery)."""
    settled = NewEpisodes()
    candidates = _candidates(alerts)
    if len(candidates) < 2:  # one alert: the one-by-one path costs the same
        return settled
    rows = await tx.insert_deliveries(
        [
            {
                "fingerprint": alert.episode_key,
                "starts_at": alert.startsAt,
                "alertname": alert.alertname,
                "execution_id": alert.labels["execution_id"],
                "status": alert.status,
                "labels_digest": alert.labels_digest,
            }
            for alert, _ in candidates
        ]
    )
    recorded = {row.fingerprint: row for row in rows}
    new = [(alert, receiver) for alert, receiver in candidates if alert.episode_key in recorded]
    if not new:
        return settled
    opened = await tx.insert_incidents(
        [
            {
                "execution_id": alert.labels["execution_id"],
                "dag_id": alert.labels.get("dag_id"),
                "source": SOURCE,
                "detection_source": DETECTION_SOURCE,
                "alert_links": alert_links(alert.annotations, alert.generatorURL) or None,
            }
            for alert, _ in new
        ]
    )
    incidents = {incident.execution_id: incident for incident in opened}
    audits, links = [], {}
    for alert, receiver in new:
        delivery = recorded[alert.episode_key]
        incident = incidents.get(alert.labels["execution_id"])
        if incident is None:
            settled.recorded[(alert.episode_key, alert.startsAt)] = delivery
            continue
        links[delivery.id] = incident.id
        linked = delivery.model_copy(update={"incident_id": incident.id})
        settled.opened[(alert.episode_key, alert.startsAt)] = (linked, incident)
        audits.append(
            {
                "incident_id": incident.id,
                "kind": "incident_opened",
                "actor": actor,
                "data": {
                    "execution_id": incident.execution_id,
                    "source": SOURCE,
                    "detection_source": DETECTION_SOURCE,
                    "fingerprint": alert.episode_key,
                    "starts_at": alert.startsAt.isoformat(),
                    "receiver": receiver,
                },
            }
        )
    await tx.add_audits(audits)
    await tx.link_deliveries(links)
    return settled
