"""New firing alerts of a batch of deliveries recorded, and their incidents opened, in a few statements.

Where it sits: `watchdog.intake.AlertIntake` calls `record_new_episodes()` first in each intake
transaction (a batch of deliveries, `watchdog.episodes.GroupCommit`) and applies every alert it
does not settle one by one, as before. It settles the common case of distinct alerts, in a burst or
alone: a firing alert of a new episode for an execution without an open incident (one such alert
alone costs 4 statements here, 2 on PostgreSQL, where one by one takes 5). On PostgreSQL their
episodes are recorded, their incidents opened and the `incident_opened` audit entries written in one
statement (`watchdog.store_episodes`), and the episodes linked to their incidents in a second
(executemany): two round trips for the batch. On SQLite the first is three INSERTs of many rows
(statements compiled once, `watchdog.store`). Either way, the same rows and audit entries as
`incidents.open_or_join_in` writes for one alert.

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
from watchdog.store_episodes import NewEpisode, record_and_open
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


def _episode(alert: AmAlert, receiver: str) -> NewEpisode:
    """What one new firing alert writes: its episode, its incident and its `incident_opened` entry."""
    execution_id = alert.labels["execution_id"]
    return NewEpisode(
        delivery={
            "fingerprint": alert.episode_key,
            "starts_at": alert.startsAt,
            "alertname": alert.alertname,
            "execution_id": execution_id,
            "status": alert.status,
            "labels_digest": alert.labels_digest,
        },
        incident={
            "execution_id": execution_id,
            "dag_id": alert.labels.get("dag_id"),
            "source": SOURCE,
            "detection_source": DETECTION_SOURCE,
            "alert_links": alert_links(alert.annotations, alert.generatorURL) or None,
        },
        audit_data={
            "execution_id": execution_id,
            "source": SOURCE,
            "detection_source": DETECTION_SOURCE,
            "fingerprint": alert.episode_key,
            "starts_at": alert.startsAt.isoformat(),
            "receiver": receiver,
        },
    )


async def _record_and_open_stepwise(
    tx: Tx, episodes: list[NewEpisode], *, actor: str
) -> list[tuple[AlertDelivery, Incident | None]]:
    """`store_episodes.record_and_open` in three statements (SQLite)."""
    rows = await tx.insert_deliveries([episode.delivery for episode in episodes])
    recorded = {row.fingerprint: row for row in rows}
    new = [episode for episode in episodes if episode.delivery["fingerprint"] in recorded]
    if not new:
        return []
    opened = await tx.insert_incidents([episode.incident for episode in new])
    incidents = {incident.execution_id: incident for incident in opened}
    await tx.add_audits(
        [
            {
                "incident_id": incidents[episode.incident["execution_id"]].id,
                "kind": "incident_opened",
                "actor": actor,
                "data": episode.audit_data,
            }
            for episode in new
            if episode.incident["execution_id"] in incidents
        ]
    )
    return [
        (recorded[episode.delivery["fingerprint"]], incidents.get(episode.incident["execution_id"]))
        for episode in new
    ]


async def record_new_episodes(tx: Tx, alerts: list[tuple[AmAlert, str]], *, actor: str) -> NewEpisodes:
    """Record the batch's new firing episodes and open their incidents (see the module docstring);
    `alerts` are (alert, the receiver of its delivery)."""
    settled = NewEpisodes()
    candidates = _candidates(alerts)
    if not candidates:
        return settled
    episodes = [_episode(alert, receiver) for alert, receiver in candidates]
    if tx.conn.dialect.name == "postgresql":
        written = await record_and_open(tx, episodes, actor=actor)
    else:
        written = await _record_and_open_stepwise(tx, episodes, actor=actor)
    starts = {alert.episode_key: alert.startsAt for alert, _ in candidates}
    links = {}
    for delivery, incident in written:
        key = (delivery.fingerprint, starts[delivery.fingerprint])
        if incident is None:
            settled.recorded[key] = delivery
            continue
        links[delivery.id] = incident.id
        settled.opened[key] = (delivery.model_copy(update={"incident_id": incident.id}), incident)
    await tx.link_deliveries(links)
    return settled
