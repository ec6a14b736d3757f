"""Where humans answer approval prompts: the approval API and the approval web page.

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)`, which
hands the handlers their services as AppKeys: the approval prompts (`watchdog.approvals`), the
responder that continues after a decision (`watchdog.responder`) and the incidents (the page shows
the remediation's progress and result). Routes:

    GET  /api/v1/approvals/{id}                 the prompt (bearer token, or ?token= link token)
    POST /api/v1/approvals/{id}/approve|deny    decide (bearer token, or the link token as ?token= or
                                                JSON {"token": ...}); 200 with the prompt, 403 bad
                                                token, 404 unknown, 409 already decided/expired
    GET  /approvals/{id}?token=...[&decision=]  the page: diagnosis, plan, approve and deny buttons;
                                                after a decision, the remediation's progress and result
    POST /approvals/{id}                        the page's form (token, decision) → 303 back to the page

A GET never decides (chat link unfurlers fetch links): the buttons POST. The link token is checked
by `watchdog.approvals` (HMAC, expiry, single use); these paths are public to the bearer-token
middleware because the token is their credential. Plain HTML, no JavaScript (a meta refresh while the
remediation runs); no external assets.
"""

from __future__ import annotations

import html
import json
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from watchdog.approvals import ApprovalService, Decision, public_view
from watchdog.errors import ApprovalClosed, ApprovalNotFound, InvalidToken
from watchdog.http import PUBLIC_PREFIXES_KEY, bearer_ok, json_error, unauthorized
from watchdog.incidents import IncidentService
from watchdog.records import Approval, Incident
from watchdog.responder import Responder

APPROVALS_KEY: Final = web.AppKey("approvals", ApprovalService)
RESPONDER_KEY: Final = web.AppKey("responder", Responder)
INCIDENTS_KEY: Final = web.AppKey("approval_incidents", IncidentService)
IN_PROGRESS: Final = ("awaiting_approval", "remediating", "verifying")
STATE_WORDS: Final = {"used": "approved (acted on)"}


def add_routes(
    app: web.Application, *, approvals: ApprovalService, responder: Responder, incidents: IncidentService
) -> None:
    """Add the approval API and page to `app` (built by `watchdog.http.new_application`)."""
    app[APPROVALS_KEY] = approvals
    app[RESPONDER_KEY] = responder
    app[INCIDENTS_KEY] = incidents
    app[PUBLIC_PREFIXES_KEY].extend(["/api/v1/approvals/", "/approvals/"])
    app.router.add_get("/api/v1/approvals/{approval_id}", api_get)
    app.router.add_post("/api/v1/approvals/{approval_id}/{decision}", api_decide)
    app.router.add_get("/approvals/{approval_id}", page)
    app.router.add_post("/approvals/{approval_id}", page_decide)


def _error(exc: Exception) -> web.Response:
    if isinstance(exc, ApprovalNotFound):
        return json_error(404, "not_found", str(exc))
    if isinstance(exc, InvalidToken):
        return json_error(403, "invalid_token", str(exc))
    if isinstance(exc, ApprovalClosed):
        return json_error(409, exc.state, str(exc))
    raise exc


# -- API ----------------------------------------------------------------------------------------------


async def api_get(request: web.Request) -> web.Response:
    """`GET /api/v1/approvals/{id}`."""
    approvals = request.app[APPROVALS_KEY]
    try:
        approval = await approvals.get(request.match_info["approval_id"])
        if not bearer_ok(request):
            token = request.query.get("token")
            if token is None:
                return _unauthorized()
            approvals.check_token(approval, token, allow_expired=True)
    except (ApprovalNotFound, InvalidToken) as exc:
        return _error(exc)
    return web.json_response(public_view(approval))


async def api_decide(request: web.Request) -> web.Response:
    """`POST /api/v1/approvals/{id}/approve|deny`."""
    raw = request.match_info["decision"]
    if raw not in ("approve", "deny"):
        return json_error(404, "not_found", f"no such action {raw!r}; use approve or deny")
    decision = Decision(raw)
    token = request.query.get("token")
    actor = "api"
    if request.can_read_body and request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return json_error(400, "malformed_json", f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return json_error(400, "bad_request", "request body must be a JSON object")
        token = body.get("token", token)
        if body.get("actor") is not None:
            actor = f"api:{str(body['actor'])[:100]}"
    if token is None and not bearer_ok(request):
        return _unauthorized()
    authenticated = token is None
    try:
        approval = await request.app[APPROVALS_KEY].decide(
            request.match_info["approval_id"],
            decision,
            actor=actor if authenticated else "link",
            token=None if authenticated else str(token),
            authenticated=authenticated,
        )
    except (ApprovalNotFound, InvalidToken, ApprovalClosed) as exc:
        return _error(exc)
    request.app[RESPONDER_KEY].start_decision(approval)
    return web.json_response(public_view(approval))


def _unauthorized() -> web.Response:
    return unauthorized("bearer token or approval link token required")


# -- the page -------------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.Response:
    """`GET /approvals/{id}?token=...`: the prompt, the buttons, and afterwards the result."""
    approvals = request.app[APPROVALS_KEY]
    approval_id = request.match_info["approval_id"]
    token = request.query.get("token", "")
    try:
        approval = await approvals.get(approval_id)
        approvals.check_token(approval, token, allow_expired=True)
    except ApprovalNotFound:
        return _html(404, "Approval not found", "<p>No such approval prompt.</p>")
    except InvalidToken as exc:
        return _html(403, "Invalid link", f"<p>{html.escape(str(exc))}</p>")
    incident = await request.app[INCIDENTS_KEY].get(approval.incident_id)
    notice = request.query.get("notice", "")
    expired = approval.state == "pending" and approvals.clock.now() >= approval.expires_at
    body = _render(approval, incident, token, notice, request.query, expired=expired)
    acting = approval.state in ("approved", "used") and incident.status in IN_PROGRESS
    return _html(200, f"Approval {approval.id}", body, refresh_seconds=2 if acting else None)


async def page_decide(request: web.Request) -> web.StreamResponse:
    """The page's approve/deny form."""
    approval_id = request.match_info["approval_id"]
    form = await request.post()
    token = str(form.get("token", ""))
    raw = str(form.get("decision", ""))
    if raw not in ("approve", "deny"):
        return _html(400, "Bad request", "<p>decision must be approve or deny.</p>")
    notice = ""
    try:
        approval = await request.app[APPROVALS_KEY].decide(
            approval_id, Decision(raw), actor="web", token=token
        )
        request.app[RESPONDER_KEY].start_decision(approval)
    except ApprovalNotFound:
        return _html(404, "Approval not found", "<p>No such approval prompt.</p>")
    except InvalidToken as exc:
        return _html(403, "Invalid link", f"<p>{html.escape(str(exc))}</p>")
    except ApprovalClosed as exc:
        notice = str(exc)
    location = f"/approvals/{quote(approval_id, safe='')}?token={quote(token)}"
    if notice:
        location += f"&notice={quote(notice)}"
    raise web.HTTPSeeOther(location)


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


def _render(
    approval: Approval, incident: Incident, token: str, notice: str, query: Any, *, expired: bool = False
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
        preselected = query.get("decision", "")
        hint = f"<p>You followed the <b>{_e(preselected)}</b> link: confirm below.</p>" if preselected else ""
        parts.append(
            f"""{hint}<form method="post" action="/approvals/{_e(approval.id)}">
<input type="hidden" name="token" value="{_e(token)}">
<button class="approve" type="submit" name="decision" value="approve" id="approve">Approve</button>
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
