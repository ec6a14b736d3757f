"""The incident console's routes: the list, an incident's page, its approval form and live updates.

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)` when
`console_enabled` is on. Every route first asks `watchdog.console.signin` who is looking (401 page
otherwise), reads the store through the incident service and `watchdog.listing`, shapes what it
read with `watchdog.console.views` and renders it with `watchdog.console.pages`:

    GET  /console/                              → 302 /console/incidents
    GET  /console/incidents                     the list: filters status (or "live"), DAG, cause,
                                                opened after/before (UTC); newest first, keyset pages
    GET  /console/incidents/{id}                the incident: diagnosis (steps 1-8 with evidence), plan
                                                and its dry-run, approval and its buttons, verification,
                                                audit timeline, links (trace, provenance, Grafana, runbook)
    POST /console/incidents/{id}/decision       the approval form (approver or higher; its Origin
                                                this site's): decide or vote as the signed-in user →
                                                303 to the page
    GET  /console/incidents/{id}/version        {"version", "live"}: what `static/console.js` polls
                                                to refresh the page while the incident is live
    GET  /console/static/{name}                 the stylesheet and script (cached for a year)

The pages work without JavaScript: the forms are plain posts, and a reload link stands in for the
script's refresh. Bad input answers a 400 page naming the field, an unknown incident a 404 page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web

from gl_common.clock import Clock
from gl_common.http import ApiError, decode_cursor, encode_cursor
from gl_common.openapi import Inputs, Route, RouteHandler
from watchdog.approvals import ApprovalService, Decision
from watchdog.console import forms, views
from watchdog.console.forms import DecisionForm, FormError, ListQuery
from watchdog.console.pages import Pages
from watchdog.console.signin import SignIn, Visitor
from watchdog.errors import (
    ApprovalClosed,
    ApprovalNotFound,
    ApproverRefused,
    IncidentNotFound,
    SameApprover,
    StoreUnavailable,
)
from watchdog.identity import Role
from watchdog.incidents import IncidentService
from watchdog.links import LinkSettings, links
from watchdog.listing import page_incidents
from watchdog.responder import Responder
from watchdog.settings import WatchdogSettings
from watchdog.store import WatchdogStore

log = logging.getLogger(__name__)

PREFIX: Final = "/console"
CURSOR_PURPOSE: Final = "gl-watchdog console incidents"
FORM_TYPE: Final = "application/x-www-form-urlencoded"
MAX_FORM_BYTES: Final = 4096
SIGN_IN_SCHEME: Final = "consoleSignIn"  # the trusted proxy's identity (or a bearer token)
APPROVE_ROLE: Final = Role.APPROVER
NOTICES: Final = {
    "approved": "Your approval is recorded.",
    "denied": "Your denial is recorded: nothing will act on this plan, and the incident is escalated.",
    "vote": "Your approval is recorded; the plan needs a second, different approver before it runs.",
    "same_approver": "You have already approved this plan: a second, different approver is needed.",
    "closed": "This prompt was settled before your answer arrived (its state is below): nothing changed.",
}


@dataclass(frozen=True)
class Console:
    """What the console's handlers use, handed over by the composition root."""

    incidents: IncidentService
    store: WatchdogStore
    approvals: ApprovalService
    responder: Responder
    signin: SignIn
    links: LinkSettings
    clock: Clock
    pages: Pages


CONSOLE_KEY: Final = web.AppKey("console", Console)
PageHandler = Callable[[web.Request, Console, Visitor], Awaitable[web.StreamResponse]]


class PageError(Exception):
    """A page the handler answers instead of its own: status, title and what went wrong."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def build_console(
    settings: WatchdogSettings,
    *,
    incidents: IncidentService,
    store: WatchdogStore,
    approvals: ApprovalService,
    responder: Responder,
    clock: Clock,
) -> Console:
    """The console over the watchdog's services, as the settings configure it (raises ConfigError
    for settings that cannot work together, e.g. local mode behind the proxy)."""
    link_settings = LinkSettings.of(settings)
    return Console(
        incidents=incidents,
        store=store,
        approvals=approvals,
        responder=responder,
        signin=SignIn.from_settings(settings),
        links=link_settings,
        clock=clock,
        pages=Pages(PREFIX),
    )


def add_routes(app: web.Application, console: Console) -> None:
    """Add the console's routes to `app` (built by `watchdog.http.new_application`)."""
    app[CONSOLE_KEY] = console
    for method, path, handler in (
        ("GET", "/incidents", incident_list),
        ("GET", "/incidents/{incident_id}", incident_page),
        ("POST", "/incidents/{incident_id}/decision", decide),
        ("GET", "/incidents/{incident_id}/version", version),
    ):
        route = PageRoute(method, PREFIX + path, _page(handler), f"console: {method} {path}", auth=False)
        app.router.add_route(method, route.path, route.endpoint)
    app.router.add_get(f"{PREFIX}/", _to_list)
    app.router.add_get(PREFIX + "/static/{name}", _static)


@dataclass(frozen=True)
class PageRoute(Route):
    """A console page as the auth middleware sees it (`gl_common.openapi.route_of`): it takes the
    identity of a bearer token or of the trusted proxy when the request has one (`alt_auth`), and
    is let through without one, the page then answering for itself (local mode, or the 401 page).
    The page reads its own inputs (`watchdog.console.forms`), so that bad ones get an HTML answer."""

    alt_auth: tuple[str, ...] = (SIGN_IN_SCHEME,)

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self.handler(request, Inputs({}))


def _page(handler: PageHandler) -> RouteHandler:
    """`handler` for a signed-in visitor, its refusals and bad input answered as HTML pages."""

    async def serve(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        console = request.app[CONSOLE_KEY]
        visitor = console.signin.visitor(request)
        try:
            if visitor is None:
                raise PageError(401, "Sign in", "the console needs you signed in through the proxy")
            return await handler(request, console, visitor)
        except FormError as exc:
            return _error(console, visitor, PageError(400, "Bad request", str(exc)))
        except (IncidentNotFound, ApprovalNotFound) as exc:
            return _error(console, visitor, PageError(404, "Not found", str(exc)))
        except StoreUnavailable as exc:
            log.warning("console %s %s: %s", request.method, request.path, exc)
            detail = "the watchdog's database does not answer; try again in a minute"
            return _error(console, visitor, PageError(503, "Unavailable", detail))
        except PageError as exc:
            return _error(console, visitor, exc)

    return serve


def _error(console: Console, visitor: Visitor | None, error: PageError) -> web.Response:
    return console.pages.render(
        "message.html",
        status=error.status,
        code=error.status,
        title=error.title,
        detail=error.detail,
        visitor=visitor,
    )


async def _to_list(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{PREFIX}/incidents")


async def _static(request: web.Request) -> web.StreamResponse:
    return request.app[CONSOLE_KEY].pages.static(request.match_info["name"])


def _incident_id(request: web.Request) -> int:
    text = request.match_info["incident_id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise FormError("incident_id", f"{text!r} is not an incident id (a positive integer)")
    return int(text)


# -- the list ---------------------------------------------------------------------------------------


async def incident_list(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    query = forms.read(ListQuery, request.query)
    filters = query.filters()
    before = None
    if query.cursor is not None:
        before = _cursor_position(query.cursor, filters)
    page = await page_incidents(console.store, query.where(), before=before, limit=query.limit)
    next_url = None
    if page.next_before is not None:
        cursor = encode_cursor({"before": page.next_before}, filters, purpose=CURSOR_PURPOSE)
        next_url = f"{PREFIX}/incidents?" + urlencode({**filters, "cursor": cursor, "limit": query.limit})
    return console.pages.render(
        "incidents.html",
        title="Incidents",
        visitor=visitor,
        query=query,
        statuses=forms.STATUS_CHOICES,
        incidents=page.incidents,
        total=page.total,
        next_url=next_url,
        first_url=f"{PREFIX}/incidents?" + urlencode(filters) if query.cursor else None,
    )


def _cursor_position(cursor: str, filters: dict[str, object]) -> int:
    refused = FormError("cursor", "not a cursor of this listing: follow the page links as given")
    try:
        before = decode_cursor(cursor, filters, purpose=CURSOR_PURPOSE).get("before")
    except ApiError:
        raise refused from None
    if type(before) is not int or before < 1:
        raise refused
    return before


# -- one incident -----------------------------------------------------------------------------------


async def incident_page(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    detail = await console.incidents.detail(_incident_id(request))
    incident = detail.incident
    now = console.clock.now()
    notice = NOTICES.get(request.query.get("notice", ""))
    approval = views.approval_view(detail.approvals, console.approvals.rule_for, now=now)
    return console.pages.render(
        "incident.html",
        title=f"Incident {incident.id}",
        visitor=visitor,
        incident=incident,
        plan=incident.plan,
        diagnosis=views.diagnosis_view(incident.diagnosis),
        approval=approval,
        may_decide=visitor.may(APPROVE_ROLE),
        approve_role=APPROVE_ROLE,
        actions=detail.actions,
        events=views.timeline(detail.audit),
        held=views.held_lines(incident, detail.audit),
        links=links(incident, console.links, now=now),
        notice=notice,
        live=incident.is_open,
        version=views.version_of(detail),
        version_url=f"{PREFIX}/incidents/{incident.id}/version",
        page_url=f"{PREFIX}/incidents/{incident.id}",
    )


async def version(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    detail = await console.incidents.detail(_incident_id(request))
    response = web.json_response({"version": views.version_of(detail), "live": detail.incident.is_open})
    response.headers["Cache-Control"] = "no-store"
    return response


async def decide(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """The approval form: approver or higher, from the console's own origin, for this incident's
    prompt; then back to the page (303), which says what became of it."""
    _require_origin(request)
    incident_id = _incident_id(request)
    if not visitor.may(APPROVE_ROLE):
        raise PageError(
            403, "Not allowed", f"role {visitor.role} cannot approve: {APPROVE_ROLE} or higher needed"
        )
    form = forms.read(DecisionForm, await _form_pairs(request))
    approval = await console.approvals.get(form.approval_id)
    if approval.incident_id != incident_id:
        raise ApprovalNotFound(f"no approval {form.approval_id} for incident {incident_id}")
    notice = await _decide_as(console, visitor, approval.id, Decision(form.decision))
    raise web.HTTPSeeOther(f"{PREFIX}/incidents/{incident_id}?notice={quote(notice)}")


async def _decide_as(console: Console, visitor: Visitor, approval_id: str, decision: Decision) -> str:
    """Decide (or vote) as `visitor`; the notice the page shows afterwards. The local user decides
    as the CLI on the watchdog's machine does (`watchdog.console.signin`)."""
    try:
        if visitor.identity is not None:
            decided = await console.approvals.decide(approval_id, decision, identity=visitor.identity)
        else:
            decided = await console.approvals.decide(
                approval_id, decision, actor=visitor.actor, authenticated=True
            )
    except ApprovalClosed:
        return "closed"  # the page shows what the prompt became
    except SameApprover:
        return "same_approver"
    except ApproverRefused as exc:
        raise PageError(403, "Not allowed", str(exc)) from None
    if decided.state == "pending":
        return "vote"  # one of two: the prompt waits for a second approver
    console.responder.start_decision(decided)
    return "approved" if decision is Decision.APPROVE else "denied"


async def _form_pairs(request: web.Request) -> list[tuple[str, str]]:
    if request.content_type != FORM_TYPE:
        raise PageError(415, "Unsupported form", f"the form must be sent as {FORM_TYPE}")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "Form too large", f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise FormError("", "the form is not valid URL-encoded UTF-8") from None


def _require_origin(request: web.Request) -> None:
    """A decision must say which page it comes from: the middleware (`watchdog.http.origin_check`)
    refuses a form post from another site, and lets one without `Origin` or `Referer` through, which
    no browser sends from a page (and `Referrer-Policy: no-referrer` leaves only `Origin`)."""
    if not request.headers.get("Origin"):
        raise PageError(403, "Refused", "this form must be sent from the console's own page (no Origin)")
