"""An incident's events: its audit log read as a feed, by page or as server-sent events.

Where it sits: `GET /api/v1/incidents/{id}/events?after=<seq>` (`watchdog.operator_api`) answers a
page of the incident's audit entries after `seq` (the entry's id, increasing), or, when the client
asks for `text/event-stream`, streams them: what is there, then new entries as they are written
(the store is polled every `poll_seconds`), until the incident is closed and nothing is left, or the
stream's lifetime ends (the client reconnects with `Last-Event-ID` or `?after=`). The CLI follows a
playbook run with it; the console's incident page refreshes with it.

Every stream is bounded: `lifetime_seconds` (default 300), a comment line every `keepalive_seconds`
so that proxies keep it open, an end as soon as the client goes away, and `event: error` (then the
end) when the store fails mid-stream. The lifetime is the setting `events_stream_seconds`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from aiohttp import web

from gl_common.clock import Clock
from watchdog.errors import IncidentNotFound
from watchdog.migrations import TERMINAL_INCIDENT_STATUSES, audit_log
from watchdog.records import AuditEntry, Incident
from watchdog.store import WatchdogStore
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

STREAM_TYPE: Final = "text/event-stream"


@dataclass(frozen=True)
class EventPage:
    """Audit entries after a seq, the seq to ask from next, and the incident as it now is."""

    entries: list[AuditEntry]
    next_after: int
    incident: Incident

    @property
    def final(self) -> bool:
        return self.incident.status in TERMINAL_INCIDENT_STATUSES


async def page_events(store: WatchdogStore, incident_id: int, *, after: int, limit: int) -> EventPage:
    """The incident's audit entries with a seq above `after`, oldest first (IncidentNotFound)."""
    async with store.read("incident events") as tx:
        incident = await tx.get_incident(incident_id)
        if incident is None:
            raise IncidentNotFound(f"no incident {incident_id}")
        result = await tx.conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.incident_id == incident_id, audit_log.c.id > after)
            .order_by(audit_log.c.id)
            .limit(limit)
        )
        entries = [AuditEntry.model_validate(dict(row._mapping)) for row in result]
    next_after = entries[-1].id if entries else after
    return EventPage(entries=entries, next_after=next_after, incident=incident)


def event_json(entry: AuditEntry) -> dict[str, object]:
    """One event as the API shows it."""
    return {
        "seq": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "kind": entry.kind,
        "phase": entry.phase,
        "data": entry.data,
    }


def wants_stream(request: web.Request) -> bool:
    """True when the client asks for server-sent events."""
    return STREAM_TYPE in request.headers.get("Accept", "")


def resumed_after(request: web.Request, after: int) -> int:
    """Where a stream resumes: after `after`, or after the `Last-Event-ID` a reconnecting
    `EventSource` sends when that is later."""
    last = request.headers.get("Last-Event-ID", "")
    return max(after, int(last)) if last.isdigit() and len(last) < 19 else after


@dataclass(frozen=True)
class StreamLimits:
    poll_seconds: float = 1.0
    lifetime_seconds: float = 300.0
    keepalive_seconds: float = 15.0
    page: int = 500


async def stream_events(
    request: web.Request,
    store: WatchdogStore,
    clock: Clock,
    incident_id: int,
    *,
    after: int,
    limits: StreamLimits = StreamLimits(),
) -> web.StreamResponse:
    """Server-sent events of the incident (`id:` the seq, `event: audit`, `data:` the event as JSON),
    until it is closed with nothing left to send or the lifetime ends (then `event: end`)."""
    first = await page_events(store, incident_id, after=after, limit=limits.page)  # 404 before streaming
    response = web.StreamResponse(
        headers={
            "Content-Type": STREAM_TYPE,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        await _send_until_done(response, store, clock, incident_id, first, limits)
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing more to send
        pass
    except WatchdogError as exc:  # the store failed mid-stream: say so, and end (the client reconnects)
        log.warning("events of incident %s: stream ended: %s", incident_id, exc)
        with contextlib.suppress(ConnectionResetError):
            await response.write(f"event: error\ndata: {json.dumps({'detail': str(exc)})}\n\n".encode())
            await response.write_eof()
    return response


async def _send_until_done(
    response: web.StreamResponse,
    store: WatchdogStore,
    clock: Clock,
    incident_id: int,
    page: EventPage,
    limits: StreamLimits,
) -> None:
    started = quiet_since = clock.monotonic()
    while True:
        for entry in page.entries:
            data = json.dumps(event_json(entry), separators=(",", ":"))
            await response.write(f"id: {entry.id}\nevent: audit\ndata: {data}\n\n".encode())
        now = clock.monotonic()
        if page.entries:
            quiet_since = now
        elif now - quiet_since >= limits.keepalive_seconds:
            await response.write(b": keepalive\n\n")
            quiet_since = now
        full = len(page.entries) == limits.page
        if (page.final and not full) or now - started >= limits.lifetime_seconds:
            status = json.dumps({"incident_status": page.incident.status, "next_after": page.next_after})
            await response.write(f"event: end\ndata: {status}\n\n".encode())
            return
        if not full:
            await clock.sleep(limits.poll_seconds)
        page = await page_events(store, incident_id, after=page.next_after, limit=limits.page)
