"""The orchestrator's paginated `GET /executions` as the watchdog tests meet it: `PagedOrchestrator`
serves the documented contract (docs/architecture.md, "Orchestrator REST API") through
httpx.MockTransport — filters (`status`, `dag_id`, `over_timeout`, `no_timeout`, `started_before`),
oldest first, `limit` and an opaque `cursor`, `{"items", "next_cursor", "total"}` — with the tests'
clock, so sweeps, the condition, diagnosis step 1 and the verification checks can be shown to see
every run among thousands. It records each request's query, so a test can say what was asked."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

DEFAULT_PAGE = 500
MAX_PAGE = 5000


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class PagedOrchestrator:
    """Executions held in memory, listed as the paginated API lists them."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self.executions: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, str]] = []

    def add(
        self,
        execution_id: str,
        *,
        started_at: datetime,
        timeout: float | None,
        status: str = "running",
        dag_id: str = "dag-1",
        completed_at: datetime | None = None,
        timeout_is_default: bool = False,
    ) -> None:
        self.executions[execution_id] = {
            "execution_id": execution_id,
            "dag_id": dag_id,
            "status": status,
            "created_at": _iso(started_at),
            "started_at": _iso(started_at),
            "completed_at": None if completed_at is None else _iso(completed_at),
            "timeout_seconds": timeout,
            "timeout_is_default": timeout_is_default,
            "error": None,
            "owner": "orch-a",
        }

    def _over(self, item: dict[str, Any]) -> bool:
        if item["status"] != "running" or item["timeout_seconds"] is None:
            return False
        started = datetime.fromisoformat(item["started_at"].replace("Z", "+00:00"))
        return self.now() - started > timedelta(seconds=item["timeout_seconds"])

    def _matches(self, item: dict[str, Any], query: dict[str, str]) -> bool:
        if "status" in query and item["status"] not in query["status"].split(","):
            return False
        if "dag_id" in query and item["dag_id"] != query["dag_id"]:
            return False
        if "over_timeout" in query and self._over(item) != (query["over_timeout"] == "true"):
            return False
        if "no_timeout" in query:
            own_timeout_absent = item["timeout_seconds"] is None or item["timeout_is_default"]
            if own_timeout_absent != (query["no_timeout"] == "true"):
                return False
        if "started_before" in query:
            before = datetime.fromisoformat(query["started_before"].replace("Z", "+00:00"))
            if datetime.fromisoformat(item["started_at"].replace("Z", "+00:00")) >= before:
                return False
        return True

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/orchestrator/executions", request.url.path
        query = dict(request.url.params)
        self.requests.append(query)
        limit = int(query.get("limit", DEFAULT_PAGE))
        if not 1 <= limit <= MAX_PAGE:
            return httpx.Response(400, json={"error": "bad_request", "detail": "limit", "field": "limit"})
        matching = sorted(
            (item for item in self.executions.values() if self._matches(item, query)),
            key=lambda item: (item["started_at"], item["execution_id"]),
        )
        start = 0
        if "cursor" in query:
            after = json.loads(base64.urlsafe_b64decode(query["cursor"]))
            start = next(
                (
                    i
                    for i, item in enumerate(matching)
                    if (item["started_at"], item["execution_id"]) > tuple(after)
                ),
                len(matching),
            )
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        next_cursor = None
        if more:
            last = page[-1]
            next_cursor = base64.urlsafe_b64encode(
                json.dumps([last["started_at"], last["execution_id"]]).encode()
            ).decode()
        return httpx.Response(200, json={"items": page, "next_cursor": next_cursor, "total": len(matching)})
