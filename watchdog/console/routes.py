"""The incident console's routes: the list, an incident's page and its forms, its live updates.

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)` when
`console_enabled` is on. Every route first asks `watchdog.console.signin` who is looking (401 page
otherwise; `watchdog.console.handling`), reads the store through the incident service and
`watchdog.listing`, shapes what it read with `watchdog.console.views` and renders it with
`watchdog.console.pages`. The list, the page and the approval form are here; diagnosing again and
running a playbook in `watchdog.console.actions`; the live updates in `watchdog.console.live`:

    GET  /console/                              → 302 /console/incidents
    GET  /console/incidents                     the list: filters status (or "live"), DAG, cause,
                                                opened after/before (UTC); newest first, keyset pages
    GET  /console/incidents/{id}                the incident: diagnosis (steps 1-8 with evidence), plan
                                                and its dry-run, approval and its buttons, verification,
                                                audit timeline, links (trace, provenance, Grafana,
                                                runbook), the forms to diagnose again and run a playbook
    POST /console/incidents/{id}/decision       the approval form (approver or higher): decide or vote
                                                as the signed-in user → 303 to the page
    POST /console/incidents/{id}/diagnose       diagnose again (operator or higher) → 303 to the page
    POST /console/incidents/{id}/playbook       a playbook (operator or higher): `step=dry_run` → the
                                                dry-run page with its Run button; `step=run` → started,
                                                or proposed for approval as through the API → 303
    GET  /console/incidents/{id}/events         server-sent events: the incident changed (the page's
                                                script then fetches it again)
    GET  /console/incidents/{id}/version        {"version", "live"}: the script's slow poll, only where
                                                server-sent events fail
    GET  /console/static/{name}                 the stylesheet and script (cached for a year)

The pages work without JavaScript: the forms are plain posts (each from this site's Origin), and a
reload link stands in for the script's refresh. Bad input answers a 400 page naming the field, an
unknown incident a 404 page, an action the incident's state does not allow a 409 page.
"""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from gl_common.clock import Clock
from gl_common.http import ApiError, decode_cursor, encode_cursor
from watchdog.approvals import ApprovalService, Decision
from watchdog.console import actions, forms, live, views
from watchdog.console.forms import DecisionForm, FormError, ListQuery
from watchdog.console.handling import (
    CONSOLE_KEY,
    PREFIX,
    Console,
    PageError,
    PageRoute,
    back_to_page,
    form_pairs,
    incident_id_of,
    page,
    require_origin,
    require_role,
)
from watchdog.console.pages import Pages
from watchdog.console.signin import SignIn, Visitor
from watchdog.diagnosis import DIAGNOSABLE, DiagnosisService
from watchdog.errors import ApprovalClosed, ApprovalNotFound, ApproverRefused, SameApprover
from watchdog.events import StreamLimits
from watchdog.identity import Role
from watchdog.incidents import IncidentService
from watchdog.links import LinkSettings, links
from watchdog.listing import page_incidents
from watchdog.playbook_requests import PlaybookRequests
from watchdog.responder import Responder
from watchdog.settings import WatchdogSettings
from watchdog.store import WatchdogStore

__all__ = ["PREFIX", "Console", "add_routes", "build_console"]

CURSOR_PURPOSE: Final = "gl-watchdog console incidents"
APPROVE_ROLE: Final = Role.APPROVER


def build_console(
    settings: WatchdogSettings,
    *,
    incidents: IncidentService,
    store: WatchdogStore,
    approvals: ApprovalService,
    responder: Responder,
    diagnosis: DiagnosisService,
    requests: PlaybookRequests,
    clock: Clock,
    stream_limits: StreamLimits,
) -> Console:
    """The console over the watchdog's services, as the settings configure it (raises ConfigError
    for settings that cannot work together, e.g. local mode behind the proxy)."""
    return Console(
        incidents=incidents,
        store=store,
        approvals=approvals,
        responder=responder,
        diagnosis=diagnosis,
        requests=requests,
        signin=SignIn.from_settings(settings),
        links=LinkSettings.of(settings),
        clock=clock,
        pages=Pages(PREFIX),
        stream_limits=stream_limits,
    )


def add_routes(app: web.Application, console: Console) -> None:
    """Add the console's routes to `app` (built by `watchdog.http.new_application`)."""
    app[CONSOLE_KEY] = console
    live.install(app)
    for method, path, handler in (
        ("GET", "/incidents", incident_list),
        ("GET", "/incidents/{incident_id}", incident_page),
        ("POST", "/incidents/{incident_id}/decision", decide),
        ("POST", "/incidents/{incident_id}/diagnose", actions.diagnose),
        ("POST", "/incidents/{incident_id}/playbook", actions.playbook),
        ("GET", "/incidents/{incident_id}/events", live.events),
        ("GET", "/incidents/{incident_id}/version", live.version),
    ):
        route = PageRoute(method, PREFIX + path, page(handler), f"console: {method} {path}", auth=False)
        app.router.add_route(method, route.path, route.endpoint)
    app.router.add_get(f"{PREFIX}/", _to_list)
    app.router.add_get(PREFIX + "/static/{name}", _static)


async def _to_list(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{PREFIX}/incidents")


async def _static(request: web.Request) -> web.StreamResponse:
    return request.app[CONSOLE_KEY].pages.static(request.match_info["name"])


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
        rows=views.listed(page.incidents),
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
    detail = await console.incidents.detail(incident_id_of(request))
    incident = detail.incident
    now = console.clock.now()
    notice = views.NOTICES.get(request.query.get("notice", ""))
    approval = views.approval_view(detail.approvals, console.approvals.rule_for, now=now)
    page_url = f"{PREFIX}/incidents/{incident.id}"
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
        may_operate=visitor.may(actions.OPERATE_ROLE),
        operate_role=actions.OPERATE_ROLE,
        diagnosable=incident.status in DIAGNOSABLE,
        playbooks=console.requests.names(),
        chosen=incident.plan.playbook if incident.plan is not None else None,
        chosen_params=json.dumps(incident.plan.params, sort_keys=True)
        if incident.plan and incident.plan.params
        else "",
        actions=detail.actions,
        events=views.timeline(detail.audit),
        held=views.held_lines(incident),
        links=links(incident, console.links, now=now),
        notice=notice,
        live=incident.is_open,
        version=views.version_of(detail),
        after=views.last_seq(detail),
        events_url=f"{page_url}/events",
        version_url=f"{page_url}/version",
        page_url=page_url,
    )


async def decide(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """The approval form: approver or higher, from the console's own origin, for this incident's
    prompt; then back to the page (303), which says what became of it."""
    require_origin(request)
    incident_id = incident_id_of(request)
    require_role(visitor, APPROVE_ROLE, "approve")
    form = forms.read(DecisionForm, await form_pairs(request))
    approval = await console.approvals.get(form.approval_id)
    if approval.incident_id != incident_id:
        raise ApprovalNotFound(f"no approval {form.approval_id} for incident {incident_id}")
    notice = await _decide_as(console, visitor, approval.id, Decision(form.decision))
    raise back_to_page(incident_id, notice)


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
