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
    POST   /api/v1/tokens                   admin     {name, role} → 201 {name, role, token} (shown once)
    GET    /api/v1/tokens                   admin     {items: [{name, role, created_at, created_by,
                                                      revoked_at, last_used_at}]}
    DELETE /api/v1/tokens/{name}            admin     revoke (refused with 401 from then on)
"""

from __future__ import annotations

from typing import Final

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
from watchdog.identity import Role, require_role
from watchdog.incidents import IncidentService
from watchdog.responder import Responder
from watchdog.tokens import ApiToken, TokenNameTaken, TokenNotFound, TokenStore

TOKENS_KEY: Final = web.AppKey("named_tokens", TokenStore)
APPROVALS_KEY: Final = web.AppKey("operator_approvals", ApprovalService)
RESPONDER_KEY: Final = web.AppKey("operator_responder", Responder)
INCIDENTS_KEY: Final = web.AppKey("operator_incidents", IncidentService)

ROUTE_TABLE = RouteTable("/api/v1", path_params=PATH_PARAMS, body_invalid=(422, "invalid_payload"))
_ROLE_ERRORS: Final = (403,)


def add_routes(
    app: web.Application,
    *,
    tokens: TokenStore,
    approvals: ApprovalService,
    responder: Responder,
    incidents: IncidentService,
) -> None:
    """Add the operator API to `app` (built by `watchdog.http.new_application`)."""
    app[TOKENS_KEY] = tokens
    app[APPROVALS_KEY] = approvals
    app[RESPONDER_KEY] = responder
    app[INCIDENTS_KEY] = incidents
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
    incident = await request.app[INCIDENTS_KEY].get(incident_id)  # 404 before anything else
    approvals = request.app[APPROVALS_KEY]
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
        request.app[RESPONDER_KEY].start_decision(approval)
    rule = approvals.rule_for(approval)
    required = rule.approvers_required if rule is not None and decision is Decision.APPROVE else 1
    answer = IncidentDecision(
        approval=ApprovalOut.of(approval), approvals_required=required, actor=identity.actor
    )
    return json_model_response(answer)


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
        record, token = await request.app[TOKENS_KEY].create(
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
    tokens = await request.app[TOKENS_KEY].list()
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
        revoked = await request.app[TOKENS_KEY].revoke(inputs.path["name"], revoked_by=identity.actor)
    except TokenNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return json_model_response(_token_out(revoked))
