"""Validation at the API boundary, on every route: ids, query parameters and bodies are checked before
any lookup (and after auth), refused with a 400 naming the field, never a 5xx; 405 names the allowed
methods."""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx
import pytest

from orchestrator_core.api import ROUTES
from tests.orchestrator.service_harness import Harness, chain_dag

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")

ID_ROUTES = [r for r in ROUTES if "{" in r.path]
BAD_IDS = {
    "nul": "a\x00b",
    "newline": "a\nb",
    "trailing-newline": "abc\n",
    "space": "a b",
    "slash": "a/b",
    "leading-dot": ".hidden",
    "leading-dash": "-a",
    "non-ascii": "é",
    "too-long": "a" * 129,
}


def _path(route_path: str, value: str) -> str:
    """The route's path with every parameter set to `value` (percent-encoded)."""
    encoded = quote(value, safe="")
    for name in ("execution_id", "dag_id", "agent_id", "node_id"):
        route_path = route_path.replace("{" + name + "}", encoded)
    return route_path


@pytest.mark.parametrize("route", ID_ROUTES, ids=lambda r: f"{r.method} {r.path}")
@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
async def test_every_route_refuses_a_malformed_id_with_400_naming_it(
    h: Harness, route: object, bad: str
) -> None:
    method, path = route.method, _path(route.path, bad)  # type: ignore[attr-defined]
    response = await h.client.request(method, path)
    assert response.status_code == 400, (path, response.text)
    body = response.json()
    assert body["error"] == "bad_request" and body["field"] in (
        "execution_id",
        "dag_id",
        "agent_id",
        "node_id",
    )
    assert body["field"] in body["detail"]


async def test_an_execution_id_over_64_characters_is_400_but_64_is_looked_up(h: Harness) -> None:
    assert (await h.api("GET", "/executions/" + "e" * 65)).status_code == 400
    assert (await h.api("GET", "/executions/" + "e" * 64)).status_code == 404


async def test_auth_comes_before_validation(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.base_url) as anonymous:
        response = await anonymous.get(_path("/api/v1/orchestrator/executions/{execution_id}", "a\x00b"))
    assert response.status_code == 401


async def test_nul_in_a_query_is_400_and_logs_nothing_at_error(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await h.client.get("/api/v1/orchestrator/executions?dag_id=a%00b")
    assert response.status_code == 400 and response.json()["field"] == "dag_id"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("stauts=running", "stauts"),  # a typo is not silently ignored
        ("status=", "status"),
        ("status=running&dag_id=a&dag_id=b", "dag_id"),
        ("over_timeout=perhaps", "over_timeout"),
        ("started_before=2026-01-01T00:00:00", "started_before"),  # no offset
        ("started_after=yesterday", "started_after"),
        ("owner=a%0Ab", "owner"),
        ("cursor=" + "x" * 513, "cursor"),
    ],
)
async def test_listing_refuses_bad_query_parameters_naming_them(h: Harness, query: str, field: str) -> None:
    response = await h.client.get(f"/api/v1/orchestrator/executions?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


async def test_a_route_without_parameters_refuses_one(h: Harness) -> None:
    response = await h.api("GET", "/agents", params={"verbose": "1"})
    assert response.status_code == 400 and response.json()["field"] == "verbose"


@pytest.mark.parametrize(
    ("query", "field"), [("limit=0", "limit"), ("limit=5001", "limit"), ("node_id=a%00", "node_id")]
)
async def test_logs_refuse_bad_query_parameters(h: Harness, query: str, field: str) -> None:
    await h.register(chain_dag("logs", "builtin.echo"))
    execution_id = (await h.execute("logs"))["execution_id"]
    response = await h.client.get(f"/api/v1/orchestrator/executions/{execution_id}/logs?{query}")
    assert response.status_code == 400 and response.json()["field"] == field


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/dags/x", {"GET", "PUT"}),
        ("PATCH", "/admin/limits", {"GET", "PUT", "DELETE"}),
        ("GET", "/executions/x/cancel", {"POST"}),
        ("POST", "/executions", {"GET"}),
    ],
)
async def test_405_names_the_allowed_methods(h: Harness, method: str, path: str, allowed: set[str]) -> None:
    response = await h.api(method, path)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(",")) == allowed
    assert response.json()["error"] == "method_not_allowed"


# -- bodies -----------------------------------------------------------------------------------------


async def test_an_empty_partial_update_is_400_before_the_dag_is_looked_up(h: Harness) -> None:
    response = await h.api("PUT", "/dags/unknown", json={})
    assert response.status_code == 400 and "at least one field" in response.json()["detail"]


async def test_a_partial_update_with_an_unknown_field_names_it_and_bumps_nothing(h: Harness) -> None:
    await h.register(chain_dag("p", "builtin.echo"))
    response = await h.api("PUT", "/dags/p", json={"nodes": {"n1": {"timeout": 5}}})
    assert response.status_code == 400 and response.json()["field"] == "nodes.n1.timeout"
    assert (await h.api("GET", "/dags/p")).json()["version"] == 1


async def test_limits_with_nothing_to_change_are_400(h: Harness) -> None:
    for body in ({}, {"max_parallel_nodes": None}):
        response = await h.api("PUT", "/admin/limits", json=body)
        assert response.status_code == 400, body


@pytest.mark.parametrize("path", ["/executions/x/cancel", "/executions/x/resume", "/admin/agents/x/restart"])
async def test_actions_take_no_body_fields(h: Harness, path: str) -> None:
    response = await h.api("POST", path, json={"force": True})
    assert response.status_code == 400 and response.json()["field"] == "force"


async def test_a_string_that_utf8_cannot_encode_is_400_and_queues_nothing(h: Harness) -> None:
    await h.register(chain_dag("s", "builtin.echo"))
    response = await h.api(
        "POST",
        "/dags/s/execute",
        content=b'{"input_data": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "surrogate" in response.json()["detail"]
    assert (await h.api("GET", "/executions", params={"dag_id": "s"})).json()["total"] == 0


async def test_a_dag_whose_node_id_holds_nul_is_400(h: Harness) -> None:
    response = await h.api(
        "POST", "/dags", json={"dag_id": "n", "nodes": {"a\x00": {"agent_id": "builtin.echo"}}}
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_dag"
