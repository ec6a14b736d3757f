"""Migration 7 on SQLite and PostgreSQL: the escalated incidents of an earlier release get `page_open`
from their audit log, as the page entries say (`watchdog.migrations.page_change`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gl_common.db import Database
from gl_common.migrations import upgrade
from tests.watchdog.conftest import FakeClock
from watchdog.migrations import SCHEMA
from watchdog.store import WatchdogStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SENT = {"ok": True, "sent": True, "detail": "delivered (202)", "status": 202}
NOT_SENT = {"ok": True, "sent": False, "detail": "no notifier_url configured", "status": None}
RESOLVED = {"ok": True, "sent": True, "detail": "delivered (202)", "status": 202}
RESOLVE_FAILED = {"ok": False, "sent": False, "detail": "PagerDuty resolve answered 503", "status": None}

# execution id -> the page entries of its escalated incident, oldest first: (kind, phase, data)
HISTORIES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "paged": [("escalation_notified", "before", {}), ("escalation_notified", "after", SENT)],
    "resolved": [("escalation_notified", "after", SENT), ("page_resolved", "after", RESOLVED)],
    "resolve-failed": [("escalation_notified", "after", SENT), ("page_resolved", "after", RESOLVE_FAILED)],
    "paged-again": [
        ("escalation_notified", "after", SENT),
        ("page_resolved", "after", RESOLVED),
        ("escalation_notified", "after", SENT),
    ],
    "not-sent": [("escalation_notified", "after", NOT_SENT)],
    "only-begun": [("escalation_notified", "before", SENT)],  # the delivery never came back
    "never-paged": [],
}


async def _an_earlier_release(database_url: str) -> dict[str, int]:
    """A store at version 6 with one escalated incident per history; their ids by execution id."""
    database = Database.connect(database_url)
    ids: dict[str, int] = {}
    try:
        async with database.transaction("prepare") as conn:
            await conn.run_sync(upgrade, SCHEMA, START, 6)
            v6 = SCHEMA.metadata(6).tables
            for execution_id, entries in HISTORIES.items():
                inserted = await conn.execute(
                    v6["incidents"]
                    .insert()
                    .values(
                        execution_id=execution_id,
                        status="escalated",
                        source="sweep",
                        detection_source="api",
                        opened_at=START,
                        updated_at=START,
                    )
                    .returning(v6["incidents"].c.id)
                )
                ids[execution_id] = inserted.scalar_one()
                for kind, phase, data in entries:
                    row = {"kind": kind, "phase": phase, "data": data, "actor": "watchdog", "at": START}
                    await conn.execute(v6["audit_log"].insert().values(incident_id=ids[execution_id], **row))
    finally:
        await database.close()
    return ids


async def test_upgrading_to_version_7_opens_the_pages_the_audit_log_leaves_open(database_url: str) -> None:
    """Delivered and not resolved since (a failed resolve leaves it open; a new delivery reopens):
    open; resolved, never delivered, or only begun: closed. The sweep's read finds the open ones."""
    ids = await _an_earlier_release(database_url)
    store = await WatchdogStore.open(database_url, clock=FakeClock(START))
    try:
        marked = {i.execution_id: i.page_open for i in await store.list_incidents()}
        async with store.read() as tx:
            listed = [i.id for i in await tx.list_open_pages(limit=10)]
    finally:
        await store.close()
    assert marked == {
        "paged": True,
        "resolved": False,
        "resolve-failed": True,
        "paged-again": True,
        "not-sent": False,
        "only-begun": False,
        "never-paged": False,
    }
    assert listed == [ids["paged-again"], ids["resolve-failed"], ids["paged"]]
