"""The watchdog's HTTP API (aiohttp): the Alertmanager webhook, incidents, metrics, health.

Built by `create_app(wd)` over a `watchdog.app.WatchdogApp`; served by `gl-watchdog serve`
(`watchdog.cli`) and by tests on loopback. Other modules add their routes through `extensions`
(e.g. the approval routes and web page of `watchdog.web`): each is called as `install(app, wd)`.

    POST /api/v1/alerts                    Alertmanager webhook v4 (`watchdog.intake`)
    GET  /api/v1/incidents[?status=a,b]    {"items": [incident...]}
    POST /api/v1/incidents                 {"execution_id", "dag_id"?}: open (or join) manually, diagnose
    GET  /api/v1/incidents/{id}            incident with diagnosis, plan, verification, actions,
                                           approvals and audit
    POST /api/v1/incidents/{id}/diagnose   (re-)diagnose an open incident in the background (202)
    GET  /metrics                          gl_watchdog_* (no auth)
    GET  /healthz, /readyz                 liveness; readiness = the store answers (no auth)

Auth and errors: the middlewares of `watchdog.http` (bearer token from `settings.api_tokens` or
`api_token_file`; every error JSON `{"error": <code>, "detail": <message>}`). Paths in
`PUBLIC_PATHS_KEY` (health, metrics, and what extensions add, e.g. signed approval links) need no
token; `serve` on loopback generates a local token when none is configured
(`WatchdogSettings.with_local_secrets`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watchdog.app import DIAGNOSABLE, WatchdogApp
from watchdog.errors import InvalidTransition, StoreError
from watchdog.http import ApiError, json_error, new_application
from watchdog.incidents import IncidentDetail
from watchdog.intake import describe_validation, parse_payload
from watchdog.metrics import CONTENT_TYPE
from watchdog.migrations import INCIDENT_STATUSES
from watchdog.store import Incident

log = logging.getLogger(__name__)

GAUGE_REFRESH_TIMEOUT_SECONDS: Final = 2.0  # a scrape waits at most this long for the store's counts

WATCHDOG_KEY: Final = web.AppKey("watchdog", WatchdogApp)

RouteInstaller = Callable[[web.Application, WatchdogApp], None]


def _wd(request: web.Request) -> WatchdogApp:
    return request.app[WATCHDOG_KEY]


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
    max_bytes = request.app[WATCHDOG_KEY].settings.max_body_bytes
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
    wd = _wd(request)
    for rejection in parsed.rejected:
        wd.metrics.alerts_rejected.inc()
        log.warning("alert rejected, the rest of its payload applied: %s", rejection.problem)
    outcomes = await wd.intake.handle(parsed.payload)
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
    incidents = await _wd(request).store.list_incidents(statuses=statuses)
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
    detail = await _wd(request).incidents.detail(_incident_id(request))
    return web.json_response(detail_json(detail))


async def diagnose_incident(request: web.Request) -> web.Response:
    """`POST /api/v1/incidents/{id}/diagnose`: 202 and the diagnosis runs in the background."""
    wd = _wd(request)
    incident = await wd.incidents.get(_incident_id(request))
    if incident.status not in DIAGNOSABLE:
        raise InvalidTransition(
            incident.id,
            incident.status,
            "diagnosing",
            f"incident {incident.id} is {incident.status}; only an open incident is diagnosed",
        )
    wd.start_diagnosis(incident)
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
    wd = _wd(request)
    result = await wd.incidents.open_or_join(
        spec.execution_id, dag_id=spec.dag_id, source="manual", detection_source="api", actor="api"
    )
    if result.created:
        wd.start_diagnosis(result.incident)
    return web.json_response(
        {"incident": incident_json(result.incident), "created": result.created},
        status=201 if result.created else 200,
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the watchdog's own registry, store-wide gauges read fresh.

    A slow or unreachable store never fails the scrape (that would hide every other series): the
    gauges keep their last values and the problem is logged (and `/readyz` reports it).
    """
    wd = _wd(request)
    try:
        async with asyncio.timeout(GAUGE_REFRESH_TIMEOUT_SECONDS):
            await wd.refresh_gauges()
    except TimeoutError:
        log.warning(
            "gauges not refreshed: the store did not answer within %ss", GAUGE_REFRESH_TIMEOUT_SECONDS
        )
    except StoreError as exc:
        log.warning("gauges not refreshed: %s", exc)
    body = wd.metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store answers a query."""
    try:
        await _wd(request).store.ping()
    except StoreError as exc:
        return json_error(503, "not_ready", f"store not reachable: {exc}")
    return web.json_response({"status": "ready"})


# -- assembly ---------------------------------------------------------------------------------------


def create_app(wd: WatchdogApp, *, extensions: Sequence[RouteInstaller] = ()) -> web.Application:
    """The aiohttp application of the watchdog over `wd`, plus the routes of `extensions`."""
    app = new_application(wd.settings.token_source(), max_body_bytes=wd.settings.max_body_bytes)
    app[WATCHDOG_KEY] = wd
    app.router.add_post("/api/v1/alerts", post_alerts)
    app.router.add_get("/api/v1/incidents", list_incidents)
    app.router.add_post("/api/v1/incidents", open_incident)
    app.router.add_get("/api/v1/incidents/{incident_id}", get_incident)
    app.router.add_post("/api/v1/incidents/{incident_id}/diagnose", diagnose_incident)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # Extensions (approval API and web page, ...) add their routes and public paths here.
    for install in extensions:
        install(app, wd)
    return app
