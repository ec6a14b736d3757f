"""Property-based tests of the watchdog API's inputs (hypothesis), against the real app on loopback on
SQLite and PostgreSQL: whatever the route, path ids, query string, body, content type and
credential, no answer is a 5xx, and a refused request (4xx) writes nothing (no incident, delivery,
audit row, prompt or action appears, and no incident or prompt changes state)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gl_common.ids import DAG_ID_MAX, EXECUTION_ID_MAX, id_pattern
from tests.watchdog.served import AUTH, ServedWatchdog, served_watchdog
from watchdog.api import ROUTES
from watchdog.api_models import INCIDENT_ID_MAX
from watchdog.migrations import alert_deliveries, incidents

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


def examples(count: int) -> Any:
    """Hypothesis settings of these tests: `count` examples against a server shared by all of them."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


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

        @examples(300)
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


# -- the webhook: alerts with any labels, fingerprint, start and status ------------------------------

EXECUTION_ID = re.compile(id_pattern(EXECUTION_ID_MAX))
DAG_ID = re.compile(id_pattern(DAG_ID_MAX))
label_values = st.one_of(
    st.sampled_from(["exec-1", "exec-2", "exec-9", "dag-1", "*", "../../etc/passwd", "a\r\nb", "", "e" * 65]),
    st.text(max_size=12),
    odd_texts,
    st.text(alphabet="ab", min_size=120, max_size=300),
)
fingerprints = st.one_of(st.sampled_from(["fp-1", "fp-2", "", "f" * 129]), odd_texts)
starts = st.one_of(
    st.sampled_from(
        ["2026-03-01T12:00:00Z", "2026-03-01T13:00:00+02:00", "2026-03-01T12:00:00", "0001-01-01T00:00:00Z"]
    ),
    st.sampled_from(["9999-12-31T23:59:59-14:00", "yesterday", ""]),
)
webhook_alerts = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "firing", "resolved", "pending"]),
        "labels": st.fixed_dictionaries(
            {"alertname": st.sampled_from(["OrchestratorExecutionTimeout"] * 4 + ["Other", "", "a\x00"])},
            optional={"execution_id": label_values, "dag_id": label_values, "team": label_values},
        ),
        "startsAt": starts,
        "fingerprint": fingerprints,
    },
    optional={"annotations": st.dictionaries(st.text(max_size=5), odd_texts, max_size=2)},
)
webhook_payloads = st.fixed_dictionaries(
    {
        "version": st.just("4"),
        "status": st.sampled_from(["firing", "resolved"]),
        "alerts": st.lists(webhook_alerts, min_size=1, max_size=3),
    },
    optional={"receiver": st.one_of(odd_texts, st.just("gl-watchdog")), "groupKey": odd_texts},
)
WRITING_OUTCOMES = {"opened", "joined", "closed", "left_open", "no_incident"}


def test_no_webhook_gives_a_5xx_and_a_rejected_alert_is_never_stored(server: ServedWatchdog) -> None:
    assert server.wd is not None
    store = server.wd.store

    async def stored_labels() -> list[tuple[Any, ...]]:
        async with store.transaction() as tx:
            delivered = await tx.conn.execute(sa.select(alert_deliveries.c.execution_id))
            opened = await tx.conn.execute(sa.select(incidents.c.execution_id, incidents.c.dag_id))
            return [*delivered.all(), *opened.all()]

    with httpx.Client(base_url=server.base_url, timeout=10, headers=AUTH) as client:

        @examples(200)
        @given(body=webhook_payloads)
        def check(body: dict[str, Any]) -> None:
            before = server.snapshot()
            response = client.post("/api/v1/alerts", json=body)
            assert response.status_code < 500, (body, response.text)
            after = server.snapshot()
            if response.status_code >= 400:
                assert after == before, (body, response.text)
                return
            answer = response.json()
            writing = sum(1 for outcome in answer["alerts"] if outcome["outcome"] in WRITING_OUTCOMES)
            assert after["alert_deliveries"] - before["alert_deliveries"] <= writing, (body, answer)
            for row in server.run(stored_labels()):
                assert EXECUTION_ID.fullmatch(row[0]), row
                assert len(row) == 1 or row[1] is None or DAG_ID.fullmatch(row[1]), row

        check()
