"""The incident page's live updates: server-sent events saying that the incident changed, and the
version the script polls slowly only where those fail.

Installed by `watchdog.console.routes.add_routes`; each runs inside `watchdog.console.handling.page`,
so it is signed in as the page is (the trusted proxy's identity, a bearer token, or the local user).
`static/console.js` opens an `EventSource` on `events` after the seq of the newest audit entry its
page shows (`data-after`). Whatever changes the page is audited (a state change, a vote, a step of a
run, a new diagnosis), so each entry written after that seq comes as `event: audit` with its seq as
`id:`, and the script then fetches the page and swaps its live part. The stream is the operator
API's (`watchdog.events.stream_events`: the store read every `poll_seconds`, a bounded lifetime,
keepalives, `event: end` once the incident is settled); a reconnect resumes after `Last-Event-ID`.
"""

from __future__ import annotations

from aiohttp import web

from watchdog.console import forms, views
from watchdog.console.forms import EventsQuery
from watchdog.console.handling import Console, incident_id_of
from watchdog.console.signin import Visitor
from watchdog.events import resumed_after, stream_events


async def events(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """The incident's audit entries after `?after=` (or `Last-Event-ID`) as server-sent events."""
    incident_id = incident_id_of(request)
    after = resumed_after(request, forms.read(EventsQuery, request.query).after)
    return await stream_events(
        request, console.store, console.clock, incident_id, after=after, limits=console.stream_limits
    )


async def version(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """{"version", "live"}: what the script polls where server-sent events fail."""
    detail = await console.incidents.detail(incident_id_of(request))
    response = web.json_response({"version": views.version_of(detail), "live": detail.incident.is_open})
    response.headers["Cache-Control"] = "no-store"
    return response
