"""On PostgreSQL, a batch of new alert episodes recorded and their incidents opened in one statement.

Where it sits: `watchdog.intake_batch.record_new_episodes` calls `record_and_open()` on PostgreSQL
(SQLite keeps its statement per step: its round trips are calls into a thread, not to a server). One
statement of data-modifying CTEs writes what `Tx.insert_deliveries`, `Tx.insert_incidents` and
`Tx.add_audits` write in three: the episodes (`ON CONFLICT DO NOTHING`: one recorded before is left
out), an incident for each episode inserted (`ON CONFLICT DO NOTHING`: an execution with an open
incident is left out), and an `incident_opened` audit entry for each incident inserted, in the batch's
order. The batch goes in as one array per column (`unnest`), so the statement's text is the same for
every batch size and asyncpg prepares it once per connection.

Linking the episodes to their incidents stays a statement of its own (`Tx.link_deliveries`): the
sub-statements of one statement do not see each other's rows, so an UPDATE there would miss them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from gl_common.sqltypes import UTCDateTime
from watchdog.migrations import alert_deliveries, audit_log, incidents
from watchdog.records import AlertDelivery, Incident
from watchdog.store import Tx

# The batch's columns: name -> the type of one element (JSON goes in as text, cast to jsonb).
_COLUMNS: dict[str, Any] = {
    "fingerprint": sa.String,
    "starts_at": UTCDateTime,
    "alertname": sa.String,
    "execution_id": sa.String,
    "status": sa.String,
    "labels_digest": sa.String,
    "dag_id": sa.String,
    "source": sa.String,
    "detection_source": sa.String,
    "alert_links": sa.Text,
    "audit_data": sa.Text,
}
_DELIVERY_COLUMNS = ("fingerprint", "starts_at", "alertname", "execution_id", "status", "labels_digest")
_INCIDENT_COLUMNS = ("execution_id", "dag_id", "source", "detection_source")


@dataclass(frozen=True)
class NewEpisode:
    """One episode of the batch: its delivery row's columns, its incident's, its audit entry's data."""

    delivery: dict[str, Any]  # Tx.insert_delivery's columns
    incident: dict[str, Any]  # Tx.insert_incident's columns, and alert_links
    audit_data: dict[str, Any]


def _batch_values(episodes: list[NewEpisode]) -> dict[str, list[Any]]:
    """The batch's parameters: one array per column, one element per episode."""
    values: dict[str, list[Any]] = {f"batch_{name}": [] for name in _COLUMNS}
    for episode in episodes:
        for name in _DELIVERY_COLUMNS:
            values[f"batch_{name}"].append(episode.delivery[name])
        for name in _INCIDENT_COLUMNS[1:]:
            values[f"batch_{name}"].append(episode.incident[name])
        links = episode.incident.get("alert_links")
        values["batch_alert_links"].append(None if links is None else json.dumps(links))
        values["batch_audit_data"].append(json.dumps(episode.audit_data))
    return values


def _batch() -> Any:
    """The batch as a table: one row per episode, with its place in the batch (`ordinal`)."""
    arrays = [sa.bindparam(f"batch_{name}", type_=pg.ARRAY(kind)) for name, kind in _COLUMNS.items()]
    columns = [sa.column(name, kind) for name, kind in _COLUMNS.items()]
    return (
        sa.func.unnest(*arrays).table_valued(*columns, with_ordinality="ordinal").render_derived(name="batch")
    )


def _new_deliveries(batch: Any, received: Any) -> Any:
    """The episodes inserted (`Tx.insert_deliveries`), as a CTE."""
    columns = [*_DELIVERY_COLUMNS, "received_at", "last_received_at", "resolved_at", "repeats"]
    resolved_at = sa.case((batch.c.status == "resolved", received), else_=sa.null())
    rows = sa.select(
        *(batch.c[name] for name in _DELIVERY_COLUMNS), received, received, resolved_at, sa.literal(0)
    )
    stmt = pg.insert(alert_deliveries).from_select(columns, rows.order_by(batch.c.ordinal))
    return stmt.on_conflict_do_nothing().returning(*alert_deliveries.c).cte("new_deliveries")


def _new_incidents(batch: Any, new_deliveries: Any, opened: Any) -> Any:
    """An incident for each episode inserted (`Tx.insert_incidents`), as a CTE."""
    columns = [*_INCIDENT_COLUMNS, "alert_links", "status", "opened_at", "updated_at"]
    inserted = sa.and_(
        new_deliveries.c.fingerprint == batch.c.fingerprint, new_deliveries.c.starts_at == batch.c.starts_at
    )
    rows = sa.select(
        *(batch.c[name] for name in _INCIDENT_COLUMNS),
        sa.cast(batch.c.alert_links, pg.JSONB),
        sa.literal("open"),
        opened,
        opened,
    ).select_from(batch.join(new_deliveries, inserted))
    stmt = pg.insert(incidents).from_select(columns, rows.order_by(batch.c.ordinal))
    return stmt.on_conflict_do_nothing().returning(*incidents.c).cte("new_incidents")


def _new_audits(batch: Any, new_incidents: Any, audited: Any) -> Any:
    """The `incident_opened` entry of each incident inserted (`Tx.add_audits`), as a CTE."""
    columns = ["incident_id", "at", "kind", "phase", "actor", "data"]
    rows = sa.select(
        new_incidents.c.id,
        audited,
        sa.literal("incident_opened"),
        sa.literal("after"),
        sa.bindparam("actor", type_=sa.String),
        sa.cast(batch.c.audit_data, pg.JSONB),
    ).select_from(new_incidents.join(batch, batch.c.execution_id == new_incidents.c.execution_id))
    stmt = audit_log.insert().from_select(columns, rows.order_by(batch.c.ordinal))
    return stmt.returning(audit_log.c.id).cte("new_audits")


def _statement() -> Any:
    """The one statement: each episode inserted, with its incident's columns (NULL: none opened). Its
    parameters: the batch's arrays (`_batch_values`), the three times `at_<i>` and the `actor`."""
    received, opened, audited = (sa.bindparam(f"at_{i}", type_=UTCDateTime) for i in range(3))
    batch = _batch()
    new_deliveries = _new_deliveries(batch, received)
    new_incidents = _new_incidents(batch, new_deliveries, opened)
    same_execution = new_incidents.c.execution_id == new_deliveries.c.execution_id
    return (
        sa.select(
            *(column.label(f"d_{column.name}") for column in new_deliveries.c),
            *(column.label(f"i_{column.name}") for column in new_incidents.c),
        )
        .select_from(new_deliveries.outerjoin(new_incidents, same_execution))
        .add_cte(_new_audits(batch, new_incidents, audited))
    )


# Built once: SQLAlchemy finds its compiled form by the statement's cache key, memoized on the object,
# so a batch costs neither building the statement again nor computing its key.
_RECORD_AND_OPEN: Final = _statement()


# The statement's columns: an episode's (`d_<name>`), then its incident's (`i_<name>`).
_DELIVERY_NAMES: Final = tuple(column.name for column in alert_deliveries.c)
_INCIDENT_NAMES: Final = tuple(column.name for column in incidents.c)


def _split(row: sa.Row[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row of the statement as the episode's columns and its incident's."""
    values = tuple(row)
    episode = dict(zip(_DELIVERY_NAMES, values[: len(_DELIVERY_NAMES)], strict=True))
    incident = dict(zip(_INCIDENT_NAMES, values[len(_DELIVERY_NAMES) :], strict=True))
    return episode, incident


async def record_and_open(
    tx: Tx, episodes: list[NewEpisode], *, actor: str
) -> list[tuple[AlertDelivery, Incident | None]]:
    """Record the episodes, open their incidents and audit each opening, in one statement (see the
    module docstring); each episode inserted, with its new incident (None: its execution has an open
    incident already), in no particular order."""
    stamps = {f"at_{i}": tx.clock.now() for i in range(3)}  # as the three statements would take them
    params = {**_batch_values(episodes), **stamps, "actor": actor}
    result = await tx.conn.execute(_RECORD_AND_OPEN, params)
    recorded = []
    for row in result:
        episode, incident = _split(row)
        recorded.append(
            (
                AlertDelivery.model_validate(episode),
                None if incident["id"] is None else Incident.model_validate(incident),
            )
        )
    return recorded
