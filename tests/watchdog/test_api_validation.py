"""The watchdog API's boundary on loopback (SQLite and PostgreSQL): ids, query strings and bodies are
validated before any lookup or write (400 naming the parameter, 422 naming the body field, never a
5xx), auth comes before validation, every 405 names what is allowed, and the OpenAPI document
describes exactly the app's routes."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.watchdog.conftest import WATCHDOG_TOKEN
from tests.watchdog.webhook import alert, payload
from watchdog.api import ROUTES, build_openapi
from watchdog.api_models import IncidentStatus
from watchdog.assembly import Watchdog, create_app
from watchdog.migrations import INCIDENT_STATUSES

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


async def _rows(wd: Watchdog) -> tuple[int, int]:
    async with wd.store.transaction() as tx:
        incidents = len(await tx.list_incidents(limit=10_000))
        return incidents, await tx.count_deliveries()


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/api/v1/incidents/99999999999999999999", "2147483647"),  # past INTEGER (and BIGINT)
        ("/api/v1/incidents/2147483648", "2147483647"),
        ("/api/v1/incidents/0", "greater than or equal to 1"),
        ("/api/v1/incidents/-1", "integer"),
        ("/api/v1/incidents/1.0", "integer"),
        ("/api/v1/incidents/1_000", "integer"),
        ("/api/v1/incidents/%201", "integer"),
        ("/api/v1/incidents/1%00", "integer"),
        ("/api/v1/approvals/apr%00x", "approval_id"),
        ("/api/v1/approvals/" + "a" * 65, "approval_id"),
        ("/api/v1/approvals/-apr", "approval_id"),
    ],
)
async def test_a_malformed_id_is_400_naming_it(api_client: Client, path: str, says: str) -> None:
    response = await api_client.get(path, headers=AUTH)
    body = await response.json()
    assert response.status == 400, body
    assert body["field"] in ("incident_id", "approval_id") and says in body["detail"]


async def test_the_largest_incident_id_is_looked_up(api_client: Client) -> None:
    response = await api_client.get("/api/v1/incidents/2147483647", headers=AUTH)
    assert response.status == 404 and (await response.json())["error"] == "not_found"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=stuck", "status"),
        ("status=op%00en", "status"),
        ("dag_id=a%00b", "dag_id"),
        ("execution_id=" + "e" * 65, "execution_id"),
        ("cause=Hung%20Node", "cause"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=5&limit=6", "limit"),
        ("opened_after=2026-03-01T12:00:00", "opened_after"),
        ("opened_before=yesterday", "opened_before"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "colour"),
        ("dag_id=", "dag_id"),
    ],
)
async def test_listing_refuses_bad_query_parameters_naming_them(
    api_client: Client, query: str, field: str
) -> None:
    response = await api_client.get(f"/api/v1/incidents?{query}", headers=AUTH)
    body = await response.json()
    assert response.status == 400, body
    assert body["field"] == field


async def test_an_unknown_status_is_named_in_the_answer(api_client: Client) -> None:
    response = await api_client.get("/api/v1/incidents?status=open,stuck", headers=AUTH)
    assert response.status == 400 and "'stuck'" in (await response.json())["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"execution_id": "a\x00b"}, "execution_id"),
        ({"execution_id": "exec\r\n1"}, "execution_id"),
        ({"execution_id": "../../etc/passwd"}, "execution_id"),
        ({"execution_id": "*"}, "execution_id"),
        ({"execution_id": "e" * 5000}, "execution_id"),
        ({"execution_id": "exec-1", "dag_id": "d" * 201}, "dag_id"),
        ({"execution_id": 7}, "execution_id"),
        ({"execution_id": "exec-1", "extra": 1}, "extra"),
        ({}, "execution_id"),
        ([], ""),
    ],
)
async def test_a_manual_open_with_a_bad_body_is_422_naming_the_field_and_writes_nothing(
    api_client: Client, watchdog_app: Watchdog, body: Any, field: str
) -> None:
    response = await api_client.post("/api/v1/incidents", json=body, headers=AUTH)
    answer = await response.json()
    assert response.status == 422, answer
    assert answer["error"] == "invalid_payload" and answer["field"] == field
    assert await _rows(watchdog_app) == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"execution_id": "\\ud800"}',  # a lone surrogate: no database can store it
        b"[" * 200 + b"]" * 200,  # nested deeper than any request needs
    ],
)
async def test_bodies_no_database_could_store_are_400_on_every_body_route(
    api_client: Client, watchdog_app: Watchdog, raw: bytes
) -> None:
    for path in ("/api/v1/incidents", "/api/v1/alerts"):
        response = await api_client.post(path, data=raw, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status == 400, (path, await response.text())
    assert await _rows(watchdog_app) == (0, 0)


async def test_diagnose_takes_no_body_fields(api_client: Client) -> None:
    response = await api_client.post("/api/v1/incidents/1/diagnose", json={"now": True}, headers=AUTH)
    assert response.status == 422 and (await response.json())["field"] == "now"


async def test_auth_comes_before_validation(api_client: Client) -> None:
    for path in ("/api/v1/incidents/abc", "/api/v1/incidents?limit=0", "/api/v1/nowhere"):
        response = await api_client.get(path)
        assert response.status == 401, path
    refused = await api_client.post("/api/v1/incidents", json={"execution_id": "\x00"})
    assert refused.status == 401


def _methods_by_path() -> dict[str, set[str]]:
    paths: dict[str, set[str]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, set()).add(route.method)
    return paths


@pytest.mark.parametrize(("path", "allowed"), sorted(_methods_by_path().items()))
async def test_every_route_answers_405_with_allow(api_client: Client, path: str, allowed: set[str]) -> None:
    concrete = path.replace("{incident_id}", "1").replace("{approval_id}", "apr_x").replace("{name}", "alice")
    concrete = concrete.replace("{playbook}", "cancel")
    method = next(m for m in ("DELETE", "PATCH", "PUT") if m not in allowed)
    response = await api_client.request(method, concrete, headers=AUTH)
    assert response.status == 405, await response.text()
    assert set(response.headers["Allow"].split(",")) == allowed
    assert (await response.json())["error"] == "method_not_allowed"


def test_the_document_has_every_route_of_the_app_and_no_other(watchdog_app: Watchdog) -> None:
    app = create_app(watchdog_app)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    document = build_openapi()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == served
    assert ("GET", "/api/v1/openapi.json") in served and ("POST", "/api/v1/alerts") in served


async def test_the_document_is_served_with_the_api(api_client: Client) -> None:
    assert (await api_client.get("/api/v1/openapi.json")).status == 401
    response = await api_client.get("/api/v1/openapi.json", headers=AUTH)
    document = await response.json()
    assert document == build_openapi()
    get_incident = document["paths"]["/api/v1/incidents/{incident_id}"]["get"]
    [param] = get_incident["parameters"]
    assert param["schema"]["type"] == "integer" and param["schema"]["maximum"] == 2**31 - 1
    page = document["paths"]["/approvals/{approval_id}"]["get"]
    assert page["security"] == [{"approvalToken": []}]
    assert "text/html" in page["responses"]["200"]["content"]


def test_the_status_parameter_knows_every_incident_status() -> None:
    assert set(get_args(IncidentStatus)) == set(INCIDENT_STATUSES)


async def test_a_valid_webhook_still_opens_its_incident(api_client: Client, watchdog_app: Watchdog) -> None:
    response = await api_client.post("/api/v1/alerts", json=payload(alert()), headers=AUTH)
    assert response.status == 200, await response.text()
    assert (await response.json())["alerts"][0]["outcome"] == "opened"
    assert (await _rows(watchdog_app))[0] == 1
