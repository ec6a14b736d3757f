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
The app's shutdown ends the streams being served (`OpenStreams`) at once rather than waiting out
their lifetime: the browsers reconnect, to whichever replica serves next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from aiohttp import web

from watchdog.console import forms, views
from watchdog.console.forms import EventsQuery
from watchdog.console.handling import Console, incident_id_of
from watchdog.console.signin import Visitor
from watchdog.events import resumed_after, stream_events


class OpenStreams:
    """The event streams this app is serving, ended together when it shuts down."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Around one stream: its handler's task is ended by `close` until the stream ends."""
        task = asyncio.current_task()
        assert task is not None  # a handler runs in a task
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def close(self, app: web.Application) -> None:
        """End every stream being served (an `on_shutdown` callback)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


STREAMS_KEY: Final = web.AppKey("console streams", OpenStreams)


def install(app: web.Application) -> None:
    """Keep the console's streams in `app`, and end them when it shuts down."""
    streams = app[STREAMS_KEY] = OpenStreams()
    app.on_shutdown.append(streams.close)


async def events(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """The incident's audit entries after `?after=` (or `Last-Event-ID`) as server-sent events."""
    incident_id = incident_id_of(request)
    after = resumed_after(request, forms.read(EventsQuery, request.query).after)
    with request.app[STREAMS_KEY].serving():
        return await stream_events(
            request, console.store, console.clock, incident_id, after=after, limits=console.stream_limits
        )


async def version(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """{"version", "live"}: what the script polls where server-sent events fail."""
    detail = await console.incidents.detail(incident_id_of(request))
    response = web.json_response({"version": views.version_of(detail), "live": detail.incident.is_open})
    response.headers["Cache-Control"] = "no-store"
    return response
