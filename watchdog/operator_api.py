"""The operator API: what people do through the service, by identity and role (issue 13).

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)`, which
hands the handlers their services as AppKeys; each route is declared on `ROUTE_TABLE` with the models
of `watchdog.api_models` (validated before the handler; in the OpenAPI document `watchdog.api`
builds). The auth middleware (`watchdog.http`) has given the request its identity; each handler asks
`require_role` for the role its action needs (403 naming it). Every decision goes through the same
services as the automatic path (approvals and the responder: policy, state machine, budgets, audit)
and is audited with the identity's `actor` (`token:alice`, `proxy:alice@example.com`).

    POST   /api/v1/incidents/{id}/approve   approver  the incident's pending approval, by identity
    POST   /api/v1/incidents/{id}/deny      approver  {"reason"?}; 200 {approval, approvals_required,
                                                      actor}: `pending` after the first vote of a
                                                      two-person approval; 409 none pending, or the
                                                      same approver twice
    POST   /api/v1/incidents/{id}/playbooks/{playbook}
                                            operator  {"params": {}, "dry_run": false} → 202
                                                      {remediation_id, incident_id, state, events}:
                                                      `started` (the service runs it: the one registry,
                                                      plugins included; budgets, breaker, audit), or
                                                      `awaiting_approval` with `approval` when the
                                                      policy's approval rule needs more than the
                                                      requester (who votes, when allowed); dry_run →
                                                      200 {state: dry_run, precheck, actions}
    GET    /api/v1/incidents/{id}/events    viewer    ?after=<seq>&limit= → {items: [{seq, at, actor,
                                                      kind, phase, data}], next_after, incident_status,
                                                      final}; `Accept: text/event-stream`: server-sent
                                                      events until the incident is closed (bounded)
    POST   /api/v1/sweeps                   operator  one sweep now → 202 {sweep: done, report}
    GET    /api/v1/policy                   viewer    the loaded policy and the plugins
    GET    /api/v1/modes                    viewer    the mode, each playbook's, `live: false` (no PUT:
                                                      the mode is configuration; `observe` is the
                                                      kill switch)
    POST   /api/v1/replay                   viewer    {incident_id | since: "7d", policy: <YAML>} →
                                                      what that policy would plan; acts on nothing
    GET    /api/v1/whoami                   viewer    the caller's identity {name, role, source, groups,
                                                      email, actor}
    POST   /api/v1/tokens                   admin     {name, role} → 201 {name, role, token} (shown once)
    GET    /api/v1/tokens                   admin     {items: [{name, role, created_at, created_by,
                                                      revoked_at, last_used_at}]}
    DELETE /api/v1/tokens/{name}            admin     revoke (refused with 401 from then on)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from aiohttp import web

from gl_common.http import ApiError, json_model_response
from gl_common.openapi import Inputs, RouteTable
from watchdog.api_models import (
    PATH_PARAMS,
    ApprovalOut,
    IncidentDecision,
    IncidentDecisionBody,
    TokenCreateBody,
    TokenCreated,
    TokenList,
    TokenOut,
)
from watchdog.approvals import ApprovalService, Decision
from watchdog.errors import IncidentError, IncidentNotFound, PolicyError, RequestRefused, UnknownPlaybook
from watchdog.events import StreamLimits, event_json, page_events, resumed_after, stream_events, wants_stream
from watchdog.identity import Role, require_role
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.operator_models import (
    EventOut,
    EventPage,
    EventsQuery,
    ModesOut,
    PlaybookName,
    PlaybookRunBody,
    PlaybookRunOut,
    PluginsOut,
    PolicyOut,
    PrecheckOut,
    ReplayBody,
    ReplayOut,
    SweepOut,
    WhoAmI,
)
from watchdog.playbook_requests import PlaybookRequest, PlaybookRequests, Requester
from watchdog.plugins import PluginCatalog
from watchdog.policy import Policy, parse_policy_text
from watchdog.remediation import RemediationService
from watchdog.replay import Replay, replay_incident, replay_window
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog.sweeps import Sweeper
from watchdog.tokens import ApiToken, TokenNameTaken, TokenNotFound, TokenStore
from watchdog_sdk.errors import PlaybookError

WINDOW_UNITS: Final = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class Operations:
    """What the operator routes act through: the same services as the automatic path."""

    tokens: TokenStore
    approvals: ApprovalService
    responder: Responder
    incidents: IncidentService
    remediation: RemediationService
    jobs: JobTracker
    sweeper: Sweeper
    policy: Policy
    policy_source: str
    plugins: PluginCatalog
    mode: Mode
    stream_limits: StreamLimits = field(default_factory=StreamLimits)

    @property
    def requests(self) -> PlaybookRequests:
        """Playbooks asked for by people, through these services (`watchdog.playbook_requests`)."""
        return PlaybookRequests(
            self.remediation,
            self.incidents,
            self.approvals,
            self.responder,
            self.jobs,
            self.policy,
            self.mode,
        )


OPS_KEY: Final = web.AppKey("operations", Operations)

ROUTE_TABLE = RouteTable(
    "/api/v1", path_params={**PATH_PARAMS, "playbook": PlaybookName}, body_invalid=(422, "invalid_payload")
)
_ROLE_ERRORS: Final = (403,)


def add_routes(app: web.Application, operations: Operations) -> None:
    """Add the operator API to `app` (built by `watchdog.http.new_application`)."""
    app[OPS_KEY] = operations
    ROUTE_TABLE.install(app)


# -- decisions by identity ------------------------------------------------------------------------------


_DECISION_ERRORS: Final = (*_ROLE_ERRORS, 404, 409, 413, 415, 503)


@ROUTE_TABLE.route(
    "POST /incidents/{incident_id}/approve",
    "Approve the incident's pending approval as the caller (role approver or higher)",
    body=IncidentDecisionBody,
    response=IncidentDecision,
    errors=_DECISION_ERRORS,
)
async def approve_incident(request: web.Request, inputs: Inputs) -> web.Response:
    return await _decide_incident(request, inputs, Decision.APPROVE)


@ROUTE_TABLE.route(
    "POST /incidents/{incident_id}/deny",
    "Deny the incident's pending approval as the caller (role approver or higher)",
    body=IncidentDecisionBody,
    response=IncidentDecision,
    errors=_DECISION_ERRORS,
)
async def deny_incident(request: web.Request, inputs: Inputs) -> web.Response:
    return await _decide_incident(request, inputs, Decision.DENY)


async def _decide_incident(request: web.Request, inputs: Inputs, decision: Decision) -> web.Response:
    """The incident's pending approval, decided by the caller's identity (a vote of a two-person one)."""
    identity = require_role(request, Role.APPROVER, decision.value)
    incident_id = int(inputs.path["incident_id"])
    incident = await request.app[OPS_KEY].incidents.get(incident_id)  # 404 before anything else
    approvals = request.app[OPS_KEY].approvals
    pending = await approvals.pending_of(incident_id)
    if pending is None:
        raise ApiError(
            409,
            "no_pending_approval",
            f"incident {incident_id} has no pending approval (it is {incident.status})",
        )
    body = inputs.body(IncidentDecisionBody)
    approval = await approvals.decide(pending.id, decision, identity=identity, reason=body.reason)
    if approval.state != "pending":
        request.app[OPS_KEY].responder.start_decision(approval)
    rule = approvals.rule_for(approval)
    required = rule.approvers_required if rule is not None and decision is Decision.APPROVE else 1
    answer = IncidentDecision(
        approval=ApprovalOut.of(approval), approvals_required=required, actor=identity.actor
    )
    return json_model_response(answer)


@ROUTE_TABLE.route("GET /whoami", "The caller's identity and role", response=WhoAmI)
async def whoami(request: web.Request, inputs: Inputs) -> web.Response:
    identity = require_role(request, Role.VIEWER, "see who you are")
    return json_model_response(WhoAmI.model_validate(identity.as_json()))


# -- named tokens ---------------------------------------------------------------------------------------


def _token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        name=token.name,
        role=token.role.value,
        created_at=token.created_at,
        created_by=token.created_by,
        revoked_at=token.revoked_at,
        last_used_at=token.last_used_at,
    )


@ROUTE_TABLE.route(
    "POST /tokens",
    "Create a named API token with a role (admin); the token is in this answer only",
    ok_status=201,
    body=TokenCreateBody,
    body_required=True,
    response=TokenCreated,
    errors=(*_ROLE_ERRORS, 409, 413, 415, 503),
)
async def create_token(request: web.Request, inputs: Inputs) -> web.Response:
    identity = require_role(request, Role.ADMIN, "create tokens")
    spec = inputs.body(TokenCreateBody)
    try:
        record, token = await request.app[OPS_KEY].tokens.create(
            spec.name, Role(spec.role), created_by=identity.actor
        )
    except TokenNameTaken as exc:
        raise ApiError(409, "conflict", str(exc), field="name") from None
    response = json_model_response(TokenCreated(name=record.name, role=record.role.value, token=token), 201)
    response.headers["Cache-Control"] = "no-store"
    return response


@ROUTE_TABLE.route(
    "GET /tokens",
    "The named API tokens, revoked ones too (admin; never the tokens themselves)",
    response=TokenList,
    errors=(*_ROLE_ERRORS, 503),
)
async def list_tokens(request: web.Request, inputs: Inputs) -> web.Response:
    require_role(request, Role.ADMIN, "list tokens")
    tokens = await request.app[OPS_KEY].tokens.list()
    return json_model_response(TokenList(items=[_token_out(token) for token in tokens]))


@ROUTE_TABLE.route(
    "DELETE /tokens/{name}",
    "Revoke a named API token (admin): refused with 401 from now on",
    response=TokenOut,
    errors=(*_ROLE_ERRORS, 404, 503),
)
async def revoke_token(request: web.Request, inputs: Inputs) -> web.Response:
    identity = require_role(request, Role.ADMIN, "revoke tokens")
    try:
        revoked = await request.app[OPS_KEY].tokens.revoke(inputs.path["name"], revoked_by=identity.actor)
    except TokenNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return json_model_response(_token_out(revoked))


# -- playbooks, events, sweeps ------------------------------------------------------------------------


@ROUTE_TABLE.route(
    "POST /incidents/{incident_id}/playbooks/{playbook}",
    "Run a playbook on the incident's execution through the service (operator), or show its plan (dry_run)",
    ok_status=202,
    body=PlaybookRunBody,
    response=PlaybookRunOut,
    errors=(*_ROLE_ERRORS, 404, 409, 413, 415, 422, 503),
)
async def run_playbook(request: web.Request, inputs: Inputs) -> web.Response:
    identity = require_role(request, Role.OPERATOR, "run playbooks")
    ops = request.app[OPS_KEY]
    incident = await ops.incidents.get(int(inputs.path["incident_id"]))
    body = inputs.body(PlaybookRunBody)
    requester = Requester(identity.actor, identity)
    try:
        asked = ops.requests.request(incident, inputs.path["playbook"], body.params, requester, via="the API")
    except UnknownPlaybook as exc:
        raise ApiError(404, "not_found", str(exc), field="playbook") from None
    except PlaybookError as exc:
        raise ApiError(422, "invalid_payload", str(exc), field="params") from None
    if body.dry_run:
        precheck, actions = await asked.preview()
        checked = PrecheckOut(ok=precheck.ok, reason=precheck.reason)
        return json_model_response(
            _run_answer(asked, None, "dry_run", precheck=checked, actions=actions), 200
        )
    try:
        done = await asked.submit()
    except RequestRefused as exc:
        code = "preconditions_refused" if exc.problem == "preconditions" else "conflict"
        raise ApiError(409, code, str(exc)) from None
    approval = ApprovalOut.of(done.approval) if done.approval is not None else None
    return json_model_response(_run_answer(asked, done.remediation_id, done.state, approval=approval), 202)


def _run_answer(
    asked: PlaybookRequest, remediation_id: str | None, state: str, **more: Any
) -> PlaybookRunOut:
    return PlaybookRunOut.model_validate(
        {
            "remediation_id": remediation_id,
            "incident_id": asked.incident.id,
            "playbook": asked.playbook.name,
            "state": state,
            "params": asked.params,
            "events": f"/api/v1/incidents/{asked.incident.id}/events",
            **more,
        }
    )


@ROUTE_TABLE.route(
    "GET /incidents/{incident_id}/events",
    "The incident's audit log as events after a seq; `Accept: text/event-stream` streams them",
    query=EventsQuery,
    response=EventPage,
    errors=(404, 503),
)
async def incident_events(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    query = inputs.query(EventsQuery)
    incident_id = int(inputs.path["incident_id"])
    store = request.app[OPS_KEY].incidents.store
    if wants_stream(request):
        ops = request.app[OPS_KEY]
        after = resumed_after(request, query.after)
        return await stream_events(
            request, store, ops.approvals.clock, incident_id, after=after, limits=ops.stream_limits
        )
    page = await page_events(store, incident_id, after=query.after, limit=query.limit)
    answer = EventPage(
        items=[EventOut.model_validate(event_json(entry)) for entry in page.entries],
        next_after=page.next_after,
        incident_status=page.incident.status,
        final=page.final,
    )
    return json_model_response(answer)


@ROUTE_TABLE.route(
    "POST /sweeps",
    "Sweep now (operator): find stuck executions and open their incidents (the sweep leader only)",
    ok_status=202,
    response=SweepOut,
    errors=(*_ROLE_ERRORS, 503),
)
async def sweep_now(request: web.Request, inputs: Inputs) -> web.Response:
    require_role(request, Role.OPERATOR, "sweep")
    report = await request.app[OPS_KEY].sweeper.sweep_once()
    return json_model_response(SweepOut(sweep="done", report=report.as_json()), 202)


# -- policy, modes, replay ----------------------------------------------------------------------------


@ROUTE_TABLE.route("GET /policy", "The loaded policy and the plugins", response=PolicyOut, errors=(503,))
async def get_policy(request: web.Request, inputs: Inputs) -> web.Response:
    ops = request.app[OPS_KEY]
    plugins = PluginsOut(
        playbooks=sorted(ops.plugins.registry.names()),
        steps=[step.name for step in ops.plugins.steps],
        problems=[{"group": p.group, "name": p.name, "reason": p.reason} for p in ops.plugins.problems],
    )
    answer = PolicyOut(source=ops.policy_source, policy=ops.policy.model_dump(mode="json"), plugins=plugins)
    return json_model_response(answer)


@ROUTE_TABLE.route(
    "GET /modes",
    "The remediation mode and each playbook's (set by configuration; no live switch to PUT)",
    response=ModesOut,
)
async def get_modes(request: web.Request, inputs: Inputs) -> web.Response:
    ops = request.app[OPS_KEY]
    playbooks = {
        name: ops.policy.effective_mode(ops.mode, name).value
        for name in sorted(ops.remediation.registry.names())
    }
    answer = ModesOut(
        mode=ops.mode.value,
        playbooks=playbooks,
        live=False,
        kill_switch="set GL_WATCHDOG_MODE=observe and restart: nothing acts, approved prompts included",
    )
    return json_model_response(answer)


@ROUTE_TABLE.route(
    "POST /replay",
    "What a policy would plan for a stored incident (or every one in a window); acts on nothing",
    body=ReplayBody,
    body_required=True,
    response=ReplayOut,
    errors=(404, 409, 413, 415, 422, 503),
)
async def replay(request: web.Request, inputs: Inputs) -> web.Response:
    ops = request.app[OPS_KEY]
    body = inputs.body(ReplayBody)
    try:
        policy = parse_policy_text(body.policy, source="policy", catalog=ops.plugins)
    except PolicyError as exc:
        raise ApiError(422, "invalid_payload", str(exc), field="policy") from None
    store, registry, clock = ops.incidents.store, ops.plugins.registry, ops.approvals.clock
    replays: list[Replay]
    if body.incident_id is not None:
        try:
            one = await replay_incident(
                store, body.incident_id, policy=policy, registry=registry, mode=ops.mode, clock=clock
            )
        except IncidentNotFound:
            raise
        except IncidentError as exc:  # never diagnosed
            raise ApiError(409, "conflict", str(exc)) from None
        replays = [one]
    else:
        window = _window(body.since or "")
        replays = await replay_window(
            store, window, policy=policy, registry=registry, mode=ops.mode, clock=clock
        )
    answer = ReplayOut(items=[r.to_dict() for r in replays], changed=sum(r.changed for r in replays))
    return json_model_response(answer)


def _window(text: str) -> timedelta:
    """`7d`, `12h`, `30m` (the model has checked the shape)."""
    return timedelta(**{WINDOW_UNITS[text[-1]]: int(text[:-1])})
