"""The watchdog's HTTP API (aiohttp): the Alertmanager webhook, incidents, the OpenAPI document,
metrics, health.

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)`, which
hands the handlers their services as AppKeys (the intake, the incident service, the diagnosis jobs,
the store, the metrics) and installs `ROUTE_TABLE`. Each handler declares its route on that
`gl_common.openapi.RouteTable` with the models of `watchdog.api_models`: the table registers the
route, validates every request against those models before the handler runs, and — with the
approval routes of `watchdog.web` — makes the OpenAPI document served at `GET /api/v1/openapi.json`.
Served by `gl-watchdog serve` (`watchdog.cli`) and by tests on loopback.

Every route of the watchdog's app, with the least role it needs (viewer < approver < operator <
admin; `watchdog.identity`; 403 naming the role needed):

    POST /api/v1/alerts                    operator  Alertmanager webhook v4 (`watchdog.intake`)
    GET  /api/v1/incidents                 viewer    a page of incidents, newest first: filters
                                                     status, dag_id, execution_id, cause,
                                                     opened_after/before, held; limit, cursor
    POST /api/v1/incidents                 operator  {"execution_id", "dag_id"?}: open (or join)
                                                     manually, diagnose
    GET  /api/v1/incidents/{id}            viewer    incident with diagnosis, plan, verification,
                                                     actions, approvals and audit
    POST /api/v1/incidents/{id}/diagnose   operator  (re-)diagnose an open incident (202)
    POST /api/v1/incidents/{id}/approve    approver  the incident's pending approval, by identity
    POST /api/v1/incidents/{id}/deny       approver  (`watchdog.operator_api`; two-person approval)
    POST /api/v1/incidents/{id}/playbooks/{playbook}
                                           operator  {params, dry_run} → 202 {remediation_id, state}:
                                                     run by the service, or proposed for approval
                                                     where the policy's rule asks (dry_run: 200)
    GET  /api/v1/incidents/{id}/events     viewer    ?after=<seq> → {items, next_after}; or
                                                     `Accept: text/event-stream` (bounded stream)
    POST /api/v1/sweeps                    operator  sweep now → 202 {sweep, report}
    GET  /api/v1/policy                    viewer    the loaded policy and plugins
    GET  /api/v1/modes                     viewer    the modes (configuration: no PUT)
    POST /api/v1/replay                    viewer    {incident_id | since, policy: <YAML>} → plans
    GET  /api/v1/whoami                    viewer    the caller's identity and role
    POST /api/v1/tokens                    admin     {name, role} → 201 {name, role, token}
    GET  /api/v1/tokens                    admin     the named tokens (never the tokens)
    DELETE /api/v1/tokens/{name}           admin     revoke
    GET  /api/v1/approvals/{id}            viewer    the prompt (or its link token)  (`watchdog.web`)
    POST /api/v1/approvals/{id}/approve|deny  approver  (or the link token where the policy allows)
    GET  /api/v1/openapi.json              viewer    the OpenAPI document of every route
    GET  /metrics                          -         gl_watchdog_* (no auth)
    GET  /healthz, /readyz                 -         liveness; readiness = the store answers, and
                                                     which optional dependency is degraded
                                                     (`watchdog.readiness`; no auth)

Auth and errors: `watchdog.http` (identity before any validation or lookup: a bootstrap or named
bearer token, or a trusted proxy's identity headers; JSON errors).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from aiohttp import web

from gl_common.http import (
    ApiError,
    bad_request,
    decode_cursor,
    encode_cursor,
    json_model_response,
    parse_json,
    read_body,
)
from gl_common.openapi import OPENAPI_KEY, Answer, Inputs, Route, RouteTable, build_document, serve_document
from watchdog import operator_api, slack
from watchdog import web as approval_web
from watchdog.api_models import (
    PATH_PARAMS,
    ActionOut,
    AlertsAnswer,
    ApprovalOut,
    AuditOut,
    DiagnosisStarted,
    EmptyBody,
    Health,
    IncidentDetailOut,
    IncidentListItem,
    IncidentListQuery,
    IncidentOut,
    IncidentPage,
    OpenedIncident,
    OpenIncidentBody,
    Ready,
)
from watchdog.diagnosis import DIAGNOSABLE, DiagnosisService
from watchdog.errors import InvalidTransition, StoreError
from watchdog.identity import Role, require_role
from watchdog.incidents import IncidentDetail, IncidentService
from watchdog.intake import AlertIntake
from watchdog.listing import IncidentFilter, page_incidents
from watchdog.metrics import CONTENT_TYPE, WatchdogMetrics
from watchdog.readiness import DependencyMonitor
from watchdog.store import WatchdogStore
from watchdog.webhook import AmWebhook, validate_payload

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
API_TITLE: Final = "gl-watchdog"
API_VERSION: Final = "1"
CURSOR_PURPOSE: Final = "gl-watchdog incidents"
GAUGE_REFRESH_TIMEOUT_SECONDS: Final = 2.0  # a scrape waits at most this long for the store's counts

INTAKE_KEY: Final = web.AppKey("intake", AlertIntake)
INCIDENTS_KEY: Final = web.AppKey("incidents", IncidentService)
DIAGNOSIS_KEY: Final = web.AppKey("diagnosis", DiagnosisService)
STORE_KEY: Final = web.AppKey("store", WatchdogStore)
METRICS_KEY: Final = web.AppKey("metrics", WatchdogMetrics)
READINESS_KEY: Final = web.AppKey("readiness", DependencyMonitor)

ROUTE_TABLE = RouteTable(API_PREFIX, path_params=PATH_PARAMS, body_invalid=(422, "invalid_payload"))
_READ = (404, 503)
_ACT = (403, 404, 409, 413, 415, 503)


def detail_out(detail: IncidentDetail) -> IncidentDetailOut:
    """`GET /api/v1/incidents/{id}`: the incident and all that is recorded about it."""
    incident = detail.incident
    return IncidentDetailOut(
        **IncidentOut.of(incident).model_dump(),
        diagnosis=incident.diagnosis,
        plan=incident.plan,
        verification=incident.verification,
        actions=[ActionOut.of(action) for action in detail.actions],
        approvals=[ApprovalOut.of(approval) for approval in detail.approvals],  # never the nonce
        audit=[AuditOut.of(entry) for entry in detail.audit],
    )


# -- handlers (each declares its route: method, path under API_PREFIX, summary, models) ------------


@ROUTE_TABLE.route(
    "POST /alerts",
    "Alertmanager webhook (payload version 4): open, join or close incidents",
    body=AmWebhook,
    body_required=True,
    raw_body=True,
    response=AlertsAnswer,
    errors=(403, 413, 415, 422, 503),
)
async def post_alerts(request: web.Request, inputs: Inputs) -> web.Response:
    """Alertmanager webhook: validate everything, apply the valid alerts, answer once durably written."""
    require_role(request, Role.OPERATOR, "post alerts")
    body, _ = await read_body(request)
    if not body:
        raise ApiError(400, "malformed_json", "request body is not valid JSON: the body is empty", field="")
    parsed = validate_payload(parse_json(body))  # parsed once: depth, size and lone surrogates first
    for rejection in parsed.rejected:
        request.app[METRICS_KEY].alerts_rejected.inc()
        log.warning("alert rejected, the rest of its payload applied: %s", rejection.problem)
    outcomes = await request.app[INTAKE_KEY].handle(parsed.payload)
    return web.json_response(
        {
            "status": "partial"
            if parsed.rejected or any(o.outcome == "conflict" for o in outcomes)
            else "ok",
            "alerts": [o.as_json() for o in outcomes],
            "rejected": [r.as_json() for r in parsed.rejected],
        }
    )


@ROUTE_TABLE.route(
    "GET /incidents",
    "List incidents: server-side filters, newest first, keyset pages with an exact total",
    query=IncidentListQuery,
    response=IncidentPage,
    errors=(503,),
)
async def list_incidents(request: web.Request, inputs: Inputs) -> web.Response:
    query = inputs.query(IncidentListQuery)
    filters = query.filters()
    before = None
    if query.cursor is not None:
        before = decode_cursor(query.cursor, filters, purpose=CURSOR_PURPOSE).get("before")
        if type(before) is not int or before < 1:
            raise bad_request("cursor: not a cursor of this listing (use next_cursor as given)", "cursor")
    where = IncidentFilter(
        statuses=tuple(dict.fromkeys(query.status)) if query.status else None,
        dag_id=query.dag_id,
        execution_id=query.execution_id,
        likely_cause=query.cause,
        opened_after=query.opened_after,
        opened_before=query.opened_before,
        held=query.held,
    )
    page = await page_incidents(request.app[STORE_KEY], where, before=before, limit=query.limit)
    next_cursor = None
    if page.next_before is not None:
        next_cursor = encode_cursor({"before": page.next_before}, filters, purpose=CURSOR_PURPOSE)
    return json_model_response(
        IncidentPage(
            items=[
                IncidentListItem.listed(incident, page.pending_approvals.get(incident.id))
                for incident in page.incidents
            ],
            next_cursor=next_cursor,
            total=page.total,
        )
    )


@ROUTE_TABLE.route(
    "POST /incidents",
    "Open the incident of an execution by hand (or join its open one) and diagnose it",
    ok_status=201,
    body=OpenIncidentBody,
    body_required=True,
    response=OpenedIncident,
    errors=(403, 413, 415, 503),
    answers={200: Answer("joined: the execution already has an open incident", OpenedIncident)},
)
async def open_incident(request: web.Request, inputs: Inputs) -> web.Response:
    identity = require_role(request, Role.OPERATOR, "open incidents")
    spec = inputs.body(OpenIncidentBody)
    result = await request.app[INCIDENTS_KEY].open_or_join(
        spec.execution_id, dag_id=spec.dag_id, source="manual", detection_source="api", actor=identity.actor
    )
    if result.created:
        request.app[DIAGNOSIS_KEY].start(result.incident)
    answer = OpenedIncident(incident=IncidentOut.of(result.incident), created=result.created)
    return json_model_response(answer, status=201 if result.created else 200)


@ROUTE_TABLE.route(
    "GET /incidents/{incident_id}",
    "One incident with its diagnosis, plan, verification, actions, approval prompts and audit log",
    response=IncidentDetailOut,
    errors=_READ,
)
async def get_incident(request: web.Request, inputs: Inputs) -> web.Response:
    detail = await request.app[INCIDENTS_KEY].detail(int(inputs.path["incident_id"]))
    return json_model_response(detail_out(detail))


@ROUTE_TABLE.route(
    "POST /incidents/{incident_id}/diagnose",
    "(Re-)diagnose an open incident in the background",
    ok_status=202,
    body=EmptyBody,
    response=DiagnosisStarted,
    errors=_ACT,
)
async def diagnose_incident(request: web.Request, inputs: Inputs) -> web.Response:
    require_role(request, Role.OPERATOR, "diagnose")
    incident = await request.app[INCIDENTS_KEY].get(int(inputs.path["incident_id"]))
    if incident.status not in DIAGNOSABLE:
        raise InvalidTransition(
            incident.id,
            incident.status,
            "diagnosing",
            f"incident {incident.id} is {incident.status}; only an open incident is diagnosed",
        )
    request.app[DIAGNOSIS_KEY].start(incident)
    return json_model_response(DiagnosisStarted(incident=IncidentOut.of(incident), diagnosis="started"), 202)


serve_document(ROUTE_TABLE)


@ROUTE_TABLE.route(
    "GET /metrics",
    "Prometheus exposition (gl_watchdog_*)",
    auth=False,
    prefixed=False,
    response_type="text/plain",
)
async def metrics_page(request: web.Request, inputs: Inputs) -> web.Response:
    """Prometheus exposition of the watchdog's own registry, store-wide gauges read fresh.

    A slow or unreachable store never fails the scrape (that would hide every other series): the
    gauges keep their last values and the problem is logged (and `/readyz` reports it).
    """
    try:
        async with asyncio.timeout(GAUGE_REFRESH_TIMEOUT_SECONDS):
            await request.app[INCIDENTS_KEY].refresh_gauges()
    except TimeoutError:
        log.warning(
            "gauges not refreshed: the store did not answer within %ss", GAUGE_REFRESH_TIMEOUT_SECONDS
        )
    except StoreError as exc:
        log.warning("gauges not refreshed: %s", exc)
    body = request.app[METRICS_KEY].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@ROUTE_TABLE.route(
    "GET /healthz", "Liveness: the process answers", auth=False, prefixed=False, response=Health
)
async def healthz(request: web.Request, inputs: Inputs) -> web.Response:
    return json_model_response(Health(status="ok"))


@ROUTE_TABLE.route(
    "GET /readyz",
    "Readiness: 200 `ready`, or `degraded` naming the optional dependencies (Redis, Prometheus, the "
    "orchestrator, Kubernetes) that did not answer their last check and the plugins left out at start "
    "(`plugin:<name>`, the reason under `plugins`); 503 only without the store",
    auth=False,
    prefixed=False,
    response=Ready,
    answers={503: Answer("not ready: the store does not answer; `dependencies` says what each check saw")},
)
async def readyz(request: web.Request, inputs: Inputs) -> web.Response:
    readiness = await request.app[READINESS_KEY].readiness()
    if not readiness.ready:
        detail = f"store not reachable: {readiness.dependencies['store'].detail}"
        state = readiness.as_json()
        del state["status"]  # the error body's `error` says not_ready
        raise ApiError(503, "not_ready", detail, **state)
    return json_model_response(Ready.model_validate(readiness.as_json()))


# -- the document and the app -----------------------------------------------------------------------

# Every route of the watchdog's app, in declaration order: this module's, the approval routes, the
# operator API's.
ROUTES: tuple[Route, ...] = (
    *ROUTE_TABLE.routes(),
    *approval_web.ROUTE_TABLE.routes(),
    *operator_api.ROUTE_TABLE.routes(),
    *slack.ROUTE_TABLE.routes(),
)


def build_openapi() -> dict[str, Any]:
    """The OpenAPI document of the watchdog's app (served at `GET /api/v1/openapi.json`)."""
    return build_document(
        ROUTES,
        title=API_TITLE,
        version=API_VERSION,
        description="The watchdog's REST API: Alertmanager intake, incidents and approval prompts.",
        security_schemes={**approval_web.SECURITY_SCHEMES, **slack.SECURITY_SCHEMES},
    )


def add_routes(
    app: web.Application,
    *,
    intake: AlertIntake,
    incidents: IncidentService,
    diagnosis: DiagnosisService,
    store: WatchdogStore,
    metrics: WatchdogMetrics,
    readiness: DependencyMonitor,
) -> None:
    """Add the API's routes to `app` (built by `watchdog.http.new_application`) with their services."""
    app[INTAKE_KEY] = intake
    app[INCIDENTS_KEY] = incidents
    app[DIAGNOSIS_KEY] = diagnosis
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics
    app[READINESS_KEY] = readiness
    app[OPENAPI_KEY] = build_openapi()
    ROUTE_TABLE.install(app)
