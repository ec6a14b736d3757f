"""REST API: every route's happy path, auth failures and each error status, against the real app."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from orchestrator_core.api import API_PREFIX, ROUTES
from tests.conftest import free_port
from tests.orchestrator.service_harness import (
    API,
    TOKEN,
    Gates,
    Harness,
    chain_dag,
    make_settings,
    running_service,
)

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


def _concrete(path: str) -> str:
    return path.replace("{execution_id}", "nope").replace("{dag_id}", "nope").replace("{agent_id}", "nope")


# -- auth -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [r for r in ROUTES if r.auth], ids=lambda r: f"{r.method} {r.path}")
async def test_every_protected_route_refuses_missing_token(h: Harness, route: object) -> None:
    method, path = route.method, _concrete(route.path)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=h.base_url) as anonymous:
        response = await anonymous.request(method, path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"


async def test_wrong_token_is_refused(h: Harness) -> None:
    response = await h.client.get(f"{API}/executions", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": "invalid bearer token"}
    response = await h.client.get(f"{API}/executions", headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


async def test_health_readiness_and_metrics_need_no_token(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.base_url) as anonymous:
        assert (await anonymous.get("/healthz")).json()["status"] == "ok"
        ready = await anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok", "locks": "ok"}
        metrics = await anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "gl_orchestrator_active_executions" in metrics.text


async def test_tokens_from_mounted_file_are_reloaded(
    _no_pending_tasks: None, sqlite_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("first-token\n")
    settings = make_settings(sqlite_url, api_tokens=[], api_token_file=token_file)
    async with running_service(settings) as h:
        first = {"Authorization": "Bearer first-token"}
        assert (await h.client.get(f"{API}/agents", headers=first)).status_code == 200
        token_file.write_text("second-token\n")
        os.utime(token_file, (1, 1))  # a different mtime, as a rotated secret gets
        assert (await h.client.get(f"{API}/agents", headers=first)).status_code == 401
        second = {"Authorization": "Bearer second-token"}
        assert (await h.client.get(f"{API}/agents", headers=second)).status_code == 200


async def test_readiness_fails_when_redis_is_down(_no_pending_tasks: None, sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_service(settings) as h:
        response = await h.client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "not_ready" and body["checks"]["store"] == "ok"
    assert body["checks"]["locks"].startswith("unavailable")


# -- generic errors ---------------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_are_json(h: Harness) -> None:
    missing = await h.api("GET", "/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = await h.api("DELETE", "/dags/x")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


async def test_malformed_json_is_400(h: Harness) -> None:
    response = await h.api(
        "POST", "/dags", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    response = await h.api(
        "PUT", "/admin/limits", content=b"[1,", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"


async def test_wrong_content_type_is_415(h: Harness) -> None:
    response = await h.api("POST", "/dags", content=b"dag_id=x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


async def test_body_over_limit_is_413(h: Harness) -> None:
    big = {"dag_id": "big", "nodes": {"a": {"agent_id": "builtin.echo", "params": {"pad": "x" * 10_000}}}}
    response = await h.api("POST", "/dags", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/executions/nope"),
        ("GET", "/executions/nope/trace"),
        ("POST", "/executions/nope/cancel"),
        ("POST", "/executions/nope/resume"),
        ("GET", "/executions/nope/provenance"),
        ("GET", "/executions/nope/logs"),
        ("GET", "/checkpoints/nope"),
        ("GET", "/dags/nope"),
        ("PUT", "/dags/nope"),
        ("POST", "/dags/nope/execute"),
        ("POST", "/admin/agents/nope/restart"),
    ],
)
async def test_unknown_ids_are_404(h: Harness, method: str, path: str) -> None:
    kwargs = {"json": {"nodes": {}}} if method == "PUT" else {}
    response = await h.api(method, path, **kwargs)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
    assert "Traceback" not in response.text


# -- DAGs -------------------------------------------------------------------------------------------


async def test_register_and_read_back_dag(h: Harness) -> None:
    dag = await h.register(chain_dag("report", "builtin.echo", "builtin.echo", execution_timeout_seconds=60))
    assert dag["version"] == 1 and set(dag["nodes"]) == {"n1", "n2"}
    response = await h.api("GET", "/dags/report")
    assert response.status_code == 200 and response.json() == dag


async def test_register_dag_as_yaml(h: Harness) -> None:
    text = "dag_id: y\nnodes:\n  a: {agent_id: builtin.echo}\n"
    response = await h.api(
        "POST", "/dags", content=text.encode(), headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 201 and response.json()["dag_id"] == "y"


async def test_cyclic_dag_is_400_naming_the_cycle(h: Harness) -> None:
    dag = {
        "dag_id": "cyc",
        "nodes": {
            "a": {"agent_id": "builtin.echo", "depends_on": ["b"]},
            "b": {"agent_id": "builtin.echo", "depends_on": ["a"]},
        },
    }
    response = await h.api("POST", "/dags", json=dag)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_dag"
    assert body["field"].startswith("nodes.")
    assert "cycle" in body["detail"]


async def test_bad_policy_is_400_naming_the_field(h: Harness) -> None:
    dag = chain_dag("bad", "builtin.echo")
    dag["nodes"]["n1"]["retry_policy"] = {"strategy": "sometimes"}
    response = await h.api("POST", "/dags", json=dag)
    assert response.status_code == 400
    assert response.json()["field"] == "nodes.n1.retry_policy.strategy"


async def test_partial_update_changes_one_node_timeout(h: Harness) -> None:
    await h.register(chain_dag("slow", "builtin.echo", "builtin.echo"))
    patch = {"nodes": {"n2": {"timeout_policy": {"timeout_seconds": 300, "on_timeout": "fail"}}}}
    response = await h.api("PUT", "/dags/slow", json=patch)
    assert response.status_code == 200, response.text
    dag = response.json()
    assert dag["version"] == 2
    assert dag["nodes"]["n2"]["timeout_policy"]["timeout_seconds"] == 300
    assert dag["nodes"]["n1"] == (await h.api("GET", "/dags/slow")).json()["nodes"]["n1"]
    bad = await h.api(
        "PUT", "/dags/slow", json={"nodes": {"n2": {"timeout_policy": {"on_timeout": "panic"}}}}
    )
    assert bad.status_code == 400 and bad.json()["field"].startswith("nodes.n2.timeout_policy")
    empty = await h.api("PUT", "/dags/slow", json={})
    assert empty.status_code == 400


# -- executions -------------------------------------------------------------------------------------


async def test_execute_runs_to_completion_with_trace_checkpoints_provenance_logs(h: Harness) -> None:
    await h.register(chain_dag("ok", "builtin.echo", "builtin.echo"))
    response = await h.api(
        "POST",
        "/dags/ok/execute",
        json={
            "input_data": {"year": 2025},
            "execution_options": {"checkpoint_enabled": True, "deterministic_mode": True},
        },
    )
    assert response.status_code == 202
    execution = response.json()
    assert execution["dag_id"] == "ok" and execution["status"] in ("queued", "running", "completed")
    execution_id = execution["execution_id"]
    done = await h.wait_status(execution_id, "completed")
    assert done["completed_at"].endswith("Z") and done["error"] is None

    got = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert got["status"] == "completed" and got["input_data"] == {"year": 2025}

    trace = (await h.api("GET", f"/executions/{execution_id}/trace")).json()
    assert trace["topology_levels"] == [["n1"], ["n2"]]
    assert trace["node_traces"]["n2"]["status"] == "completed"
    assert trace["node_traces"]["n2"]["attempt_count"] == 1

    checkpoints = (await h.api("GET", f"/checkpoints/{execution_id}")).json()
    assert checkpoints["execution_id"] == execution_id
    assert sorted(cp["node_id"] for cp in checkpoints["checkpoints"]) == ["n1", "n2"]

    provenance = (await h.api("GET", f"/executions/{execution_id}/provenance")).json()
    assert provenance["chain_valid"] is True and len(provenance["chain"]) == 2

    logs = (await h.api("GET", f"/executions/{execution_id}/logs", params={"node_id": "n2"})).json()
    assert logs["lines"] and all(line["node_id"] == "n2" for line in logs["lines"])
    assert all(line["agent_id"] == "builtin.echo" for line in logs["lines"])
    assert (await h.api("GET", f"/executions/{execution_id}/logs", params={"limit": "x"})).status_code == 400


async def test_list_filters_by_status_and_rejects_unknown_status(h: Harness, gates: Gates) -> None:
    await h.register(chain_dag("gated", "test.gate"))
    execution = await h.execute("gated")
    await gates.wait_started(1)
    running = (await h.api("GET", "/executions", params={"status": "running"})).json()["items"]
    assert [item["execution_id"] for item in running] == [execution["execution_id"]]
    assert running[0]["started_at"].endswith("Z") and running[0]["owner"] == "replica-test"
    assert (await h.api("GET", "/executions", params={"status": "completed"})).json()["items"] == []
    bad = await h.api("GET", "/executions", params={"status": "stuck"})
    assert bad.status_code == 400 and bad.json()["field"] == "status"
    gates.open("n1")
    await h.wait_status(execution["execution_id"], "completed")


async def test_cancel_then_cancel_again_is_409(h: Harness, gates: Gates) -> None:
    await h.register(chain_dag("c", "builtin.echo", "test.gate"))
    execution_id = (await h.execute("c"))["execution_id"]
    await gates.wait_started(1)
    response = await h.api(
        "POST", f"/executions/{execution_id}/cancel", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    again = await h.api("POST", f"/executions/{execution_id}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "invalid_state"
    checkpoints = (await h.api("GET", f"/checkpoints/{execution_id}")).json()["checkpoints"]
    assert [cp["node_id"] for cp in checkpoints] == ["n1"]


async def test_resume_skips_checkpointed_nodes_and_resume_of_running_is_409(h: Harness, gates: Gates) -> None:
    await h.register(chain_dag("r", "builtin.echo", "test.gate"))
    execution_id = (await h.execute("r"))["execution_id"]
    await gates.wait_started(1)
    busy = await h.api("POST", f"/executions/{execution_id}/resume")
    assert busy.status_code == 409
    await h.api("POST", f"/executions/{execution_id}/cancel")
    gates.open("n2")
    response = await h.api(
        "POST", f"/executions/{execution_id}/resume", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["execution_id"] == execution_id
    assert body["nodes_skipped"] == ["n1"] and body["nodes_remaining"] == ["n2"]
    await h.wait_status(execution_id, "completed")
    trace = (await h.api("GET", f"/executions/{execution_id}/trace")).json()
    assert trace["node_traces"]["n1"]["attempt_count"] == 1


async def test_execute_rejects_bad_options(h: Harness) -> None:
    await h.register(chain_dag("o", "builtin.echo"))
    response = await h.api(
        "POST", "/dags/o/execute", json={"execution_options": {"checkpoint_enabled": "maybe"}}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "execution_options.checkpoint_enabled"
    response = await h.api("POST", "/dags/o/execute", json={"inputs": {}})
    assert response.status_code == 400 and response.json()["field"] == "inputs"


# -- limits, metrics, agents, OpenAPI ----------------------------------------------------------------


async def test_limits_get_put_and_validation(h: Harness) -> None:
    limits = (await h.api("GET", "/admin/limits")).json()
    assert limits["max_parallel_nodes"] == 10 and limits["max_concurrent_executions"] == 50
    changed = await h.api(
        "PUT", "/admin/limits", json={"max_parallel_nodes": 3, "max_concurrent_executions": 7}
    )
    assert changed.status_code == 200
    assert changed.json()["max_parallel_nodes"] == 3 and changed.json()["max_concurrent_executions"] == 7
    assert h.service.engine.max_parallel_nodes == 3
    for bad in ({"max_parallel_nodes": 0}, {}, {"max_concurrent_executions": "ten"}, {"other": 1}):
        response = await h.api("PUT", "/admin/limits", json=bad)
        assert response.status_code == 400, bad


async def test_metrics_json_shape(h: Harness) -> None:
    body = (await h.api("GET", "/metrics")).json()
    assert {
        "active_executions",
        "max_concurrent_executions",
        "queued_executions",
        "max_parallel_nodes",
    } <= set(body)
    assert body["active_executions"] == 0 and body["queued_executions"] == 0


async def test_agents_list_and_restart_interrupts_running_attempt(h: Harness, gates: Gates) -> None:
    items = (await h.api("GET", "/agents")).json()["items"]
    assert {"builtin.echo", "test.gate"} <= {item["agent_id"] for item in items}
    dag = chain_dag("restart", "test.gate")
    dag["nodes"]["n1"]["retry_policy"] = {"max_retries": 2, "base_delay": 0.01, "strategy": "fixed"}
    await h.register(dag)
    execution_id = (await h.execute("restart"))["execution_id"]
    await gates.wait_started(1)
    response = await h.api("POST", "/admin/agents/test.gate/restart")
    assert response.status_code == 200
    body = response.json()
    assert body["agent_id"] == "test.gate" and body["restarts"] == 1 and body["interrupted_nodes"] == ["n1"]
    await gates.wait_started(2)
    gates.open("n1")
    await h.wait_status(execution_id, "completed")
    trace = (await h.api("GET", f"/executions/{execution_id}/trace")).json()
    assert trace["node_traces"]["n1"]["attempt_count"] == 2


async def test_openapi_lists_exactly_the_registered_routes(h: Harness) -> None:
    document = (await h.api("GET", "/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    registered = {
        (route.method, route.resource.canonical)
        for route in h.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == registered
    assert len(documented) == len(ROUTES)
    assert all(
        path.startswith(API_PREFIX) or path in ("/metrics", "/healthz", "/readyz") for _, path in documented
    )
    for path, ops in document["paths"].items():
        for method, operation in ops.items():
            assert operation["responses"], (method, path)
            protected = path.startswith(API_PREFIX)
            assert (operation["security"] == [{"bearerAuth": []}]) is protected, (method, path)


async def test_unexpected_error_is_500_json_without_traceback(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(h.service.engine, "get_dag", broken)
    response = await h.api("GET", "/dags/any")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "internal error; see the orchestrator logs",
    }
    assert "secret internals" in caplog.text  # logged server-side, with its traceback


async def test_shutting_down_refuses_new_runs_with_503(h: Harness) -> None:
    await h.register(chain_dag("late", "builtin.echo"))
    await h.service.shutdown(grace_seconds=0)
    response = await h.api("POST", "/dags/late/execute", json={})
    assert response.status_code == 503 and response.json()["error"] == "service_unavailable"
    ready = await h.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["store"].endswith("the store is closed")
    assert h.service.engine.store.engine.sync_engine.pool.checkedin() == 0  # no connection left behind
