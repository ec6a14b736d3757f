"""Migration 7: whether an escalated incident's page is open, on its row. `incidents.page_open` is
true from the escalation delivered (`escalation_notified`, sent) until a resolve the pagers took
(`page_resolved`, ok): `watchdog.incidents.IncidentService.record` sets it in the transaction of
that audit entry (`page_change`), so the row and the audit log say the same (a failed resolve leaves
it open). The sweep's page resolver (`watchdog.notify_router.PageResolver.resolve_ended_runs`) reads
only these rows, through `ix_incidents_page_open` (page_open, id: newest first by keyset), instead
of every escalated incident and its audit.

The escalated incidents when this migration runs are backfilled from their audit log: the page
entries of each, oldest first, with the same rule.

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, after version 6.
Released: never edited.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gl_common.migrations import AddColumn, CreateIndex, Migration, Run
from watchdog.migrations.m0001_initial import JSON_TYPE

# The audit entries that open or close a page (their "after" phase).
PAGE_ENTRIES: Final = ("escalation_notified", "page_resolved")


def _page_open() -> sa.Column[bool]:
    return sa.Column("page_open", sa.Boolean, nullable=False, server_default=sa.false())


def page_change(kind: str, phase: str, data: Mapping[str, Any]) -> bool | None:
    """What an audit entry does to its incident's page: True opens it (an escalation delivered),
    False closes it (a resolve the pagers took), None leaves it as it was (anything else, a failed
    resolve included)."""
    if phase != "after":
        return None
    if kind == "escalation_notified" and data.get("sent"):
        return True
    if kind == "page_resolved" and data.get("ok"):
        return False
    return None


def _backfill(conn: Connection) -> None:
    """Mark the escalated incidents whose page entries leave their page open."""
    incidents = sa.table(
        "incidents",
        sa.column("id", sa.Integer),
        sa.column("status", sa.String),
        sa.column("page_open", sa.Boolean),
    )
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer),
        sa.column("incident_id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("phase", sa.String),
        sa.column("data", JSON_TYPE),
    )
    escalated = sa.select(incidents.c.id).where(incidents.c.status == "escalated")
    entries = conn.execute(
        sa.select(audit.c.incident_id, audit.c.kind, audit.c.phase, audit.c.data)
        .where(audit.c.incident_id.in_(escalated), audit.c.kind.in_(PAGE_ENTRIES))
        .order_by(audit.c.incident_id, audit.c.id)
    )
    page_open: dict[int, bool] = {}
    for row in entries:
        change = page_change(str(row[1]), str(row[2]), row[3] if isinstance(row[3], dict) else {})
        if change is not None:
            page_open[int(row[0])] = change
    opened = [incident_id for incident_id, is_open in page_open.items() if is_open]
    for start in range(0, len(opened), 500):
        conn.execute(
            sa.update(incidents).where(incidents.c.id.in_(opened[start : start + 500])).values(page_open=True)
        )


MIGRATION = Migration(
    7,
    "incidents.page_open: whether an escalated incident's page is open (kept with its page entries)",
    (
        AddColumn("incidents", _page_open),
        CreateIndex("ix_incidents_page_open", "incidents", lambda t: [t.c.page_open, t.c.id]),
        Run(_backfill),
    ),
)
