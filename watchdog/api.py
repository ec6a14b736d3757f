"""The watchdog's HTTP API (aiohttp): the Alertmanager webhook, incidents, metrics, health.

Installed by the composition root (`watchdog.assembly.create_app`) with `add_routes(app, ...)`, which
hands the handlers their services as AppKeys: the intake, the incident service, the diagnosis jobs,
the store (lists, readiness) and the metrics. Served by `gl-watchdog serve` (`watchdog.cli`) and by
tests on loopback. The approval routes and page are `watchdog.web`'s.

    POST /api/v1/alerts                    Alertmanager webhook v4 (`watchdog.intake`)
    GET  /api/v1/incidents[?status=a,b]    {"items": [incident...]}
    POST /api/v1/incidents                 {"execution_id", "dag_id"?}: open (or join) manually, diagnose
    GET  /api/v1/incidents/{id}            incident with diagnosis, plan, verification, actions,
                                           approvals and audit
    POST /api/v1/incidents/{id}/diagnose   (re-)diagnose an open incident in the background (202)
    GET  /metrics                          gl_watchdog_* (no auth)
    GET  /healthz, /readyz                 liveness; readiness = the store answers, and which optional
                                           dependency is degraded (`watchdog.readiness`; no auth)

Auth and errors: the middlewares of `watchdog.http` (bearer token from `settings.api_tokens` or
`api_token_file`; every error JSON `{"error": <code>, "detail": <message>}`). Paths in
`PUBLIC_PATHS_KEY` (health, metrics, and what `watchdog.web` adds: signed approval links) need no
token; `serve` on loopback generates a local token when none is configured
(`WatchdogSettings.with_local_secrets`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watchdog.diagnosis import DIAGNOSABLE, DiagnosisService
from watchdog.errors import InvalidTransition, StoreError
from watchdog.http import ApiError
from watchdog.incidents import IncidentDetail, IncidentService
from watchdog.intake import AlertIntake, describe_validation, parse_payload
from watchdog.metrics import CONTENT_TYPE, WatchdogMetrics
from watchdog.migrations import INCIDENT_STATUSES
from watchdog.readiness import DependencyMonitor
from watchdog.records import Incident
from watchdog.store import WatchdogStore

log = logging.getLogger(__name__)

GAUGE_REFRESH_TIMEOUT_SECONDS: Final = 2.0  # a scrape waits at most this long for the store's counts

INTAKE_KEY: Final = web.AppKey("intake", AlertIntake)
INCIDENTS_KEY: Final = web.AppKey("incidents", IncidentService)
DIAGNOSIS_KEY: Final = web.AppKey("diagnosis", DiagnosisService)
STORE_KEY: Final = web.AppKey("store", WatchdogStore)
METRICS_KEY: Final = web.AppKey("metrics", WatchdogMetrics)
READINESS_KEY: Final = web.AppKey("readiness", DependencyMonitor)
MAX_BODY_KEY: Final = web.AppKey("max_body_bytes", int)


# -- incident JSON ----------------------------------------------------------------------------------


def incident_json(incident: Incident, *, full: bool = False) -> dict[str, Any]:
    """An incident as the API returns it; list items leave out the large documents."""
    data = incident.model_dump(mode="json")
    diagnosis = incident.diagnosis or {}
    data["likely_cause"] = diagnosis.get("likely_cause")
    data["is_open"] = incident.is_open
    if not full:
        for key in ("diagnosis", "plan", "verification"):
            data.pop(key, None)
    return data


def detail_json(detail: IncidentDetail) -> dict[str, Any]:
    """`GET /api/v1/incidents/{id}`: the incident and all that is recorded about it."""
    data = incident_json(detail.incident, full=True)
    data["actions"] = [a.model_dump(mode="json") for a in detail.actions]
    data["approvals"] = [
        a.model_dump(mode="json", exclude={"token_nonce"}) for a in detail.approvals
    ]  # the nonce is part of the signed link secret
    data["audit"] = [a.model_dump(mode="json") for a in detail.audit]
    return data


# -- handlers ---------------------------------------------------------------------------------------


async def _read_json_body(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {request.content_type or 'missing'!r}",
        )
    max_bytes = request.app[MAX_BODY_KEY]
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "body_too_large", f"request body exceeds the limit of {max_bytes} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "body_too_large", f"request body exceeds the limit of {max_bytes} bytes") from exc


async def post_alerts(request: web.Request) -> web.Response:
    """Alertmanager webhook: validate everything, apply the valid alerts, answer once durably written."""
    body = await _read_json_body(request)
    parsed = parse_payload(body)
    for rejection in parsed.rejected:
        request.app[METRICS_KEY].alerts_rejected.inc()
        log.warning("alert rejected, the rest of its payload applied: %s", rejection.problem)
    outcomes = await request.app[INTAKE_KEY].handle(parsed.payload)
    return web.json_response(
        {
            "status": "partial" if parsed.rejected else "ok",
            "alerts": [o.as_json() for o in outcomes],
            "rejected": [r.as_json() for r in parsed.rejected],
        }
    )


async def list_incidents(request: web.Request) -> web.Response:
    """`GET /api/v1/incidents[?status=open,diagnosing]`."""
    statuses: list[str] | None = None
    raw = request.query.get("status")
    if raw:
        statuses = [s.strip() for s in raw.split(",") if s.strip()]
        unknown = sorted(set(statuses) - set(INCIDENT_STATUSES))
        if unknown:
            raise ApiError(
                400,
                "bad_request",
                f"unknown status {', '.join(unknown)}; use one of {', '.join(INCIDENT_STATUSES)}",
            )
    incidents = await request.app[STORE_KEY].list_incidents(statuses=statuses)
    return web.json_response({"items": [incident_json(i) for i in incidents]})


def _incident_id(request: web.Request) -> int:
    raw = request.match_info["incident_id"]
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"incident id must be an integer, not {raw!r}") from None
    if value < 1:
        raise ApiError(400, "bad_request", f"incident id must be positive, not {value}")
    return value


async def get_incident(request: web.Request) -> web.Response:
    """`GET /api/v1/incidents/{id}`."""
    detail = await request.app[INCIDENTS_KEY].detail(_incident_id(request))
    return web.json_response(detail_json(detail))


async def diagnose_incident(request: web.Request) -> web.Response:
    """`POST /api/v1/incidents/{id}/diagnose`: 202 and the diagnosis runs in the background."""
    incident = await request.app[INCIDENTS_KEY].get(_incident_id(request))
    if incident.status not in DIAGNOSABLE:
        raise InvalidTransition(
            incident.id,
            incident.status,
            "diagnosing",
            f"incident {incident.id} is {incident.status}; only an open incident is diagnosed",
        )
    request.app[DIAGNOSIS_KEY].start(incident)
    return web.json_response({"incident": incident_json(incident), "diagnosis": "started"}, status=202)


class ManualIncident(BaseModel):
    """Body of `POST /api/v1/incidents`."""

    model_config = ConfigDict(extra="forbid")

    execution_id: str = Field(min_length=1, max_length=200)
    dag_id: str | None = Field(default=None, max_length=200)


async def open_incident(request: web.Request) -> web.Response:
    """`POST /api/v1/incidents`: open (or join) the incident of an execution by hand and diagnose it."""
    body = await _read_json_body(request)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc
    try:
        spec = ManualIncident.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_payload", describe_validation(exc)) from exc
    result = await request.app[INCIDENTS_KEY].open_or_join(
        spec.execution_id, dag_id=spec.dag_id, source="manual", detection_source="api", actor="api"
    )
    if result.created:
        request.app[DIAGNOSIS_KEY].start(result.incident)
    return web.json_response(
        {"incident": incident_json(result.incident), "created": result.created},
        status=201 if result.created else 200,
    )


async def metrics_page(request: web.Request) -> web.Response:
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


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 unless the store answers; 200 `ready`, or `degraded` naming the optional
    dependencies (Redis, Prometheus, orchestrator, Kubernetes) that did not answer their last check."""
    readiness = await request.app[READINESS_KEY].readiness()
    if not readiness.ready:
        detail = f"store not reachable: {readiness.dependencies['store'].detail}"
        return web.json_response({"error": "not_ready", "detail": detail, **readiness.as_json()}, status=503)
    return web.json_response(readiness.as_json())


# -- assembly ---------------------------------------------------------------------------------------


def add_routes(
    app: web.Application,
    *,
    intake: AlertIntake,
    incidents: IncidentService,
    diagnosis: DiagnosisService,
    store: WatchdogStore,
    metrics: WatchdogMetrics,
    readiness: DependencyMonitor,
    max_body_bytes: int,
) -> None:
    """Add the API's routes to `app` (built by `watchdog.http.new_application`) with their services."""
    app[INTAKE_KEY] = intake
    app[INCIDENTS_KEY] = incidents
    app[DIAGNOSIS_KEY] = diagnosis
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics
    app[READINESS_KEY] = readiness
    app[MAX_BODY_KEY] = max_body_bytes
    app.router.add_post("/api/v1/alerts", post_alerts)
    app.router.add_get("/api/v1/incidents", list_incidents)
    app.router.add_post("/api/v1/incidents", open_incident)
    app.router.add_get("/api/v1/incidents/{incident_id}", get_incident)
    app.router.add_post("/api/v1/incidents/{incident_id}/diagnose", diagnose_incident)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
