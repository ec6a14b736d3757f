"""The orchestrator client's stuck-run signals (issue 16): `running_nodes` follows every page of
`GET /running-nodes`, `node_durations` reads a DAG's per-node history, an Execution carries the new
fields, `ExecutionQuery` sends the stuck-state filters, and a malformed answer is an error naming the
route (respx)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import respx

from watchdog_sdk.clients.orchestrator import ExecutionQuery, NormalDuration, OrchestratorClient
from watchdog_sdk.errors import NotFound, OrchestratorError

BASE = "http://orch.test:8080"
API = BASE + "/api/v1/orchestrator"
NORMAL = {"count": 12, "p50_seconds": 30.0, "p95_seconds": 80.0, "p99_seconds": 95.0}


def node(execution_id: str, **overrides: object) -> dict[str, object]:
    return {
        "execution_id": execution_id,
        "dag_id": "emissions",
        "node_id": "calc",
        "agent_id": "emissions.calc",
        "attempt": 1,
        "started_at": "2026-03-01T11:00:00Z",
        "last_progress_at": None,
        "progress_reports": 0,
        "normal_duration": NORMAL,
        **overrides,
    }


@pytest.fixture
async def client() -> AsyncIterator[OrchestratorClient]:
    async with OrchestratorClient(BASE, "s3cret", timeout=2.0) as c:
        yield c


@respx.mock
async def test_running_nodes_follows_every_page_with_the_same_filters(client: OrchestratorClient) -> None:
    pages = {
        None: {"items": [node("a"), node("b")], "next_cursor": "c1", "total": 3},
        "c1": {"items": [node("c", attempt=4, last_progress_at="2026-03-01T11:59:00Z")], "next_cursor": None},
    }
    route = respx.get(f"{API}/running-nodes").mock(
        side_effect=lambda request: httpx.Response(200, json=pages[request.url.params.get("cursor")])
    )
    before = datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
    nodes = await client.running_nodes(dag_id="emissions", started_before=before)
    assert [n.execution_id for n in nodes] == ["a", "b", "c"]
    assert nodes[2].attempt == 4 and nodes[2].last_progress_at == datetime(2026, 3, 1, 11, 59, tzinfo=UTC)
    assert nodes[0].normal_duration is not None and nodes[0].normal_duration.quantile(0.95) == 80.0
    asked = [dict(call.request.url.params) for call in route.calls]
    assert asked == [
        {"limit": "5000", "dag_id": "emissions", "started_before": "2026-03-01T11:30:00Z"},
        {"limit": "5000", "cursor": "c1", "dag_id": "emissions", "started_before": "2026-03-01T11:30:00Z"},
    ]
    assert route.calls[0].request.headers["Authorization"] == "Bearer s3cret"


@respx.mock
async def test_running_nodes_refuses_a_cursor_handed_out_twice(client: OrchestratorClient) -> None:
    respx.get(f"{API}/running-nodes").respond(json={"items": [node("a")], "next_cursor": "same", "total": 9})
    with pytest.raises(OrchestratorError, match="GET /running-nodes handed out the same cursor twice"):
        await client.running_nodes()


@respx.mock
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"nodes": []}, "without an 'items' list"),
        ({"items": [], "next_cursor": 7}, "next_cursor that is not a string"),
        (
            {"items": [{"execution_id": "a"}], "next_cursor": None},
            "unexpected answer (node_id: Field required)",
        ),
    ],
)
async def test_a_malformed_running_nodes_answer_names_the_problem(
    client: OrchestratorClient, body: dict[str, object], problem: str
) -> None:
    respx.get(f"{API}/running-nodes").respond(json=body)
    with pytest.raises(OrchestratorError) as caught:
        await client.running_nodes()
    assert problem in str(caught.value)


@respx.mock
async def test_node_durations_reads_each_nodes_history(client: OrchestratorClient) -> None:
    respx.get(f"{API}/dags/emissions%2Fv2/node-durations").respond(
        json={"dag_id": "emissions/v2", "nodes": [{"node_id": "calc", "agent_id": "a", **NORMAL}]}
    )
    [calc] = await client.node_durations("emissions/v2")
    assert (calc.node_id, calc.agent_id, calc.count, calc.p99_seconds) == ("calc", "a", 12, 95.0)


@respx.mock
async def test_node_durations_of_an_unknown_dag_is_not_found(client: OrchestratorClient) -> None:
    respx.get(f"{API}/dags/nope/node-durations").respond(
        404, json={"error": "not_found", "detail": "no DAG nope"}
    )
    with pytest.raises(NotFound, match="no DAG nope"):
        await client.node_durations("nope")


@respx.mock
async def test_an_execution_carries_the_stuck_run_signals(client: OrchestratorClient) -> None:
    respx.get(f"{API}/executions/ex-1").respond(
        json={
            "execution_id": "ex-1",
            "status": "failed",
            "queued_at": "2026-03-01T10:00:00Z",
            "cancel_requested_at": None,
            "resume_count": 2,
            "failure_streak": {"node_id": "calc", "count": 3},
            "owner_alive": None,
        }
    )
    execution = await client.get_execution("ex-1")
    assert execution.queued_at == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert execution.resume_count == 2 and execution.failure_streak is not None
    assert (execution.failure_streak.node_id, execution.failure_streak.count) == ("calc", 3)
    assert execution.owner_alive is None and execution.cancel_requested_at is None


@respx.mock
async def test_an_older_orchestrators_execution_leaves_the_signals_unknown(
    client: OrchestratorClient,
) -> None:
    respx.get(f"{API}/executions/ex-1").respond(json={"execution_id": "ex-1", "status": "running"})
    execution = await client.get_execution("ex-1")
    assert (execution.resume_count, execution.failure_streak, execution.owner_alive) == (None, None, None)


@respx.mock
async def test_the_stuck_state_filters_go_into_the_query_string(client: OrchestratorClient) -> None:
    route = respx.get(f"{API}/executions").respond(json={"items": [], "next_cursor": None, "total": 0})
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    query = ExecutionQuery(
        "running,queued", queued_before=at, cancel_requested_before=at, min_resume_count=2, owner_gone=True
    )
    assert await client.list_matching(query, page_size=100) == []
    assert dict(route.calls[0].request.url.params) == {
        "status": "running,queued",
        "queued_before": "2026-03-01T12:00:00Z",
        "cancel_requested_before": "2026-03-01T12:00:00Z",
        "min_resume_count": "2",
        "owner_gone": "true",
        "limit": "100",
    }


def test_a_normal_duration_answers_the_reported_quantiles_only() -> None:
    normal = NormalDuration.model_validate(NORMAL)
    assert [normal.quantile(q) for q in (0.5, 0.95, 0.99)] == [30.0, 80.0, 95.0]
    with pytest.raises(ValueError, match=r"reports the quantiles \(0.5, 0.95, 0.99\) of a history, not 0.9"):
        normal.quantile(0.9)
    assert NormalDuration(count=0).quantile(0.95) is None
