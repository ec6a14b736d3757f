"""The generic route machinery (`gl_common.openapi`, `gl_common.http`) on a small app of its own, as the
watchdog will use it: a route table of models becomes the router, validates each request before the
handler, and is described by an OpenAPI document whose operations are exactly the app's routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from gl_common.http import ApiError, error_middleware, json_model_response
from gl_common.openapi import Inputs, RouteTable, build_document
from tests.conftest import serving

ThingId = Annotated[str, StringConstraints(pattern=r"^[a-z]{1,8}$")]


class ThingQuery(BaseModel):
    model_config = {"extra": "forbid"}

    tags: list[str] | None = None
    limit: int = Field(10, ge=1, le=50)


class ThingBody(BaseModel):
    model_config = {"extra": "forbid"}

    name: Annotated[str, StringConstraints(min_length=1)]


class Thing(BaseModel):
    thing_id: str
    name: str | None
    limit: int | None = None
    tags: list[str] | None = None


def make_table(calls: list[str]) -> RouteTable:
    table = RouteTable("/api/v1", path_params={"thing_id": ThingId})

    @table.route("GET /things/{thing_id}", "One thing", query=ThingQuery, response=Thing, errors=(404,))
    async def get_thing(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        calls.append("get")
        query = inputs.query(ThingQuery)
        if inputs.path["thing_id"] == "missing":
            raise ApiError(404, "not_found", "no such thing")
        return json_model_response(
            Thing(thing_id=inputs.path["thing_id"], name=None, limit=query.limit, tags=query.tags)
        )

    @table.route("PUT /things/{thing_id}", "Rename", body=ThingBody, body_required=True, response=Thing)
    async def put_thing(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        calls.append("put")
        return json_model_response(Thing(thing_id=inputs.path["thing_id"], name=inputs.body(ThingBody).name))

    return table


def _never(request: web.Request, exc: Exception) -> ApiError | None:
    return None


@pytest.fixture
async def app_client(
    _no_pending_tasks: None,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[str], RouteTable]]:
    calls: list[str] = []
    table = make_table(calls)
    app = web.Application(middlewares=[error_middleware(_never)])
    table.install(app)
    async with serving(app) as client:
        yield client, calls, table


async def test_valid_requests_reach_the_handler_with_typed_values(app_client: Any) -> None:
    client, calls, _ = app_client
    response = await client.get("/api/v1/things/abc", params=[("tags", "a,b"), ("tags", "c"), ("limit", "5")])
    assert response.status_code == 200
    assert response.json() == {"thing_id": "abc", "name": None, "limit": 5, "tags": ["a", "b", "c"]}
    assert calls == ["get"]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("GET", "/api/v1/things/ABC", None, "thing_id"),
        ("GET", "/api/v1/things/abc?limit=99", None, "limit"),
        ("GET", "/api/v1/things/abc?colour=red", None, "colour"),
        ("GET", "/api/v1/things/abc?limit=", None, "limit"),
        ("PUT", "/api/v1/things/abc", {}, "name"),
        ("PUT", "/api/v1/things/abc", {"name": "x", "extra": 1}, "extra"),
        ("PUT", "/api/v1/things/abc", None, ""),
    ],
)
async def test_invalid_requests_are_400_naming_the_field_and_never_reach_the_handler(
    app_client: Any, method: str, url: str, body: Any, field: str
) -> None:
    client, calls, _ = app_client
    response = await client.request(method, url, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert calls == []


async def test_405_carries_allow(app_client: Any) -> None:
    client, _, _ = app_client
    response = await client.delete("/api/v1/things/abc")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(",")) == {"GET", "PUT"}


def test_the_document_describes_each_route_with_its_models() -> None:
    table = make_table([])
    document = build_document(table.routes(), title="things", version="1", description="test")
    assert document["openapi"] == "3.1.0"
    get = document["paths"]["/api/v1/things/{thing_id}"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert params["thing_id"]["schema"]["pattern"] == "^[a-z]{1,8}$" and params["thing_id"]["required"]
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 50,
        "default": 10,
        "title": "Limit",
    }
    assert params["tags"]["schema"]["type"] == "array" and params["tags"]["explode"] is True
    assert set(get["responses"]) >= {"200", "400", "401", "404", "default"}
    put = document["paths"]["/api/v1/things/{thing_id}"]["put"]
    assert put["requestBody"]["required"] is True
    body_schema = document["components"]["schemas"]["ThingBody"]
    assert body_schema["additionalProperties"] is False and body_schema["required"] == ["name"]


def test_a_path_parameter_without_a_declared_type_is_refused_at_declaration() -> None:
    table = RouteTable("/api")
    with pytest.raises(ValueError, match="no type declared for path parameter"):
        table.route("GET /x/{unknown}", "x")
