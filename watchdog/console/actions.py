"""The incident page's actions beyond approving: diagnosing again and running a playbook, as the
operator API offers them.

Installed by `watchdog.console.routes.add_routes`; each runs inside `watchdog.console.handling.page`
(the signed-in visitor; refusals and bad input answered as HTML pages). Both are form posts from the
console's own page (its Origin), for the role the API's routes need (operator; a 403 page naming it
otherwise), and audited under the visitor's name as the approval form is (`local:alice`,
`proxy:alice@example.com`):

- `diagnose`, as `POST /api/v1/incidents/{id}/diagnose`: an open incident only (a 409 page
  otherwise), queued on the diagnosis service after a `diagnosis_requested` entry names who asked.
- `playbook`, as `POST /api/v1/incidents/{id}/playbooks/{playbook}`, through the same service
  (`watchdog.playbook_requests`): `step=dry_run` answers the dry-run page (the preconditions, the
  actions, whether running makes a proposal for approval) whose Run button posts `step=run`; that
  starts the playbook, or proposes it when the policy's approval rule needs more than the visitor.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from watchdog.console import forms
from watchdog.console.forms import DiagnoseForm, FormError, PlaybookForm
from watchdog.console.handling import (
    PREFIX,
    Console,
    PageError,
    back_to_page,
    form_pairs,
    incident_id_of,
    require_origin,
    require_role,
)
from watchdog.console.signin import Visitor
from watchdog.diagnosis import DIAGNOSABLE
from watchdog.errors import IncidentError, RequestRefused, UnknownPlaybook
from watchdog.identity import Role
from watchdog.playbook_requests import PlaybookRequest
from watchdog_sdk.errors import BackendUnavailable, PlaybookError

OPERATE_ROLE: Final = Role.OPERATOR  # what the API's diagnose and playbook routes need


async def diagnose(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """Diagnose the incident again (an open one), then back to the page (303)."""
    require_origin(request)
    incident_id = incident_id_of(request)
    require_role(visitor, OPERATE_ROLE, "diagnose again")
    forms.read(DiagnoseForm, await form_pairs(request))
    incident = await console.incidents.get(incident_id)
    if incident.status not in DIAGNOSABLE:
        raise PageError(
            409,
            "Not diagnosed again",
            f"incident {incident.id} is {incident.status}; only an open incident is diagnosed again",
        )
    await console.incidents.record(
        incident.id, "diagnosis_requested", actor=visitor.actor, data={"via": "console"}
    )
    queued = console.diagnosis.start(incident)
    raise back_to_page(incident.id, "diagnosing" if queued is not None else "diagnosis_waiting")


async def playbook(request: web.Request, console: Console, visitor: Visitor) -> web.StreamResponse:
    """A playbook on the incident's execution: its dry run (a page), or its run (303 to the page)."""
    require_origin(request)
    incident_id = incident_id_of(request)
    require_role(visitor, OPERATE_ROLE, "run playbooks")
    form = forms.read(PlaybookForm, await form_pairs(request))
    incident = await console.incidents.get(incident_id)
    try:
        asked = console.requests.request(
            incident, form.playbook, form.params, visitor.requester, via="the console"
        )
    except UnknownPlaybook as exc:
        raise FormError("playbook", str(exc)) from None
    except PlaybookError as exc:
        raise FormError("params", str(exc)) from None
    if form.step == "dry_run":
        return await _dry_run(console, visitor, form, asked)
    try:
        done = await asked.submit()
    except (RequestRefused, IncidentError) as exc:
        raise PageError(409, "Not run", str(exc)) from None
    raise back_to_page(incident.id, "playbook_started" if done.state == "started" else "playbook_proposed")


async def _dry_run(
    console: Console, visitor: Visitor, form: PlaybookForm, asked: PlaybookRequest
) -> web.StreamResponse:
    """The dry-run page: what the playbook would do, and the button that runs (or proposes) it."""
    try:
        precheck, planned = await asked.preview()
    except BackendUnavailable as exc:
        raise PageError(503, "Unavailable", f"the dry run could not be made: {exc}") from None
    incident = asked.incident
    return console.pages.render(
        "playbook.html",
        title=f"Dry run of {asked.playbook.name} on incident {incident.id}",
        visitor=visitor,
        incident=incident,
        playbook=asked.playbook.name,
        params=asked.params,
        params_text=form.params_text(),
        precheck=precheck,
        planned=planned,
        risk=asked.risk,
        rule=asked.rule,
        needs_approval=asked.needs_approval,
        runnable=incident.is_open and precheck.ok,
        page_url=f"{PREFIX}/incidents/{incident.id}",
    )
