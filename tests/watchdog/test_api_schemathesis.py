"""Schemathesis against the watchdog's own OpenAPI document, the real app on loopback over PostgreSQL
(where a value too long for its column or a NUL would show as a 5xx): for every documented operation,
the webhook included, generated requests (within the document, bounded in number and time) get no
5xx, and every answer fits the document (status, content type, schema)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.common.conformance import check_every_operation
from tests.watchdog.served import AUTH, ServedWatchdog, served_watchdog

pytestmark = pytest.mark.slow


@pytest.fixture
def server(postgres_url: str) -> Iterator[ServedWatchdog]:
    with served_watchdog(postgres_url) as running:
        yield running


def test_generated_requests_get_no_5xx_and_answers_fit_the_document(server: ServedWatchdog) -> None:
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client:
        document = client.get("/api/v1/openapi.json").json()
    checked = check_every_operation(document, server.base_url, AUTH, skip={"/api/v1/openapi.json"})
    assert {"/api/v1/alerts", "/approvals/{approval_id}", "/api/v1/incidents"} <= set(checked)
