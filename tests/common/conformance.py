"""Schemathesis against a service's own OpenAPI document, as both services' tests run it: for every
documented operation, generated requests (within the document, bounded in number and time) get no
5xx, and every answer fits the document (status, content type, schema). (Holds no tests of its own.)"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def check_every_operation(
    document: dict[str, Any],
    base_url: str,
    headers: Mapping[str, str],
    *,
    skip: Collection[str] = (),
    examples_per_operation: int = 12,
    budget_seconds: float = 50,
) -> list[str]:
    """Run the checks on every operation of `document` whose path is not in `skip`; fails when one
    fails or the whole run goes over `budget_seconds`. Returns the paths of the operations run."""
    schema = schemathesis.openapi.from_dict(document)
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(methods) for methods in document["paths"].values())
    checked = []
    for operation in operations:
        if operation.path in skip:
            continue

        @settings(
            max_examples=examples_per_operation,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=dict(headers), timeout=10)
            case.validate_response(response, checks=CHECKS)

        check()
        checked.append(operation.path)
        assert time.monotonic() - started < budget_seconds, f"over budget at {operation.label}"
    return checked
