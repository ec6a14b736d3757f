"""The stuck-run signals of the orchestrator's API (issue 16), through the real service on loopback:
progress reports (route and in-process helper), the trace's progress and normal duration, the
node-duration history, the running nodes of every replica, and the other stuck states on executions."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator_core import engine as engine_module
from orchestrator_core.agents import AgentContext
from orchestrator_core.errors import RetryableAgentError
from orchestrator_core.locks import RedisLockBackend
from tests.orchestrator.foreign_runs import running_row, running_runs
from tests.orchestrator.service_harness import (
    Gates,
    Harness,
    chain_dag,
    make_registry,
    make_settings,
    running_service,
)


async def _running_at_gate(h: Harness, gates: Gates, dag_id: str = "signals") -> str:
    """A run of `dag_id` (n1: gate, n2: echo) whose n1 is running; its id."""
    await h.register(chain_dag(dag_id, "test.gate", "builtin.echo"))
    started = len(gates.calls)
    record = await h.execute(dag_id)
    await gates.wait_started(started + 1)
    return str(record["execution_id"])


def _progress_path(execution_id: str, node_id: str) -> str:
    return f"/executions/{execution_id}/nodes/{node_id}/progress"


async def test_a_progress_report_is_taken_counted_and_shown_in_the_trace_and_running_nodes(
    h: Harness, gates: Gates
) -> None:
    execution_id = await _running_at_gate(h, gates)
    first = await h.api(
        "POST", _progress_path(execution_id, "n1"), json={"message": "rows 1-100", "fraction": 0.1}
    )
    assert first.status_code == 200, first.text
    assert first.json()["reports"] == 1 and first.json()["node_id"] == "n1"
    second = await h.api("POST", _progress_path(execution_id, "n1"))  # no body: a bare report
    assert second.json()["reports"] == 2

    trace = (await h.api("GET", f"/executions/{execution_id}/trace")).json()["node_traces"]
    assert trace["n1"]["progress_reports"] == 2
    assert trace["n1"]["last_progress_at"] == second.json()["progress_at"]
    assert trace["n1"]["progress_message"] is None  # the last report's (it had none)
    assert trace["n2"]["progress_reports"] == 0 and trace["n2"]["last_progress_at"] is None

    page = (await h.api("GET", "/running-nodes")).json()
    assert page["total"] == 1
    [item] = page["items"]
    assert (item["execution_id"], item["node_id"], item["agent_id"]) == (execution_id, "n1", "test.gate")
    assert item["attempt"] == 1 and item["progress_reports"] == 2 and item["normal_duration"] is None

    metrics = h.service.metrics.render().decode()
    assert 'gl_orchestrator_node_progress_reports_total{dag_id="signals",node_id="n1"} 2.0' in metrics
    gates.open("n1")
    await h.wait_status(execution_id, "completed")
    assert (await h.api("GET", "/running-nodes")).json() == {"items": [], "next_cursor": None, "total": 0}


async def test_progress_for_an_unknown_run_or_node_is_404_and_for_a_node_not_running_409(
    h: Harness, gates: Gates
) -> None:
    execution_id = await _running_at_gate(h, gates)
    unknown_run = await h.api("POST", _progress_path("nope", "n1"), json={})
    assert unknown_run.status_code == 404 and "nope" in unknown_run.json()["detail"]
    unknown_node = await h.api("POST", _progress_path(execution_id, "zz"), json={})
    assert unknown_node.status_code == 404 and "'zz'" in unknown_node.json()["detail"]
    pending = await h.api("POST", _progress_path(execution_id, "n2"), json={})
    assert pending.status_code == 409 and "is pending" in pending.json()["detail"]
    gates.open("n1")
    await h.wait_status(execution_id, "completed")
    finished = await h.api("POST", _progress_path(execution_id, "n1"), json={})
    assert finished.status_code == 409 and "completed" in finished.json()["detail"]


async def test_bad_progress_reports_are_400_naming_the_field(h: Harness, gates: Gates) -> None:
    execution_id = await _running_at_gate(h, gates)
    path = _progress_path(execution_id, "n1")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"message": "x" * 501}, "message"),
        ({"message": "a\x00b"}, "message"),
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": -0.1}, "fraction"),
        ({"fraction": "half"}, "fraction"),
        ({"fraction": "0.5"}, "fraction"),
        ({"fraction": True}, "fraction"),
        ({"message": 7}, "message"),
        ({"percent": 3}, "percent"),
    ]
    for body, field in cases:
        response = await h.api("POST", path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field, (body, response.json())
    bad_node = await h.api("POST", _progress_path(execution_id, "bad/id"), json={})
    assert bad_node.status_code in (400, 404)
    gates.open("n1")


async def test_in_process_agents_report_progress_through_their_context(h: Harness, gates: Gates) -> None:
    seen: list[AgentContext] = []
    reported = asyncio.Event()

    async def reporting(ctx: AgentContext) -> Any:
        ctx.report_progress(message="half way", fraction=0.5)
        seen.append(ctx)
        reported.set()
        await gates.gate("reporting").wait()
        return {}

    h.service.registry.register("test.reporting", reporting)
    await h.register({"dag_id": "reporter", "nodes": {"r": {"agent_id": "test.reporting"}}})
    record = await h.execute("reporter")
    async with asyncio.timeout(10):
        await reported.wait()
    trace = (await h.api("GET", f"/executions/{record['execution_id']}/trace")).json()["node_traces"]
    assert trace["r"]["progress_reports"] == 1
    assert (trace["r"]["progress_message"], trace["r"]["progress_fraction"]) == ("half way", 0.5)
    try:
        seen[0].report_progress(fraction=2.0)
    except ValueError as exc:
        assert "fraction" in str(exc)
    else:
        raise AssertionError("a fraction over 1 was taken")
    gates.open("reporting")
    await h.wait_status(record["execution_id"], "completed")


async def test_node_durations_of_completed_nodes_are_served_and_404_for_an_unknown_dag(h: Harness) -> None:
    await h.register(chain_dag("timed", "builtin.echo", "builtin.echo"))
    for _ in range(3):
        record = await h.execute("timed")
        await h.wait_status(record["execution_id"], "completed")
    answer = (await h.api("GET", "/dags/timed/node-durations")).json()
    assert answer["dag_id"] == "timed"
    assert [(n["node_id"], n["agent_id"], n["count"]) for n in answer["nodes"]] == [
        ("n1", "builtin.echo", 3),
        ("n2", "builtin.echo", 3),
    ]
    assert all(n["p50_seconds"] is not None and n["p99_seconds"] >= n["p50_seconds"] for n in answer["nodes"])
    assert (await h.api("GET", "/dags/nope/node-durations")).status_code == 404
    await h.register(chain_dag("untimed", "builtin.echo"))
    assert (await h.api("GET", "/dags/untimed/node-durations")).json() == {"dag_id": "untimed", "nodes": []}
    trace = (await h.api("GET", f"/executions/{record['execution_id']}/trace")).json()["node_traces"]
    assert trace["n1"]["normal_duration"]["count"] == 3


async def test_running_nodes_refuses_bad_filters_and_foreign_cursors(h: Harness) -> None:
    assert (await h.api("GET", "/running-nodes", params={"limit": 0})).status_code == 400
    assert (await h.api("GET", "/running-nodes", params={"limit": 5001})).json()["field"] == "limit"
    naive = await h.api("GET", "/running-nodes", params={"started_before": "2026-01-01T00:00:00"})
    assert naive.status_code == 400 and naive.json()["field"] == "started_before"
    cursor = await h.api("GET", "/running-nodes", params={"cursor": "abc.def"})
    assert cursor.status_code == 400 and cursor.json()["field"] == "cursor"


async def test_executions_show_queue_cancel_resume_and_failure_fields_and_filter_on_them(
    h: Harness, gates: Gates
) -> None:
    execution_id = await _running_at_gate(h, gates, "stuck")
    await h.service.heartbeat_once()
    running = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert running["queued_at"] == running["created_at"]
    assert running["resume_count"] == 0 and running["failure_streak"] is None
    assert running["cancel_requested_at"] is None
    assert running["owner_alive"] is True  # this replica, which heartbeats in-process
    mine = await h.api("GET", "/executions", params={"owner_gone": "false"})
    assert [e["execution_id"] for e in mine.json()["items"]] == [execution_id]
    gone = await h.api("GET", "/executions", params={"owner_gone": "true"})
    assert gone.json()["total"] == 0

    cancelled = (await h.api("POST", f"/executions/{execution_id}/cancel")).json()
    assert cancelled["cancel_requested_at"] is not None and cancelled["owner_alive"] is None
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    asked = await h.api("GET", "/executions", params={"cancel_requested_before": later})
    assert [e["execution_id"] for e in asked.json()["items"]] == [execution_id]
    resumed = await h.api("POST", f"/executions/{execution_id}/resume")
    assert resumed.status_code == 200, resumed.text
    again = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert again["resume_count"] == 1 and again["cancel_requested_at"] is None
    looped = await h.api("GET", "/executions", params={"min_resume_count": 1})
    assert [e["execution_id"] for e in looped.json()["items"]] == [execution_id]
    assert (await h.api("GET", "/executions", params={"min_resume_count": 2})).json()["total"] == 0
    assert (await h.api("GET", "/executions", params={"min_resume_count": -1})).status_code == 400
    gates.open("n1")
    await h.wait_status(execution_id, "completed")


async def test_a_run_failing_at_the_same_node_again_grows_its_failure_streak(h: Harness) -> None:
    await h.register(chain_dag("failing", "builtin.echo", "builtin.fail"))
    record = await h.execute("failing")
    execution_id = record["execution_id"]
    await h.service.engine.wait(execution_id)  # the run's task ends once its failure is recorded
    first = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert first["failure_streak"] == {"node_id": "n2", "count": 1}
    assert (await h.api("POST", f"/executions/{execution_id}/resume")).status_code == 200
    await h.service.engine.wait(execution_id)
    second = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert second["failure_streak"] == {"node_id": "n2", "count": 2} and second["resume_count"] == 1


async def test_queued_before_lists_the_runs_waiting_in_the_queue(h: Harness, gates: Gates) -> None:
    await h.api("PUT", "/admin/limits", json={"max_concurrent_executions": 1})
    first = await _running_at_gate(h, gates, "queue")
    waiting = (await h.execute("queue"))["execution_id"]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    listed = (await h.api("GET", "/executions", params={"queued_before": later})).json()
    assert [e["execution_id"] for e in listed["items"]] == [waiting]
    earlier = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert (await h.api("GET", "/executions", params={"queued_before": earlier})).json()["total"] == 0
    await h.api("POST", f"/executions/{waiting}/cancel")
    gates.open("n1")
    await h.wait_status(first, "completed")


async def test_running_nodes_of_another_replica_page_with_cursors_and_take_progress(h: Harness) -> None:
    store = h.service.engine.store
    ids = await running_runs(store, 1200)
    await store.signals.sync_running([running_row(e, i) for i, e in enumerate(ids)], [], [])
    listed: list[str] = []
    params: dict[str, Any] = {"limit": 500, "dag_id": "wide"}
    while True:
        page = (await h.api("GET", "/running-nodes", params=params)).json()
        assert page["total"] == 1200
        listed += [item["execution_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert len(listed) == len(set(listed)) == 1200
    other_filter = await h.api("GET", "/running-nodes", params={"cursor": params["cursor"]})
    assert other_filter.status_code == 400 and "other filters" in other_filter.json()["detail"]

    # A report for a node another replica runs is taken here and added to its row.
    taken = await h.api("POST", _progress_path(ids[7], "x"), json={"fraction": 0.5})
    assert taken.status_code == 200 and taken.json()["reports"] == 1
    early = await h.api("GET", "/running-nodes", params={"started_before": "2026-03-01T00:00:08Z"})
    assert early.json()["total"] == 24  # started 0-7 s after T0: runs 0-7, 500-507, 1000-1007
    seventh = next(item for item in early.json()["items"] if item["execution_id"] == ids[7])
    assert (seventh["progress_reports"], seventh["progress_fraction"]) == (1, 0.5)
    assert seventh["last_progress_at"] == taken.json()["progress_at"]
    again = await h.api("POST", _progress_path(ids[7], "x"), json={})
    assert again.json()["reports"] == 2  # the stored one and this one


async def test_owner_gone_finds_the_running_runs_of_a_replica_whose_heartbeat_expired(
    sqlite_url: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    gone, alive = f"gone-{suffix}", f"alive-{suffix}"
    settings = make_settings(sqlite_url, redis_url=redis_url, replica_id=f"self-{suffix}")
    peer = RedisLockBackend(redis_url, alive, "pod-alive")
    async with running_service(settings) as served:
        try:
            store = served.service.engine.store
            orphans = await running_runs(store, 3, owner=gone, prefix="orphan")
            kept = await running_runs(store, 2, owner=alive, prefix="kept")
            await peer.heartbeat(30.0)
            listed = (await served.api("GET", "/executions", params={"owner_gone": "true"})).json()
            assert sorted(e["execution_id"] for e in listed["items"]) == orphans and listed["total"] == 3
            assert {e["owner_alive"] for e in listed["items"]} == {False}
            healthy = (await served.api("GET", "/executions", params={"owner_gone": "false"})).json()
            assert sorted(e["execution_id"] for e in healthy["items"]) == kept
            assert (await served.api("GET", f"/executions/{kept[0]}")).json()["owner_alive"] is True
            await peer.drop_heartbeat()
            assert (await served.api("GET", "/executions", params={"owner_gone": "true"})).json()[
                "total"
            ] == 5
        finally:
            await peer.close()


async def test_the_maintenance_tick_writes_running_nodes_and_merges_durations(
    h: Harness, gates: Gates
) -> None:
    store = h.service.engine.store
    execution_id = await _running_at_gate(h, gates, "ticked")
    assert await store.signals.running_of(execution_id) == []  # in memory until a tick
    await h.service.runs_tick_once()
    [row] = await store.signals.running_of(execution_id)
    assert (row.node_id, row.attempt, row.owner) == ("n1", 1, h.service.replica_id)
    gates.open("n1")
    await h.service.engine.wait(execution_id)
    assert h.service.engine.signals.history.pending == 2
    await h.service.runs_tick_once()
    assert h.service.engine.signals.history.pending == 0
    stored = {s.key: s for s in await store.signals.durations_of_dag("ticked")}
    assert set(stored) == {("ticked", "n1", "test.gate"), ("ticked", "n2", "builtin.echo")}
    assert await store.signals.running_of(execution_id) == []


async def test_a_trace_read_writes_nothing_when_the_store_has_the_runs_running_nodes(
    h: Harness, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = h.service.engine.store
    execution_id = await _running_at_gate(h, gates, "read-only-trace")
    await h.service.runs_tick_once()  # n1's row written
    writes: list[int] = []
    sync_running = store.signals.sync_running

    async def counted(*args: Any) -> Any:
        writes.append(1)
        return await sync_running(*args)

    monkeypatch.setattr(store.signals, "sync_running", counted)
    trace = (await h.api("GET", f"/executions/{execution_id}/trace")).json()["node_traces"]
    assert trace["n1"]["status"] == "running" and trace["n1"]["progress_reports"] == 0
    await h.service.engine.signals.flush_running()  # and a flush with nothing new writes nothing
    assert writes == []
    gates.open("n1")
    await h.wait_status(execution_id, "completed")


async def test_a_trace_read_writes_that_runs_unwritten_progress_first(h: Harness, gates: Gates) -> None:
    store = h.service.engine.store
    execution_id = await _running_at_gate(h, gates, "progress-then-trace")
    await h.service.runs_tick_once()
    taken = await h.api("POST", _progress_path(execution_id, "n1"), json={"message": "half", "fraction": 0.5})
    assert taken.status_code == 200, taken.text
    assert [row.progress_reports for row in await store.signals.running_of(execution_id)] == [0]
    trace = (await h.api("GET", f"/executions/{execution_id}/trace")).json()["node_traces"]
    assert trace["n1"]["progress_reports"] == 1 and trace["n1"]["progress_message"] == "half"
    gates.open("n1")
    await h.wait_status(execution_id, "completed")


async def test_a_retried_node_shows_its_attempt_and_keeps_its_start_and_progress(
    h: Harness, gates: Gates
) -> None:
    attempts: list[int] = []
    second = asyncio.Event()

    async def flaky_then_hang(ctx: AgentContext) -> Any:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            ctx.report_progress(message="first try")
            raise RetryableAgentError("first attempt fails")
        second.set()
        await gates.gate("retried").wait()
        return {}

    h.service.registry.register("test.flaky_then_hang", flaky_then_hang)
    retry = {"max_retries": 3, "strategy": "fixed", "base_delay": 0.0, "max_delay": 0.0}
    await h.register(
        {"dag_id": "retried", "nodes": {"r": {"agent_id": "test.flaky_then_hang", "retry_policy": retry}}}
    )
    record = await h.execute("retried")
    async with asyncio.timeout(10):
        await second.wait()
    [item] = (await h.api("GET", "/running-nodes", params={"dag_id": "retried"})).json()["items"]
    assert item["attempt"] == 2 and item["progress_reports"] == 1 and item["progress_message"] == "first try"
    trace = (await h.api("GET", f"/executions/{record['execution_id']}/trace")).json()["node_traces"]["r"]
    assert item["started_at"] == trace["started_at"]  # the node's start, not the attempt's
    gates.open("retried")
    await h.wait_status(record["execution_id"], "completed")


async def test_a_cancel_that_does_not_complete_leaves_the_run_running_with_its_request_time(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "STOP_WAIT_SECONDS", 0.2)
    started, finish = asyncio.Event(), asyncio.Event()

    async def stubborn(ctx: AgentContext) -> Any:
        """Ignores the cancellation of its task until `finish` is set."""
        started.set()
        while not finish.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await finish.wait()
        return {}

    h.service.registry.register("test.stubborn", stubborn)
    await h.register({"dag_id": "stubborn", "nodes": {"s": {"agent_id": "test.stubborn"}}})
    execution_id = (await h.execute("stubborn"))["execution_id"]
    async with asyncio.timeout(10):
        await started.wait()
    refused = await h.api("POST", f"/executions/{execution_id}/cancel")
    assert refused.status_code == 409 and "did not stop" in refused.json()["detail"]
    record = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert record["status"] == "running" and record["cancel_requested_at"] is not None
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    stuck = await h.api("GET", "/executions", params={"status": "running", "cancel_requested_before": later})
    assert [e["execution_id"] for e in stuck.json()["items"]] == [execution_id]
    finish.set()
    await h.service.engine.wait(execution_id)


async def test_two_replicas_see_each_others_running_nodes_and_progress(
    postgres_url: str, redis_url: str, gates: Gates
) -> None:
    suffix = uuid.uuid4().hex[:8]
    registry_a, registry_b = make_registry(gates), make_registry(gates)
    settings_a = make_settings(postgres_url, redis_url=redis_url, replica_id=f"a-{suffix}")
    settings_b = make_settings(postgres_url, redis_url=redis_url, replica_id=f"b-{suffix}")
    async with (
        running_service(settings_a, registry=registry_a) as a,
        running_service(settings_b, registry=registry_b) as b,
    ):
        await a.register(chain_dag("shared", "test.gate", "builtin.echo"))
        execution_id = (await a.execute("shared"))["execution_id"]
        await gates.wait_started(1)
        assert a.service.engine.executor(execution_id) is not None  # a runs it
        assert (await b.api("GET", "/running-nodes")).json()["total"] == 0  # a has not ticked yet
        await a.service.runs_tick_once()
        [item] = (await b.api("GET", "/running-nodes")).json()["items"]
        assert (item["execution_id"], item["node_id"]) == (execution_id, "n1")

        taken = await b.api("POST", _progress_path(execution_id, "n1"), json={"message": "via b"})
        assert taken.status_code == 200 and taken.json()["reports"] == 1
        await a.api("POST", _progress_path(execution_id, "n1"), json={"fraction": 0.75})
        await b.service.runs_tick_once()  # b's report reaches a's row; a's own waits for a's tick
        trace = (await b.api("GET", f"/executions/{execution_id}/trace")).json()["node_traces"]["n1"]
        assert (trace["progress_reports"], trace["progress_message"]) == (1, "via b")
        await a.service.runs_tick_once()
        trace = (await b.api("GET", f"/executions/{execution_id}/trace")).json()["node_traces"]["n1"]
        assert trace["progress_reports"] == 2
        assert (trace["progress_message"], trace["progress_fraction"]) == (None, 0.75)  # the later report
        gates.open("n1")
        await a.service.engine.wait(execution_id)
