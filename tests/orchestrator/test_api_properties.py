"""Property-based tests of the orchestrator API's inputs (hypothesis), against the real app on loopback:
whatever the path ids, query string or body, no answer is a 5xx, and a refused request (4xx) writes
nothing (no DAG, execution or live limit appears or changes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator_core.api import ROUTES
from tests.orchestrator.served import AUTH, Served, served_with_a_run

pytestmark = pytest.mark.slow

API_ROUTES = [r for r in ROUTES if r.auth and r.path != "/api/v1/orchestrator/openapi.json"]
KNOWN_IDS = ["known", "n1", "builtin.echo"]

ids = st.one_of(
    st.sampled_from(KNOWN_IDS),
    st.text(min_size=0, max_size=140),
    st.text(alphabet="abc.:-_\x00\n /%é", max_size=8),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "input_data",
        "execution_options",
        "max_parallel_nodes",
        "max_concurrent_executions",
        "nodes",
        "dag_id",
        "execution_timeout_seconds",
        "checkpoint_enabled",
        "x",
    ]
)
bodies = st.one_of(
    st.none(),
    json_values,
    st.dictionaries(field_names, json_values, max_size=3),
    st.binary(max_size=40),
)
query_names = st.sampled_from(
    [
        "status",
        "dag_id",
        "owner",
        "limit",
        "cursor",
        "over_timeout",
        "no_timeout",
        "started_before",
        "node_id",
        "other",
    ]
)
queries = st.lists(st.tuples(query_names, st.text(max_size=30)), max_size=4)


@pytest.fixture
def server(sqlite_url: str) -> Iterator[Served]:
    with served_with_a_run(sqlite_url) as running:
        yield running


def _request(route: Any, path_id: str, query: list[tuple[str, str]], body: Any) -> dict[str, Any]:
    path = route.path
    for name in ("execution_id", "dag_id", "agent_id"):
        path = path.replace("{" + name + "}", quote(path_id, safe="") or "%20")
    request: dict[str, Any] = {"method": route.method, "url": path, "params": query}
    if isinstance(body, bytes):
        request["content"] = body
        request["headers"] = {"Content-Type": "application/json"}
    elif body is not None:
        request["content"] = json.dumps(body).encode()
        request["headers"] = {"Content-Type": "application/json"}
    return request


def test_no_input_gives_a_5xx_and_a_refused_one_writes_nothing(server: Served) -> None:
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client:

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(route=st.sampled_from(API_ROUTES), path_id=ids, query=queries, body=bodies)
        def check(route: Any, path_id: str, query: list[tuple[str, str]], body: Any) -> None:
            before = server.snapshot()
            response = client.request(**_request(route, path_id, query, body))
            assert response.status_code < 500, (route.method, route.path, path_id, query, body, response.text)
            if 400 <= response.status_code < 500:
                assert server.snapshot() == before, (route.method, route.path, response.text)
                assert response.json()["error"]

        check()
