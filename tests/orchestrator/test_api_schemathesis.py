"""Schemathesis against the orchestrator's own OpenAPI document, the real app on loopback: for every
documented operation, generated requests (within the document, bounded in number and time) get no
5xx, and every answer fits the document (status, content type, schema)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.orchestrator.served import AUTH, Served, served_with_a_run

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 12
BUDGET_SECONDS = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def server(sqlite_url: str) -> Iterator[Served]:
    with served_with_a_run(sqlite_url) as running:
        yield running


def test_generated_requests_get_no_5xx_and_answers_fit_the_document(server: Served) -> None:
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client:
        document = client.get("/api/v1/orchestrator/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(methods) for methods in document["paths"].values())
    for operation in operations:
        if operation.path == "/api/v1/orchestrator/openapi.json":
            continue

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=server.base_url, headers=AUTH, timeout=10)
            case.validate_response(response, checks=CHECKS)

        check()
        assert time.monotonic() - started < BUDGET_SECONDS, f"over budget at {operation.label}"
