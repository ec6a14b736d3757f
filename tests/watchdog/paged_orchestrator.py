"""The orchestrator's paginated `GET /executions` as the watchdog tests meet it: `PagedOrchestrator`
serves the documented contract (docs/architecture.md, "Orchestrator REST API") through
httpx.MockTransport — filters (`status`, `dag_id`, `over_timeout`, `no_timeout`, `started_before`,
`execution_id`), oldest first, `limit` and an opaque `cursor`, `{"items", "next_cursor", "total"}` —
with the tests' clock, so sweeps, the condition, diagnosis step 1 and the verification checks can be
shown to see every run among thousands. It records each request's query, so a test can say what was asked.

The stuck-run signals (issue 16, docs/architecture.md "Stuck-run signals") are served too: the
Execution's `queued_at`, `cancel_requested_at`, `resume_count`, `failure_streak`, `owner_alive` with
their filters (`queued_before`, `cancel_requested_before`, `min_resume_count`, `owner_gone`), and
`GET /running-nodes` (oldest started first, paged the same way) over the nodes given to `add_node`."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from gl_common.clock import Clock
from watchdog.condition import ConditionEvaluator
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.records import Incident
from watchdog.store import WatchdogStore
from watchdog.stuck_runs import StuckRunDetector
from watchdog.sweeps import LocalLeadership, Sweeper
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.stuck import StuckSettings

DEFAULT_PAGE = 500
MAX_PAGE = 5000


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class PagedOrchestrator:
    """Executions held in memory, listed as the paginated API lists them."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self.executions: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        self.paths: list[str] = []  # the path of each request, in order
        self.missing_routes: set[str] = set()  # paths answered 404, as an orchestrator without them

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
        **signals: Any,
    ) -> None:
        """One execution; `signals` are the stuck-run fields (datetimes as such, the rest as JSON)."""
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
            "queued_at": None,
            "cancel_requested_at": None,
            "resume_count": 0,
            "failure_streak": None,
            "owner_alive": True,
            **{k: _iso(v) if isinstance(v, datetime) else v for k, v in signals.items()},
        }

    def add_node(
        self,
        execution_id: str,
        node_id: str,
        *,
        started_at: datetime,
        attempt: int = 1,
        last_progress_at: datetime | None = None,
        normal_duration: dict[str, Any] | None = None,
        dag_id: str = "dag-1",
    ) -> None:
        """One running node of a running run (`GET /running-nodes`)."""
        self.nodes.append(
            {
                "execution_id": execution_id,
                "dag_id": dag_id,
                "node_id": node_id,
                "agent_id": f"agent-{node_id}",
                "attempt": attempt,
                "started_at": _iso(started_at),
                "last_progress_at": None if last_progress_at is None else _iso(last_progress_at),
                "progress_reports": 0 if last_progress_at is None else 1,
                "normal_duration": normal_duration,
            }
        )

    def _over(self, item: dict[str, Any]) -> bool:
        if item["status"] != "running" or item["timeout_seconds"] is None:
            return False
        started = datetime.fromisoformat(item["started_at"].replace("Z", "+00:00"))
        return self.now() - started > timedelta(seconds=item["timeout_seconds"])

    def _matches(self, item: dict[str, Any], query: dict[str, str]) -> bool:
        if "execution_id" in query and item["execution_id"] not in query["execution_id"].split(","):
            return False
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
        if "started_before" in query and not _before(item["started_at"], query["started_before"]):
            return False
        for field, name in (
            ("queued_at", "queued_before"),
            ("cancel_requested_at", "cancel_requested_before"),
        ):
            if name in query and not _before(item[field], query[name]):
                return False
        if "min_resume_count" in query and item["resume_count"] < int(query["min_resume_count"]):
            return False
        gone = item["owner_alive"] is False
        return "owner_gone" not in query or gone == (query["owner_gone"] == "true")

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1/orchestrator")
        assert path in ("/executions", "/running-nodes"), request.url.path
        query = dict(request.url.params)
        self.requests.append(query)
        self.paths.append(path)
        if path in self.missing_routes:
            return httpx.Response(404, json={"error": "not_found", "detail": f"no route {path}"})
        limit = int(query.get("limit", DEFAULT_PAGE))
        if not 1 <= limit <= MAX_PAGE:
            return httpx.Response(400, json={"error": "bad_request", "detail": "limit", "field": "limit"})
        if path == "/running-nodes":
            nodes = [
                n
                for n in self.nodes
                if "started_before" not in query or _before(n["started_at"], query["started_before"])
            ]
            matching = sorted(nodes, key=lambda n: (n["started_at"], n["execution_id"], n["node_id"]))
            return _page(matching, query, limit, lambda n: [n["started_at"], n["execution_id"], n["node_id"]])
        matching = sorted(
            (item for item in self.executions.values() if self._matches(item, query)),
            key=lambda item: (item["started_at"], item["execution_id"]),
        )
        return _page(matching, query, limit, lambda item: [item["started_at"], item["execution_id"]])


def _before(value: str | None, bound: str) -> bool:
    """True when the ISO instant `value` is set and before the ISO instant `bound`."""
    if value is None:
        return False
    return datetime.fromisoformat(value.replace("Z", "+00:00")) < datetime.fromisoformat(
        bound.replace("Z", "+00:00")
    )


def _page(
    matching: list[dict[str, Any]],
    query: dict[str, str],
    limit: int,
    key: Callable[[dict[str, Any]], list[str]],
) -> httpx.Response:
    """One keyset page of `matching` (sorted by `key`) after the query's cursor."""
    start = 0
    if "cursor" in query:
        after = json.loads(base64.urlsafe_b64decode(query["cursor"]))
        start = next((i for i, item in enumerate(matching) if key(item) > after), len(matching))
    page = matching[start : start + limit]
    next_cursor = None
    if start + limit < len(matching):
        next_cursor = base64.urlsafe_b64encode(json.dumps(key(page[-1])).encode()).decode()
    return httpx.Response(200, json={"items": page, "next_cursor": next_cursor, "total": len(matching)})


class PagedSweeps:
    """Sweepers over a store and a `PagedOrchestrator` at the tests' clock; opened incidents collected."""

    def __init__(self, store: WatchdogStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.fake = PagedOrchestrator(clock.now)
        self.client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(self.fake.handler))
        self.opened: list[Incident] = []

    def sweeper(
        self, max_run_age: timedelta | None = timedelta(days=1), stuck: StuckSettings | None = None
    ) -> Sweeper:
        """A leader's sweeper (`for` 10 minutes); with `stuck`, looking for stuck runs with those settings."""
        condition = ConditionEvaluator(
            self.client, None, for_duration=timedelta(minutes=10), clock=self.clock
        )
        metrics = WatchdogMetrics()
        return Sweeper(
            condition,
            IncidentService(self.store, metrics),
            LocalLeadership(),
            metrics,
            self.opened.append,
            interval_seconds=60,
            leader_ttl_seconds=30,
            max_run_age=max_run_age,
            stuck=None if stuck is None else StuckRunDetector(self.client, stuck, self.clock),
        )


@contextlib.asynccontextmanager
async def paged_sweeps(database_url: str, clock: Clock) -> AsyncIterator[PagedSweeps]:
    """A fresh store at `database_url` and `PagedSweeps` over it, closed afterwards."""
    store = await WatchdogStore.open(database_url, clock=clock)
    sweeps = PagedSweeps(store, clock)
    try:
        yield sweeps
    finally:
        await sweeps.client.aclose()
        await store.close()
