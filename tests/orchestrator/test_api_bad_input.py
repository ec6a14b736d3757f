"""Bad input a tired on-call engineer types into the runbook's curl commands: refused with a JSON 400 that
names the problem, and nothing stored or changed behind the refusal."""

from __future__ import annotations

from typing import Any

import pytest

from tests.orchestrator.service_harness import (
    Harness,
    chain_dag,
)

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_parallel_nodes": True}, "max_parallel_nodes"),  # lax pydantic read this as 1
        ({"max_parallel_nodes": "5"}, "max_parallel_nodes"),
        ({"max_parallel_nodes": 10_001}, "max_parallel_nodes"),
        ({"max_parallel_nodes": 1_000_000_000_000}, "max_parallel_nodes"),
        ({"max_concurrent_executions": 100_001}, "max_concurrent_executions"),
        ({"max_concurrent_executions": -1}, "max_concurrent_executions"),
        ({"max_parallel_nodes": 5, "max_concurrent_executions": 0}, "max_concurrent_executions"),
        ([5], ""),
    ],
)
async def test_limits_refuse_wrong_types_and_out_of_range_values_and_keep_the_old_ones(
    h: Harness, body: Any, field: str
) -> None:
    before = (await h.api("GET", "/admin/limits")).json()
    response = await h.api("PUT", "/admin/limits", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request" and response.json()["field"] == field
    assert "LimitsRequest" not in response.text
    assert (await h.api("GET", "/admin/limits")).json() == before


async def test_limits_accept_the_upper_bounds(h: Harness) -> None:
    response = await h.api(
        "PUT", "/admin/limits", json={"max_parallel_nodes": 10_000, "max_concurrent_executions": 100_000}
    )
    assert response.status_code == 200, response.text
    assert response.json()["max_parallel_nodes"] == 10_000


async def test_execute_refuses_options_that_are_not_booleans_and_queues_nothing(h: Harness) -> None:
    await h.register(chain_dag("opts", "builtin.echo"))
    bad_options: list[Any] = [{"checkpoint_enabled": "yes"}, {"deterministic_mode": 1}, []]
    for options in bad_options:
        response = await h.api("POST", "/dags/opts/execute", json={"execution_options": options})
        assert response.status_code == 400, (options, response.text)
        assert response.json()["field"].startswith("execution_options")
        assert "ExecutionOptionsModel" not in response.text
    assert await h.service.engine.list_executions(dag_id="opts") == []


async def test_partial_update_of_a_mistyped_node_names_the_dag_s_nodes_and_changes_nothing(
    h: Harness,
) -> None:
    await h.register(chain_dag("typo", "builtin.echo", "builtin.echo"))
    patch = {"nodes": {"n3": {"timeout_policy": {"timeout_seconds": 300, "on_timeout": "fail"}}}}
    response = await h.api("PUT", "/dags/typo", json=patch)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_dag" and body["field"] == "nodes.n3"
    assert "no node 'n3'" in body["detail"] and "n1, n2" in body["detail"]
    assert (await h.api("GET", "/dags/typo")).json()["version"] == 1


async def test_partial_update_may_still_add_a_node_that_names_its_agent(h: Harness) -> None:
    await h.register(chain_dag("grow", "builtin.echo"))
    patch = {"nodes": {"n2": {"agent_id": "builtin.echo", "depends_on": ["n1"]}}}
    response = await h.api("PUT", "/dags/grow", json=patch)
    assert response.status_code == 200, response.text
    assert sorted(response.json()["nodes"]) == ["n1", "n2"] and response.json()["version"] == 2


@pytest.mark.parametrize(
    ("method", "path", "wrap"),
    [
        ("POST", "/dags", "{}"),
        ("PUT", "/dags/deep", '{{"nodes": {}}}'),
        ("POST", "/dags/deep/execute", '{{"input_data": {}}}'),
        ("PUT", "/admin/limits", "{}"),
    ],
)
@pytest.mark.parametrize("depth", [150, 1500])  # past our limit; past the parser's recursion limit
async def test_deeply_nested_json_is_400_not_500(
    h: Harness, method: str, path: str, wrap: str, depth: int
) -> None:
    await h.register(chain_dag("deep", "builtin.echo"))
    nested = "[" * depth + "]" * depth  # under the body limit
    response = await h.api(
        method, path, content=wrap.format(nested).encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "nested deeper than" in response.json()["detail"]
    assert await h.service.engine.list_executions(dag_id="deep") == []
    assert (await h.api("GET", "/dags/deep")).json()["version"] == 1


async def test_yaml_alias_bomb_is_refused_without_expanding_it(h: Harness) -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]  # 9**10 values
    response = await h.api(
        "POST", "/dags", content="\n".join(lines).encode(), headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 400, response.text
    assert "document too large" in response.json()["detail"]


async def test_openapi_documents_503_and_the_limit_bounds(h: Harness) -> None:
    document = (await h.api("GET", "/openapi.json")).json()
    put_limits = document["paths"]["/api/v1/orchestrator/admin/limits"]["put"]
    assert "503" in put_limits["responses"]
    assert "503" in document["paths"]["/api/v1/orchestrator/dags/{dag_id}/execute"]["post"]["responses"]
    bounds = document["components"]["schemas"]["LimitsRequest"]["properties"]
    assert bounds["max_parallel_nodes"]["maximum"] == 10_000
    assert bounds["max_concurrent_executions"]["maximum"] == 100_000
