"""Where humans answer approval prompts: the approval API and the approval web page.

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)`, which
hands the handlers their services as AppKeys: the approval prompts (`watchdog.approvals`), the
responder that continues after a decision (`watchdog.responder`) and the incidents (the page shows
the remediation's progress and result). Each route is declared on `ROUTE_TABLE` with the models of
`watchdog.api_models` (validated before the handler; described in the watchdog's OpenAPI document,
which `watchdog.api` builds). Routes:

    GET  /api/v1/approvals/{id}                 the prompt (bearer token, or ?token= link token)
    POST /api/v1/approvals/{id}/approve|deny    decide (bearer token, or the link token as ?token= or
                                                JSON {"token": ...}); 200 with the prompt, 401 no
                                                credential, 403 a link token refused, 404 unknown (bearer
                                                callers), 409 already decided/expired
    GET  /approvals/{id}?token=...[&decision=]  the page: diagnosis, plan, approve and deny buttons;
                                                after a decision, the remediation's progress and result
    POST /approvals/{id}                        the page's form (token, decision) → 303 back to the page

Credentials before lookups: a bearer token is checked by the auth middleware (`watchdog.http`) before
the handler runs; without one, a link token must be present (401 otherwise) and well formed (403
otherwise) before the prompt is read, and a link to a prompt that does not exist is refused exactly as
a forged token is (403), so the answers tell nobody which prompt ids exist. Every refusal is counted;
the log line and the `approval_token_rejected` audit row are written at a bounded rate per source
(`watchdog.auth_failures`).

A GET never decides (chat link unfurlers fetch links): the buttons POST. The link token is checked
by `watchdog.approvals` (HMAC, expiry, single use). Plain HTML, no JavaScript (a meta refresh while the
remediation runs); no external assets.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import parse_qsl, quote

from aiohttp import web

from gl_common.http import ApiError, json_model_response, read_body, validate
from gl_common.openapi import Answer, Inputs, RouteHandler, RouteTable
from watchdog.api_models import PATH_PARAMS, ApprovalForm, ApprovalOut, ApprovalQuery, DecideBody, PageQuery
from watchdog.approvals import ApprovalService, Decision, well_formed
from watchdog.errors import ApprovalClosed, ApprovalNotFound, ApproverRefused, InvalidToken, SameApprover
from watchdog.http import AUTH_FAILURES_KEY, authenticated, source_of, unauthorized
from watchdog.identity import Identity, Role, identity_of, require_role
from watchdog.incidents import IncidentService
from watchdog.links import LINK_TITLES, Links, LinkSettings, links
from watchdog.policy import ApprovalRule
from watchdog.records import Approval, Incident
from watchdog.responder import Responder

APPROVALS_KEY: Final = web.AppKey("approvals", ApprovalService)
RESPONDER_KEY: Final = web.AppKey("responder", Responder)
INCIDENTS_KEY: Final = web.AppKey("approval_incidents", IncidentService)
LINKS_KEY: Final = web.AppKey("approval_links", LinkSettings)
IN_PROGRESS: Final = ("awaiting_approval", "remediating", "verifying")
STATE_WORDS: Final = {"used": "approved (acted on)"}
FORM_TYPE: Final = "application/x-www-form-urlencoded"
APPROVE_BUTTON: Final = (
    '<button class="approve" type="submit" name="decision" value="approve" id="approve">Approve</button>'
)
LINK_SCHEME: Final = "approvalToken"
SECURITY_SCHEMES: Final = {
    LINK_SCHEME: {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "the signed, single-use token of an approval prompt's links (a decision's JSON "
        "body may carry it as `token` instead)",
    }
}

ROUTE_TABLE = RouteTable("/api/v1", path_params=PATH_PARAMS, body_invalid=(422, "invalid_payload"))
_LINK = (LINK_SCHEME,)
_INVALID_LINK = Answer("the link is not valid (forged, altered, or for no prompt)", content_type="text/html")


def add_routes(
    app: web.Application,
    *,
    approvals: ApprovalService,
    responder: Responder,
    incidents: IncidentService,
    link_settings: LinkSettings | None = None,
) -> None:
    """Add the approval API and page to `app` (built by `watchdog.http.new_application`); the page
    shows the incident's links where `link_settings` point."""
    app[APPROVALS_KEY] = approvals
    app[RESPONDER_KEY] = responder
    app[INCIDENTS_KEY] = incidents
    if link_settings is not None:
        app[LINKS_KEY] = link_settings
    ROUTE_TABLE.install(app)


# -- the link token: present, well formed, then checked against the prompt ----------------------------


class LinkRefused(Exception):
    """A link token was missing (`status` 401) or refused (403); the answer is the route's own."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def _linked_approval(request: web.Request, approval_id: str, token: str | None) -> Approval:
    """The prompt the link token opens; raises LinkRefused before any lookup when there is no token or
    it is malformed, and after it when the prompt does not exist or the token is not its own."""
    if token is None:
        _refused(request, "missing_link_token", approval_id, "no bearer token and no link token")
        raise LinkRefused(401, "bearer token or approval link token required")
    refusal = (
        f"this link token is not valid for approval {approval_id} (forged, altered, or for another prompt)"
    )
    if not well_formed(token):
        _refused(request, "malformed_link_token", approval_id, "malformed link token")
        raise LinkRefused(403, refusal)
    approvals = request.app[APPROVALS_KEY]
    try:
        approval = await approvals.get(approval_id)
        approvals.check_token(approval, token, allow_expired=True)
    except ApprovalNotFound:
        _refused(request, "unknown_prompt", approval_id, "a link token for no prompt")
        raise LinkRefused(403, refusal) from None
    except InvalidToken as exc:
        if _refused(request, "forged_link_token", approval_id, str(exc)):
            await approvals.record_rejected_token(approval, actor="link", reason=str(exc))
        raise LinkRefused(403, refusal) from None
    return approval


def _refused(request: web.Request, reason: str, approval_id: str, detail: str) -> bool:
    failures = request.app[AUTH_FAILURES_KEY]
    return failures.refused(source_of(request), reason, f"{request.method} approval {approval_id}: {detail}")


def _api_refusal(refusal: LinkRefused) -> ApiError:
    if refusal.status == 401:
        return unauthorized(refusal.detail)
    return ApiError(403, "invalid_token", refusal.detail)


# -- API ----------------------------------------------------------------------------------------------


@ROUTE_TABLE.route(
    "GET /approvals/{approval_id}",
    "An approval prompt (bearer token, or the link token as ?token=)",
    query=ApprovalQuery,
    response=ApprovalOut,
    alt_auth=_LINK,
    errors=(403, 404, 503),
)
async def api_get(request: web.Request, inputs: Inputs) -> web.Response:
    approval_id = inputs.path["approval_id"]
    if authenticated(request):
        approval = await request.app[APPROVALS_KEY].get(approval_id)
    else:
        try:
            approval = await _linked_approval(request, approval_id, inputs.query(ApprovalQuery).token)
        except LinkRefused as refusal:
            raise _api_refusal(refusal) from None
    return json_model_response(ApprovalOut.of(approval))


def _decider(decision: Decision) -> RouteHandler:
    async def decide(request: web.Request, inputs: Inputs) -> web.Response:
        approval_id = inputs.path["approval_id"]
        body = inputs.body(DecideBody)
        approvals = request.app[APPROVALS_KEY]
        identity = identity_of(request)
        if identity is not None:
            identity = require_role(request, Role.APPROVER, decision.value)
            if identity.source == "bootstrap" and body.actor:  # the shared token, used on someone's behalf
                identity = replace(identity, name=body.actor)
            approval = await approvals.decide(approval_id, decision, identity=identity)
        else:
            token = body.token if body.token is not None else inputs.query(ApprovalQuery).token
            try:
                await _linked_approval(request, approval_id, token)
            except LinkRefused as refusal:
                raise _api_refusal(refusal) from None
            approval = await approvals.decide(approval_id, decision, actor="link", token=token)
        request.app[RESPONDER_KEY].start_decision(approval)
        return json_model_response(ApprovalOut.of(approval))

    return decide


for _decision, _summary in (
    (Decision.APPROVE, "Approve a pending prompt (the watchdog then applies its plan)"),
    (Decision.DENY, "Deny a pending prompt (nothing is done; the incident is escalated)"),
):
    ROUTE_TABLE.route(
        f"POST /approvals/{{approval_id}}/{_decision.value}",
        _summary,
        query=ApprovalQuery,
        body=DecideBody,
        response=ApprovalOut,
        alt_auth=_LINK,
        errors=(403, 404, 409, 413, 415, 503),
    )(_decider(_decision))


# -- the page -------------------------------------------------------------------------------------------


@ROUTE_TABLE.route(
    "GET /approvals/{approval_id}",
    "The approval page: diagnosis, plan, approve and deny buttons; afterwards the result",
    prefixed=False,
    auth=False,
    alt_auth=_LINK,
    query=PageQuery,
    response_type="text/html",
    answers={403: _INVALID_LINK},
)
async def page(request: web.Request, inputs: Inputs) -> web.Response:
    """`GET /approvals/{id}?token=...`: the prompt, the buttons, and afterwards the result."""
    query = inputs.query(PageQuery)
    token = query.token or ""
    try:
        approval = await _linked_approval(request, inputs.path["approval_id"], query.token)
    except LinkRefused as refusal:
        return _html(403, "Invalid link", f"<p>{html.escape(refusal.detail)}</p>")
    approvals = request.app[APPROVALS_KEY]
    incident = await request.app[INCIDENTS_KEY].get(approval.incident_id)
    expired = approval.state == "pending" and approvals.clock.now() >= approval.expires_at
    signer = _Signer(identity_of(request), approvals.rule_for(approval))
    body = _render(
        approval, incident, token, query.notice or "", query.decision or "", expired=expired, signer=signer
    )
    link_settings = request.app.get(LINKS_KEY)
    if link_settings is not None:
        body += _links_html(links(incident, link_settings, now=approvals.clock.now()))
    acting = approval.state in ("approved", "used") and incident.status in IN_PROGRESS
    return _html(200, f"Approval {approval.id}", body, refresh_seconds=2 if acting else None)


@ROUTE_TABLE.route(
    "POST /approvals/{approval_id}",
    "The approval page's form: decide, then back to the page (303)",
    prefixed=False,
    auth=False,
    alt_auth=_LINK,
    ok_status=303,
    body=ApprovalForm,
    body_required=True,
    body_types=(FORM_TYPE,),
    raw_body=True,
    errors=(413, 415),
    answers={403: _INVALID_LINK},
)
async def page_decide(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    """The page's approve/deny form."""
    approval_id = inputs.path["approval_id"]
    form = await _form(request)
    try:
        await _linked_approval(request, approval_id, form.token)
    except LinkRefused as refusal:
        return _html(403, "Invalid link", f"<p>{html.escape(refusal.detail)}</p>")
    notice = ""
    try:
        approval = await request.app[APPROVALS_KEY].decide(
            approval_id, Decision(form.decision), identity=identity_of(request), token=form.token
        )
        if approval.state == "pending":
            votes = len(approval.votes or [])
            notice = f"Your approval is recorded ({votes} so far); a second approver is needed."
        else:
            request.app[RESPONDER_KEY].start_decision(approval)
    except (ApprovalClosed, ApproverRefused, SameApprover) as exc:
        notice = str(exc)
    location = f"/approvals/{quote(approval_id, safe='')}?token={quote(form.token)}"
    if notice:
        location += f"&notice={quote(notice)}"
    raise web.HTTPSeeOther(location)


async def _form(request: web.Request) -> ApprovalForm:
    """The form's fields, each given once (422 naming the field otherwise)."""
    body, _ = await read_body(request, (FORM_TYPE,))
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "bad_request", "the form is not valid URL-encoded UTF-8", field="") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise ApiError(422, "invalid_payload", f"{name}: may be given once", field=name)
        fields[name] = value
    return validate(ApprovalForm, fields, status=422, error="invalid_payload")


def _html(status: int, title: str, body: str, *, refresh_seconds: int | None = None) -> web.Response:
    # A meta refresh, not script: the progress page updates itself in browsers without JavaScript too.
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · gl-watchdog</title>{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; }}
td, th {{ text-align: left; padding: .2rem .6rem; vertical-align: top; }}
th {{ color: #555; font-weight: 600; }} code {{ background: #f3f3f3; padding: 0 .2rem; }}
.state {{ font-weight: 700; }} .notice {{ background: #fff3cd; padding: .5rem; }}
button {{ font-size: 1rem; padding: .5rem 1.2rem; margin-right: .5rem; cursor: pointer; }}
.approve {{ background: #1a7f37; color: #fff; border: 0; }}
.deny {{ background: #cf222e; color: #fff; border: 0; }}
</style></head><body><h1>{html.escape(title)}</h1>
{body}
</body></html>"""
    return web.Response(status=status, text=document, content_type="text/html")


def _e(value: Any) -> str:
    return html.escape(str(value))


@dataclass(frozen=True)
class _Signer:
    """Who looks at the page (the proxy's user, if any) and who the policy lets approve."""

    identity: Identity | None
    rule: ApprovalRule | None

    def html(self, approval: Approval) -> str:
        parts = []
        if self.identity is not None:
            who, role = _e(self.identity.actor), _e(self.identity.role)
            parts.append(f'<p id="signed-in">Signed in as <b>{who}</b> ({role}).</p>')
        if self.rule is not None and self.rule.approvers_required > 1:
            votes = approval.votes or []
            who = f" ({_e(', '.join(votes))})" if votes else ""
            parts.append(
                f'<p id="votes">{len(votes)} of {self.rule.approvers_required} approvals{who}: '
                "two different people must approve this plan.</p>"
            )
        if self.rule is not None and self.identity is None:
            parts.append(
                '<p class="notice" id="sign-in">This plan needs a signed-in approver (role '
                f"{_e(self.rule.role)} or higher): the link alone cannot approve it. Sign in through "
                "the company's login proxy and open this link again. You may still deny it.</p>"
            )
        return "\n".join(parts)

    @property
    def may_approve(self) -> bool:
        return self.rule is None or self.identity is not None


def _links_html(found: Links) -> str:
    """The incident's links (runbook, Grafana, trace, provenance, alert source) and what its alert said."""
    items = "".join(
        f'<li><a href="{_e(url)}" id="{name}-link" rel="noreferrer">{_e(LINK_TITLES[name])}</a></li>'
        for name, url in found.urls().items()
    )
    said = "".join(
        f'<p id="alert-{name}">{_e(text)}</p>'
        for name, text in (("summary", found.summary), ("description", found.description))
        if text
    )
    return f'\n<h2>Links</h2>{said}<ul id="links">{items}</ul>'


def _render(
    approval: Approval,
    incident: Incident,
    token: str,
    notice: str,
    preselected: str,
    *,
    expired: bool = False,
    signer: _Signer | None = None,
) -> str:
    plan = approval.plan
    params = ", ".join(f"{_e(k)}={_e(v)}" for k, v in plan.params.items())
    actions = "".join(f"<li>{_e(a.description)}</li>" for a in plan.actions)
    # past its expiry but not yet swept: expired; `used` is the store's word for "approved, acted on"
    shown_state = "expired" if expired else STATE_WORDS.get(approval.state, approval.state)
    parts = []
    if notice:
        parts.append(f'<p class="notice" id="notice">{_e(notice)}</p>')
    parts.append(
        f"""<table>
<tr><th>Incident</th><td>{_e(incident.id)} — execution <code>{_e(incident.execution_id)}</code></td></tr>
<tr><th>Diagnosis</th><td id="diagnosis">{_e(approval.summary)}</td></tr>
<tr><th>Plan</th><td id="plan"><code>{_e(plan.playbook)}({params})</code>,
 risk {_e(plan.risk)}</td></tr>
<tr><th>Why</th><td id="rationale">{_e(plan.rationale)}</td></tr>
<tr><th>Actions</th><td><ul id="actions">{actions or "<li>(none)</li>"}</ul></td></tr>
<tr><th>Expires</th><td>{_e(approval.expires_at.isoformat())}</td></tr>
<tr><th>Approval</th><td class="state" id="approval-state">{_e(shown_state)}</td></tr>
<tr><th>Incident status</th><td class="state" id="incident-status">{_e(incident.status)}</td></tr>
</table>"""
    )
    if expired:
        parts.append(
            f'<p id="decision">This prompt expired at {_e(approval.expires_at.isoformat())} without an '
            "answer: nothing will act on it, and the incident is escalated to on-call.</p>"
        )
    elif approval.state == "pending":
        signer = signer or _Signer(None, None)
        hint = f"<p>You followed the <b>{_e(preselected)}</b> link: confirm below.</p>" if preselected else ""
        approve = APPROVE_BUTTON if signer.may_approve else ""
        parts.append(
            f"""{signer.html(approval)}{hint}<form method="post" action="/approvals/{_e(approval.id)}">
<input type="hidden" name="token" value="{_e(token)}">
{approve}
<button class="deny" type="submit" name="decision" value="deny" id="deny">Deny</button>
</form>"""
        )
    else:
        decided = (
            f"{_e(shown_state)} by {_e(approval.decided_by)}" if approval.decided_by else _e(shown_state)
        )
        parts.append(f'<p id="decision">Decision: {decided}.</p>')
        result = incident.summary or ""
        parts.append(f'<h2>Result</h2><p id="result">{_e(result)}</p>')
        if incident.verification:
            checks = "".join(
                f"<tr><td>{_e(c.get('name'))}</td><td>{_e(c.get('status'))}</td><td>{_e(c.get('detail'))}</td></tr>"
                for c in incident.verification.get("checks", [])
            )
            parts.append(
                '<table id="verification"><tr><th>Check</th><th>Status</th><th>Detail</th></tr>'
                f"{checks}</table>"
            )
        if approval.state in ("approved", "used") and incident.status in IN_PROGRESS:
            parts.append('<p id="progress">Remediation in progress… (this page refreshes itself)</p>')
    return "\n".join(parts)
