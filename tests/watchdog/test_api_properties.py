"""Property-based tests of the watchdog API's inputs (hypothesis), against the real app on loopback on
SQLite and PostgreSQL: whatever the route, path ids, query string, body, content type and
credential, no answer is a 5xx, and a refused request (4xx) writes nothing (no incident, delivery,
audit row, prompt or action appears, and no incident or prompt changes state)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.watchdog.served import AUTH, ServedWatchdog, served_watchdog
from watchdog.api import ROUTES
from watchdog.api_models import INCIDENT_ID_MAX

pytestmark = pytest.mark.slow

ROUTE_CHOICES = [route for route in ROUTES if route.path != "/api/v1/openapi.json"]

texts = st.text(min_size=0, max_size=80)
odd_texts = st.text(alphabet="aZ09_-.:/%\x00\n\r é\u202e", max_size=10)
# Sent as they are: invalid UTF-8, NUL, an encoded slash.
encoded = st.sampled_from(["%ED%A0%80", "%FF", "%00", "a%2Fb", "%C0%AF"]).map(lambda raw: "raw:" + raw)
incident_ids = st.one_of(
    st.sampled_from(["1", "2", "3", str(INCIDENT_ID_MAX), str(INCIDENT_ID_MAX + 1), "99999999999999999999"]),
    st.integers(min_value=-5, max_value=2**70).map(str),
    texts,
    odd_texts,
    encoded,
)
approval_ids = st.one_of(
    st.sampled_from(["<pending>", "<decided>", "apr_unknown0000000"]), texts, odd_texts, encoded
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["execution_id", "dag_id", "token", "actor", "decision", "version", "status", "alerts", "labels", "x"]
)
bodies = st.one_of(
    st.none(),
    json_values,
    st.dictionaries(
        field_names,
        st.one_of(json_values, odd_texts, st.sampled_from(["<link>", "4", "exec-9", "bob"])),
        max_size=3,
    ),
    st.binary(max_size=40),
)
query_names = st.sampled_from(
    [
        "status",
        "dag_id",
        "execution_id",
        "cause",
        "opened_after",
        "opened_before",
        "cursor",
        "limit",
        "token",
        "decision",
        "notice",
        "other",
    ]
)
queries = st.one_of(
    st.just([]),
    st.lists(
        st.tuples(
            query_names, st.one_of(st.text(max_size=30), odd_texts, st.sampled_from(["<link>", "open", "5"]))
        ),
        max_size=3,
    ),
)
content_types = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain"])
credentials = st.sampled_from(["bearer", "bearer", "bearer", "none", "wrong"])


@pytest.fixture
def server(database_url: str) -> Iterator[ServedWatchdog]:
    with served_watchdog(database_url) as running:
        yield running


@dataclass(frozen=True)
class Case:
    route: Any
    path_id: str
    query: list[tuple[str, str]]
    body: Any
    content_type: str
    credential: str


cases = st.builds(
    Case,
    route=st.sampled_from(ROUTE_CHOICES),
    path_id=st.one_of(incident_ids, approval_ids),
    query=queries,
    body=bodies,
    content_type=content_types,
    credential=credentials,
)


def _request(server: ServedWatchdog, case: Case) -> dict[str, Any]:
    seeded = server.seeded
    assert seeded is not None
    known = {"<pending>": seeded.pending_approval, "<decided>": seeded.decided_approval}
    path_id = known.get(case.path_id, case.path_id)
    segment = path_id.removeprefix("raw:") if path_id.startswith("raw:") else quote(path_id, safe="") or "%20"
    path = case.route.path.replace("{incident_id}", segment).replace("{approval_id}", segment)
    params = [(name, seeded.link_token if value == "<link>" else value) for name, value in case.query]
    headers = {"Content-Type": case.content_type}
    if case.credential == "bearer":
        headers.update(AUTH)
    elif case.credential == "wrong":
        headers["Authorization"] = "Bearer wrong"
    request: dict[str, Any] = {"method": case.route.method, "url": path, "params": params, "headers": headers}
    body = case.body
    if isinstance(body, bytes):
        request["content"] = body
    elif isinstance(body, dict) and case.content_type.endswith("urlencoded"):
        request["content"] = "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in body.items()).encode()
    elif body is not None:
        if isinstance(body, dict) and body.get("token") == "<link>":
            body = {**body, "token": seeded.link_token}
        request["content"] = json.dumps(body).encode()
    return request


def test_no_input_gives_a_5xx_and_a_refused_one_writes_nothing(server: ServedWatchdog) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(case=cases)
        def check(case: Case) -> None:
            before = server.snapshot()
            request = _request(server, case)
            response = client.request(**request)
            assert response.status_code < 500, (request, response.text)
            if 400 <= response.status_code < 500:
                assert server.snapshot() == before, (request, response.text)
                if response.headers["Content-Type"].startswith("application/json"):
                    assert response.json()["error"], response.text

        check()
