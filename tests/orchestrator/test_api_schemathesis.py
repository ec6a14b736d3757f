"""Schemathesis against the orchestrator's own OpenAPI document, the real app on loopback: for every
documented operation, generated requests (within the document, bounded in number and time) get no
5xx, and every answer fits the document (status, content type, schema)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.common.conformance import check_every_operation
from tests.orchestrator.served import AUTH, Served, served_with_a_run

pytestmark = pytest.mark.slow


@pytest.fixture
def server(sqlite_url: str) -> Iterator[Served]:
    with served_with_a_run(sqlite_url) as running:
        yield running


def test_generated_requests_get_no_5xx_and_answers_fit_the_document(server: Served) -> None:
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client:
        document = client.get("/api/v1/orchestrator/openapi.json").json()
    check_every_operation(document, server.base_url, AUTH, skip={"/api/v1/orchestrator/openapi.json"})
