"""The paginated listing of incidents: server-side filters, newest first, keyset pages, exact totals.

Where it sits: `GET /api/v1/incidents` (`watchdog.api`) and `gl-watchdog incidents list --local`
(`watchdog.cli.local`) turn their validated query into an `IncidentFilter` and ask `page_incidents()`
for one page over the store's `incidents` table (`watchdog.migrations`), in one read transaction of
`watchdog.store` (a snapshot: the page and its total agree; on SQLite it does not queue for, nor hold,
the write lock the intake needs). Nothing is truncated silently: a page says how many incidents match in
all (`total`) and where the next page starts (`next_before`, an incident id: ids grow with every
incident, so "newest first" is "highest id first", and an incident opened while a client pages sorts
before every page it has seen, never into one).

Whether an incident is held (the `held` filter) is read from its row (`held_kind`, which
`watchdog.suppression` keeps with its audit entry), so neither filtering nor marking held incidents
reads the audit log. Each page carries the pending approval prompt of its incidents awaiting one,
read in the same snapshot by one query for the page's ids (no call per incident).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from watchdog.migrations import approvals, incidents
from watchdog.records import Incident
from watchdog.store import WatchdogStore


@dataclass(frozen=True)
class IncidentFilter:
    """What a listing keeps (each given condition must hold)."""

    statuses: tuple[str, ...] | None = None
    dag_id: str | None = None
    execution_id: str | None = None
    likely_cause: str | None = None
    opened_after: datetime | None = None  # at or after
    opened_before: datetime | None = None
    held: bool | None = None  # held by a silence, a window or a failed check now (`Incident.is_held`)

    def conditions(self) -> list[Any]:
        where: list[Any] = []
        if self.statuses is not None:
            where.append(incidents.c.status.in_(self.statuses))
        if self.dag_id is not None:
            where.append(incidents.c.dag_id == self.dag_id)
        if self.execution_id is not None:
            where.append(incidents.c.execution_id == self.execution_id)
        if self.likely_cause is not None:
            where.append(incidents.c.diagnosis["likely_cause"].as_string() == self.likely_cause)
        if self.opened_after is not None:
            where.append(incidents.c.opened_at >= self.opened_after)
        if self.opened_before is not None:
            where.append(incidents.c.opened_at < self.opened_before)
        if self.held is not None:
            held = sa.and_(incidents.c.status == "open", incidents.c.held_kind.is_not(None))
            where.append(held if self.held else sa.not_(held))
        return where


@dataclass(frozen=True)
class IncidentPage:
    """One page of a listing: its incidents, where the next page starts (None: this is the last
    one), how many incidents match the filter in all, and the id of the pending approval prompt of
    each listed incident that has one (by incident id)."""

    incidents: list[Incident]
    next_before: int | None
    total: int
    pending_approvals: dict[int, str] = field(default_factory=dict)


async def page_incidents(
    store: WatchdogStore, where: IncidentFilter, *, before: int | None, limit: int
) -> IncidentPage:
    """The `limit` newest incidents matching `where` whose id is below `before` (all: None)."""
    conditions = where.conditions()
    stmt = sa.select(incidents).where(*conditions).order_by(incidents.c.id.desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(incidents.c.id < before)
    async with store.read("incident listing") as tx:  # one snapshot; on SQLite, not the write lock
        rows = (await tx.conn.execute(stmt)).all()
        total = (
            await tx.conn.execute(sa.select(sa.func.count()).select_from(incidents).where(*conditions))
        ).scalar_one()
        found = [Incident.model_validate(dict(row._mapping)) for row in rows[:limit]]
        pending = await _pending_approvals(tx.conn, [incident.id for incident in found])
    more = len(rows) > limit
    return IncidentPage(found, found[-1].id if more and found else None, int(total), pending)


async def _pending_approvals(conn: AsyncConnection, incident_ids: list[int]) -> dict[int, str]:
    """The pending approval prompt of each of `incident_ids` that has one (the newest, should there be
    several), in one query."""
    if not incident_ids:
        return {}
    rows = await conn.execute(
        sa.select(approvals.c.incident_id, approvals.c.id)
        .where(approvals.c.incident_id.in_(incident_ids), approvals.c.state == "pending")
        .order_by(approvals.c.created_at, approvals.c.id)
    )
    return {int(row[0]): str(row[1]) for row in rows}
