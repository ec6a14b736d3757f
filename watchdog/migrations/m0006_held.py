"""Migration 6: what holds an incident, on its row. `incidents.held_kind` is `maintenance` when a
window holds it, else `silence` when a silence does, else `check_failure` (Alertmanager could not be
read under the `hold` policy; `held_of`); `incidents.held_by` is what holds it, as the API's
`suppressed_by` shows it. Both are written by the suppression gate in the transaction of its
`suppressed` audit entry and cleared with the next `plan` decision; NULL when the incident's last
decision was not a hold. The incident listing filters on them and the held gauge counts them without
reading the audit.

The incidents held when this migration runs are backfilled from their audit log: the last `plan` or
`suppressed` entry of each unfinished incident (few: finished ones are never held).

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, after version 5.
Released: never edited.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gl_common.migrations import AddColumn, Migration, Run
from watchdog.migrations.m0001_initial import JSON_TYPE


def _held_kind() -> sa.Column[str]:
    return sa.Column("held_kind", sa.String(16), nullable=True)


def _held_by() -> sa.Column[object]:
    return sa.Column("held_by", JSON_TYPE, nullable=True)


def held_of(data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(kind, what holds) of a `suppressed` audit entry's data: the windows and silences it names
    (kind `maintenance` when a window is among them, else `silence`), or the failed silence check."""
    covering = list(data.get("suppressed_by") or [])
    if covering:
        kinds = {str(item.get("kind")) for item in covering}
        return ("maintenance" if "maintenance" in kinds else "silence"), covering
    return "check_failure", [{"kind": "silence_check_failed", "error": data.get("check_error")}]


def _backfill(conn: Connection) -> None:
    """Set the new columns of the unfinished incidents whose last decision was a hold."""
    incidents = sa.table(
        "incidents",
        sa.column("id", sa.Integer),
        sa.column("status", sa.String),
        sa.column("held_kind", sa.String),
        sa.column("held_by", JSON_TYPE),
    )
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer),
        sa.column("incident_id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("data", JSON_TYPE),
    )
    unfinished = sa.select(incidents.c.id).where(
        incidents.c.status.not_in(("resolved", "escalated", "closed"))
    )
    decisions = conn.execute(
        sa.select(audit.c.incident_id, audit.c.kind, audit.c.data)
        .where(audit.c.incident_id.in_(unfinished), audit.c.kind.in_(("suppressed", "plan")))
        .order_by(audit.c.incident_id, audit.c.id)
    )
    last: dict[int, tuple[str, Any]] = {}
    for row in decisions:
        last[int(row[0])] = (str(row[1]), row[2])
    for incident_id, (kind, data) in last.items():
        if kind == "suppressed":
            held_kind, held_by = held_of(data if isinstance(data, dict) else {})
            conn.execute(
                sa.update(incidents)
                .where(incidents.c.id == incident_id)
                .values(held_kind=held_kind, held_by=held_by)
            )


MIGRATION = Migration(
    6,
    "incidents.held_kind/held_by: what holds an incident (silence, maintenance, check failure)",
    (
        AddColumn("incidents", _held_kind),
        AddColumn("incidents", _held_by),
        Run(_backfill),
    ),
)
