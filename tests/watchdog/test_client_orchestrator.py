"""The orchestrator REST client: every route, its request shape, and every error mapping (respx)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import respx

from orchestrator_core import api_models
from tests.conftest import free_port
from watchdog.backends import orchestrator_client
from watchdog.settings import load_settings
from watchdog_sdk.clients.orchestrator import (
    MAX_EXECUTION_IDS,
    MAX_EXECUTION_IDS_CHARS,
    MAX_PAGE,
    ExecutionPage,
    ExecutionQuery,
    OrchestratorClient,
)
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OrchestratorError,
    OrchestratorUnavailable,
    PrometheusUnavailable,
    Unauthorized,
)

BASE = "http://orch.test:8080"
API = BASE + "/api/v1/orchestrator"

EXECUTION = {
    "execution_id": "ex-1",
    "dag_id": "emissions",
    "dag_version": 1,
    "status": "running",
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": "2026-01-01T00:00:01Z",
    "completed_at": None,
    "timeout_seconds": 300,
    "error": None,
    "owner": "replica-a",
    "input_data": {"year": 2025},
}


@pytest.fixture
async def client() -> AsyncIterator[OrchestratorClient]:
    async with OrchestratorClient(BASE + "/", "s3cret", timeout=2.0) as c:
        yield c


@pytest.fixture
def mock() -> respx.MockRouter:
    with respx.mock(base_url=API, assert_all_called=True) as router:
        yield router


def _body(route: respx.Route) -> Any:
    return json.loads(route.calls.last.request.content)


async def test_list_executions_sends_status_and_token(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions", params={"status": "running"}).respond(json={"items": [EXECUTION]})
    items = await client.list_executions()
    assert [e.execution_id for e in items] == ["ex-1"]
    assert items[0].started_at is not None and items[0].started_at.year == 2026
    assert route.calls.last.request.headers["Authorization"] == "Bearer s3cret"


async def test_list_executions_filters_by_dag(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    route = mock.get("/executions").respond(json={"items": []})
    assert await client.list_executions(status="failed", dag_id="d1") == []
    assert dict(route.calls.last.request.url.params) == {"status": "failed", "dag_id": "d1"}


def _page(ids: list[str], next_cursor: str | None, total: int) -> dict[str, Any]:
    items = [{**EXECUTION, "execution_id": i} for i in ids]
    return {"items": items, "next_cursor": next_cursor, "total": total}


async def test_list_executions_follows_next_cursor_to_the_last_page(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions").mock(
        side_effect=[
            httpx.Response(200, json=_page(["a", "b"], "c1", 5)),
            httpx.Response(200, json=_page(["c", "d"], "c2", 5)),
            httpx.Response(200, json=_page(["e"], None, 5)),
        ]
    )
    items = await client.list_executions(status="running", over_timeout=True, page_size=2)
    assert [e.execution_id for e in items] == ["a", "b", "c", "d", "e"]
    sent = [dict(call.request.url.params) for call in route.calls]
    assert sent == [
        {"status": "running", "over_timeout": "true", "limit": "2"},
        {"status": "running", "over_timeout": "true", "limit": "2", "cursor": "c1"},
        {"status": "running", "over_timeout": "true", "limit": "2", "cursor": "c2"},
    ]


async def test_list_executions_page_sends_every_filter(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions").respond(json=_page([], None, 0))
    before = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    query = ExecutionQuery("running", "d1", over_timeout=False, no_timeout=True, started_before=before)
    page = await client.list_executions_page(query, limit=7, cursor="k")
    assert page == ExecutionPage([], None, 0, paged=True)
    assert dict(route.calls.last.request.url.params) == {
        "status": "running",
        "dag_id": "d1",
        "over_timeout": "false",
        "no_timeout": "true",
        "started_before": "2026-03-01T12:00:00Z",
        "limit": "7",
        "cursor": "k",
    }


async def test_an_orchestrator_before_pagination_gives_its_one_answer_unfiltered(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions").respond(json={"items": [EXECUTION]})
    page = await client.list_executions_page(ExecutionQuery("running", over_timeout=True), limit=50)
    assert [e.execution_id for e in page.items] == ["ex-1"]
    assert (page.next_cursor, page.total, page.paged) == (None, None, False)
    assert [e.execution_id for e in await client.list_executions(over_timeout=True)] == ["ex-1"]
    assert route.call_count == 2
    assert await client.count_executions(ExecutionQuery()) is None


async def test_runs_asked_about_by_id_are_one_request_with_their_ids_comma_separated(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions").respond(json=_page(["b", "a"], None, 2))
    found = await client.list_executions_of(["a", "b", "gone", "a"], "completed,failed")
    assert [e.execution_id for e in found] == ["b", "a"]
    assert route.call_count == 1
    assert dict(route.calls.last.request.url.params) == {
        "status": "completed,failed",
        "execution_id": "a,b,gone",
        "limit": str(MAX_PAGE),
    }


def _asked(route: respx.Route) -> list[list[str]]:
    return [call.request.url.params["execution_id"].split(",") for call in route.calls]


async def test_more_ids_than_one_request_takes_go_in_batches_that_fit_the_request_line(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions").respond(json=_page([], None, 0))
    uuids = [uuid.uuid4().hex for _ in range(2 * MAX_EXECUTION_IDS + 50)]
    assert await client.list_executions_of(uuids) == []
    assert [len(batch) for batch in _asked(route)] == [MAX_EXECUTION_IDS, MAX_EXECUTION_IDS, 50]
    longest = [f"{index:03d}:" + "x" * 60 for index in range(250)]  # 64 characters, ":" encoded
    await client.list_executions_of(longest)
    batches = _asked(route)[3:]
    assert [id_ for batch in batches for id_ in batch] == longest and len(batches) == 3
    for call in route.calls:
        encoded = call.request.url.raw_path.split(b"execution_id=")[1].split(b"&")[0]
        assert len(encoded) <= MAX_EXECUTION_IDS_CHARS


async def test_asking_about_no_run_sends_nothing(client: OrchestratorClient) -> None:
    assert await client.list_executions_of([]) == []


async def test_of_an_unfiltered_answer_only_the_runs_asked_about_are_kept(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    mock.get("/executions").respond(json={"items": [{**EXECUTION, "execution_id": i} for i in "xay"]})
    assert [e.execution_id for e in await client.list_executions_of(["a"])] == ["a"]


def test_the_client_takes_as_many_ids_as_the_orchestrator_accepts() -> None:
    assert MAX_EXECUTION_IDS == api_models.MAX_EXECUTION_IDS


async def test_count_executions_reads_the_total_of_a_one_item_page(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    route = mock.get("/executions").respond(json=_page(["a"], "c1", 10_000))
    assert await client.count_executions(ExecutionQuery("running", over_timeout=True)) == 10_000
    assert dict(route.calls.last.request.url.params) == {
        "status": "running",
        "over_timeout": "true",
        "limit": "1",
    }


async def test_a_cursor_handed_out_twice_is_an_error_not_a_loop(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    mock.get("/executions").respond(json=_page(["a"], "same", 3))
    with pytest.raises(OrchestratorError, match="same cursor twice"):
        await client.list_executions()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"items": [], "next_cursor": 5, "total": 0}, "next_cursor that is not a string"),
        ({"items": [], "next_cursor": "", "total": 0}, "next_cursor that is not a string"),
        ({"items": [], "next_cursor": None, "total": -1}, "total that is not a count"),
        ({"items": [], "next_cursor": None, "total": "many"}, "total that is not a count"),
    ],
)
async def test_a_malformed_page_is_an_error(
    client: OrchestratorClient, mock: respx.MockRouter, body: dict[str, Any], problem: str
) -> None:
    mock.get("/executions").respond(json=body)
    with pytest.raises(OrchestratorError, match=problem):
        await client.list_executions_page(ExecutionQuery())


async def test_a_naive_started_before_is_refused_before_any_request(client: OrchestratorClient) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        await client.list_executions_page(ExecutionQuery(started_before=datetime(2026, 3, 1)))


async def test_get_execution(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/executions/ex-1").respond(json=EXECUTION)
    execution = await client.get_execution("ex-1")
    assert execution.status == "running" and execution.timeout_seconds == 300
    assert execution.input_data == {"year": 2025}


async def test_ids_are_escaped_in_paths(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    route = mock.get(url__regex=r".*/executions/[^/]+$").respond(json=EXECUTION | {"execution_id": "a/b"})
    await client.get_execution("a/b")
    assert route.calls.last.request.url.raw_path.endswith(b"/executions/a%2Fb")


async def test_get_trace(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/executions/ex-1/trace").respond(
        json={
            "execution_id": "ex-1",
            "dag_id": "emissions",
            "status": "running",
            "topology_levels": [["intake"], ["calc"]],
            "node_traces": {
                "intake": {
                    "status": "completed",
                    "duration_ms": 120.0,
                    "attempt_count": 1,
                    "agent_id": "a.in",
                },
                "calc": {
                    "status": "running",
                    "attempt_count": 2,
                    "agent_id": "a.calc",
                    "timeout_seconds": 60,
                },
            },
        }
    )
    trace = await client.get_trace("ex-1")
    assert trace.topology_levels == [["intake"], ["calc"]]
    assert trace.node_traces["calc"].attempt_count == 2
    assert trace.node_traces["calc"].timeout_seconds == 60


async def test_cancel(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    route = mock.post("/executions/ex-1/cancel").respond(json=EXECUTION | {"status": "cancelled"})
    assert (await client.cancel("ex-1")).status == "cancelled"
    assert route.called


async def test_resume(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.post("/executions/ex-1/resume").respond(
        json={"execution_id": "ex-1", "status": "running", "nodes_skipped": ["a"], "nodes_remaining": ["b"]}
    )
    result = await client.resume("ex-1")
    assert result.nodes_skipped == ["a"] and result.nodes_remaining == ["b"]


async def test_get_provenance(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/executions/ex-1/provenance").respond(
        json={
            "execution_id": "ex-1",
            "chain_valid": False,
            "chain": [{"seq": 1}],
            "problems": ["seq 2 broken"],
        }
    )
    provenance = await client.get_provenance("ex-1")
    assert provenance.chain_valid is False and provenance.problems == ["seq 2 broken"]


async def test_get_logs_passes_node_and_limit(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    route = mock.get("/executions/ex-1/logs").respond(
        json={
            "lines": [
                {"ts": "2026-01-01T00:00:00Z", "level": "WARNING", "message": "waiting", "node_id": "n"}
            ]
        }
    )
    lines = await client.get_logs("ex-1", node_id="n", limit=50)
    assert lines[0].message == "waiting"
    assert dict(route.calls.last.request.url.params) == {"node_id": "n", "limit": "50"}


async def test_get_checkpoints(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/checkpoints/ex-1").respond(
        json={
            "execution_id": "ex-1",
            "checkpoints": [
                {"node_id": "intake", "status": "completed", "created_at": "2026-01-01T00:00:02Z"}
            ],
        }
    )
    checkpoints = await client.get_checkpoints("ex-1")
    assert [c.node_id for c in checkpoints.checkpoints] == ["intake"]


async def test_get_metrics(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/metrics").respond(
        json={
            "active_executions": 3,
            "max_concurrent_executions": 3,
            "queued_executions": 2,
            "max_parallel_nodes": 4,
        }
    )
    metrics = await client.get_metrics()
    assert (metrics.active_executions, metrics.queued_executions) == (3, 2)


async def test_register_get_update_dag(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    dag = {"dag_id": "d1", "version": 1, "nodes": {}}
    post = mock.post("/dags").respond(201, json=dag)
    mock.get("/dags/d1").respond(json=dag)
    patch = {"nodes": {"n": {"timeout_policy": {"timeout_seconds": 300, "on_timeout": "fail"}}}}
    put = mock.put("/dags/d1").respond(json=dag | {"version": 2})
    assert await client.register_dag(dag) == dag
    assert _body(post) == dag
    assert (await client.get_dag("d1"))["dag_id"] == "d1"
    assert (await client.update_dag("d1", patch))["version"] == 2
    assert _body(put) == patch


async def test_execute_sends_runbook_options(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    route = mock.post("/dags/d1/execute").respond(202, json=EXECUTION | {"status": "queued"})
    execution = await client.execute("d1", {"year": 2025})
    assert execution.status == "queued"
    assert _body(route) == {
        "input_data": {"year": 2025},
        "execution_options": {"checkpoint_enabled": True, "deterministic_mode": True},
    }


async def test_limits(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/admin/limits").respond(json={"max_parallel_nodes": 10, "max_concurrent_executions": 50})
    put = mock.put("/admin/limits").respond(json={"max_parallel_nodes": 5, "max_concurrent_executions": 50})
    assert (await client.get_limits()).max_concurrent_executions == 50
    assert (await client.set_limits(max_parallel_nodes=5)).max_parallel_nodes == 5
    assert _body(put) == {"max_parallel_nodes": 5}


async def test_set_limits_needs_a_value(client: OrchestratorClient) -> None:
    with pytest.raises(ValueError, match="needs"):
        await client.set_limits()


async def test_agents(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/agents").respond(
        json={
            "items": [
                {"agent_id": "builtin.hang", "kind": "inprocess", "restarts": 1, "running_nodes": ["n"]}
            ]
        }
    )
    mock.post("/admin/agents/builtin.hang/restart").respond(
        json={"agent_id": "builtin.hang", "restarts": 2, "interrupted_nodes": ["n"]}
    )
    agents = await client.list_agents()
    assert agents[0].restarts == 1 and agents[0].running_nodes == ["n"]
    restart = await client.restart_agent("builtin.hang")
    assert restart.restarts == 2 and restart.interrupted_nodes == ["n"]


# -- error mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequest),
        (422, BadRequest),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (500, OrchestratorError),
        (418, OrchestratorError),
    ],
)
async def test_error_statuses_map_to_types_with_detail(
    client: OrchestratorClient, mock: respx.MockRouter, status: int, error_type: type[OrchestratorError]
) -> None:
    mock.get("/executions/ex-1").respond(status, json={"error": "some_code", "detail": "what went wrong"})
    with pytest.raises(error_type) as info:
        await client.get_execution("ex-1")
    assert type(info.value) is error_type
    assert (info.value.status, info.value.detail, info.value.code) == (status, "what went wrong", "some_code")


async def test_conflict_on_cancel_of_finished_run(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.post("/executions/ex-1/cancel").respond(
        409, json={"error": "conflict", "detail": "already completed"}
    )
    with pytest.raises(Conflict, match="already completed"):
        await client.cancel("ex-1")


async def test_non_json_error_body_is_kept_as_detail(
    client: OrchestratorClient, mock: respx.MockRouter
) -> None:
    mock.get("/executions/ex-1").respond(500, text="boom")
    with pytest.raises(OrchestratorError) as info:
        await client.get_execution("ex-1")
    assert info.value.detail == "boom" and info.value.code is None


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_mean_unavailable(
    client: OrchestratorClient, mock: respx.MockRouter, status: int
) -> None:
    mock.get("/metrics").respond(status, text="upstream down")
    with pytest.raises(OrchestratorUnavailable, match=str(status)):
        await client.get_metrics()


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.ReadTimeout("slow"),
        httpx.ReadError("x"),
    ],
)
async def test_transport_errors_mean_unavailable(
    client: OrchestratorClient, mock: respx.MockRouter, exc: Exception
) -> None:
    mock.get("/executions").mock(side_effect=exc)
    with pytest.raises(OrchestratorUnavailable) as info:
        await client.list_executions()
    assert isinstance(info.value.__cause__, httpx.TransportError)


async def test_non_json_success_is_an_error(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/executions/ex-1/trace").respond(200, text="<html>")
    with pytest.raises(OrchestratorError, match="not JSON"):
        await client.get_trace("ex-1")


async def test_wrong_shape_is_an_error(client: OrchestratorClient, mock: respx.MockRouter) -> None:
    mock.get("/executions").respond(json={"executions": []})
    with pytest.raises(OrchestratorError, match="items"):
        await client.list_executions()


async def test_really_unreachable_server_fails_fast() -> None:
    async with OrchestratorClient(f"http://127.0.0.1:{free_port()}", None, timeout=1.0) as c:
        with pytest.raises(OrchestratorUnavailable, match="unreachable"):
            await c.get_metrics()


async def test_from_settings_uses_token_from_file(tmp_path: Any, mock: respx.MockRouter) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    settings = load_settings(
        orchestrator_url=BASE, orchestrator_token="plain", orchestrator_token_file=token_file
    )
    route = mock.get("/metrics").respond(json={})
    async with orchestrator_client(settings) as c:
        await c.get_metrics()
    assert route.calls.last.request.headers["Authorization"] == "Bearer file-token"


# -- client messages -------------------------------------------------------------------------------------
# The one line on-call reads when the orchestrator does not answer names where and how long.


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            httpx.ReadTimeout("slow"),
            f"orchestrator at {BASE} timed out after 1.5s (GET /executions/x: ReadTimeout)",
        ),
        (httpx.ConnectError(""), f"orchestrator at {BASE} unreachable (GET /executions/x): ConnectError"),
    ],
)
async def test_unavailable_names_the_url_and_the_timeout(error: Exception, expected: str) -> None:
    async with OrchestratorClient(BASE, "t", timeout=1.5) as client:
        with respx.mock(base_url=BASE + "/api/v1/orchestrator") as router:
            router.get("/executions/x").mock(side_effect=error)
            with pytest.raises(OrchestratorUnavailable) as caught:
                await client.get_execution("x")
    assert str(caught.value) == expected


async def test_a_silent_scrape_failure_is_not_an_empty_reason() -> None:
    async with OrchestratorClient(BASE, "t", timeout=1.5) as client:
        with respx.mock() as router:
            router.get(BASE + "/metrics").mock(side_effect=httpx.ConnectError(""))
            with pytest.raises(OrchestratorUnavailable, match=r"unreachable \(GET /metrics\): ConnectError$"):
                await client.scrape_metrics()


async def test_prometheus_refusing_connections_is_one_short_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = PrometheusClient(url, timeout=1)
    try:
        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("vector(1)")
    finally:
        client.close()
    assert str(caught.value) == f"Prometheus at {url} unreachable: [Errno 111] Connection refused"
