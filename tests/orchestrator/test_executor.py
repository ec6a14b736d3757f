"""Executor behaviour on a real store (SQLite file and PostgreSQL): levels, barrier, parallelism,
timeouts, retries, failure strategies, cancel, agent restart, traces."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import timedelta
from typing import Any

import pytest

from orchestrator_core.dag import RetryPolicy
from orchestrator_core.errors import DagValidationError, InvalidState
from orchestrator_core.events import NodeAttemptEvent, NodeTimeoutEvent, RetryEvent
from orchestrator_core.policies import jitter_rng, retry_delay
from orchestrator_core.records import ExecutionOptions
from tests.orchestrator.conftest import Harness, wait_until


def node(agent: str = "test.record", deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"agent_id": agent, "depends_on": list(deps), **extra}


async def test_levels_run_in_order_and_outputs_flow_downstream(harness: Harness) -> None:
    dag = {
        "dag_id": "diamond",
        "nodes": {
            "a": node(params={"value": 1}),
            "b": node(deps=("a",), params={"seconds": 0.02}),
            "c": node(deps=("a",)),
            "d": node(deps=("b", "c")),
        },
    }
    record = await harness.run(dag, {"k": "v"})
    assert record.status == "completed"
    order = harness.calls.nodes()
    assert order[0] == "a" and order[-1] == "d" and set(order[1:3]) == {"b", "c"}
    d_ctx = next(c for c in harness.calls.contexts if c.node_id == "d")
    assert d_ctx.upstream["b"] == {"node": "b", "upstream": ["a"], "value": None}
    assert d_ctx.input_data == {"k": "v"}
    trace = await harness.engine.get_trace(record.execution_id)
    assert trace.topology_levels == [["a"], ["b", "c"], ["d"]]
    for node_id, t in trace.node_traces.items():
        assert t.status == "completed", node_id
        assert t.attempt_count == 1
        assert t.started_at is not None and t.completed_at is not None
        assert t.duration_ms is not None and t.duration_ms >= 0
        assert t.input_hash is not None and len(t.input_hash) == 64
        assert t.agent_id == "test.record"


async def test_an_agent_context_carries_its_run_node_attempt_and_deadline(harness: Harness) -> None:
    dag = {
        "dag_id": "context-fields",
        "nodes": {
            "first": node(params={"value": 7}, timeout_policy={"timeout_seconds": 30}),
            "second": node(deps=("first",)),
        },
    }
    record = await harness.run(dag, {"k": "v"})
    assert record.status == "completed"
    first, second = (next(c for c in harness.calls.contexts if c.node_id == n) for n in ("first", "second"))
    assert (first.execution_id, first.dag_id, first.node_id, first.agent_id, first.attempt) == (
        record.execution_id,
        "context-fields",
        "first",
        "test.record",
        1,
    )
    assert first.params == {"value": 7} and first.input_data == {"k": "v"} and first.upstream == {}
    assert first.deadline is not None and first.deadline - first.now() > timedelta(seconds=25)
    assert second.deadline is None and second.upstream == {
        "first": {"node": "first", "upstream": [], "value": 7}
    }
    assert not first.compensating and first.node_output is None
    assert first.observer is harness.engine.observer and first.signals is harness.engine.signals


async def test_barrier_next_level_waits_for_every_node_of_the_level(harness: Harness) -> None:
    dag = {
        "dag_id": "barrier",
        "nodes": {
            "fast": node(),
            "slow": node(params={"seconds": 0.15}),
            "after_fast": node(deps=("fast",)),
        },
    }
    record = await harness.run(dag)
    assert record.status == "completed"
    events = harness.observer.of_type(NodeAttemptEvent)
    slow_done = next(e.at for e in events if e.node_id == "slow" and e.outcome is not None)
    after_start = next(e.at for e in events if e.node_id == "after_fast" and e.outcome is None)
    # after_fast depends only on fast, but it is on the next level: it waits for slow too.
    assert after_start >= slow_done


async def test_at_most_max_parallel_nodes_run_at_once(harness: Harness) -> None:
    nodes = {f"n{i:02d}": node(params={"seconds": 0.02}) for i in range(12)}
    record = await harness.run({"dag_id": "wide", "max_parallel_nodes": 3, "nodes": nodes})
    assert record.status == "completed"
    assert harness.calls.peak == 3
    # deterministic start order: node id order
    assert harness.calls.nodes() == sorted(nodes)


async def test_live_limit_change_applies_to_a_running_execution(harness: Harness) -> None:
    harness.engine.set_max_parallel_nodes(1)
    nodes = {f"n{i}": node("test.gate") for i in range(4)}
    await harness.engine.register_dag({"dag_id": "live", "nodes": nodes})
    record = await harness.engine.execute("live")
    await wait_until(lambda: len(harness.calls.entries) == 1)
    assert harness.engine.executor(record.execution_id).slots.in_use == 1  # type: ignore[union-attr]
    harness.engine.set_max_parallel_nodes(3)
    await wait_until(lambda: len(harness.calls.entries) == 3)
    await asyncio.sleep(0.02)
    assert len(harness.calls.entries) == 3  # still capped at the new limit
    await harness.engine.cancel(record.execution_id)


async def test_node_timeout_fail_marks_timed_out_and_fails_the_run(harness: Harness) -> None:
    dag = {
        "dag_id": "t-fail",
        "nodes": {
            "stuck": node("builtin.hang", timeout_policy={"timeout_seconds": 0.05, "on_timeout": "fail"}),
            "next": node(deps=("stuck",)),
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    assert "stuck" in (record.error or "")
    traces = await harness.trace(record.execution_id)
    assert traces["stuck"]["status"] == "timed_out"
    assert "NodeTimeout" in traces["stuck"]["error"]
    assert traces["next"]["status"] == "pending"
    assert harness.calls.count("next") == 0
    timeouts = harness.observer.of_type(NodeTimeoutEvent)
    assert [(e.node_id, e.timeout_seconds, e.on_timeout) for e in timeouts] == [("stuck", 0.05, "fail")]


async def test_node_timeout_skip_lets_downstream_run_without_the_result(harness: Harness) -> None:
    dag = {
        "dag_id": "t-skip",
        "nodes": {
            "optional": node("builtin.hang", timeout_policy={"timeout_seconds": 0.05, "on_timeout": "skip"}),
            "next": node(deps=("optional",)),
        },
    }
    record = await harness.run(dag)
    assert record.status == "completed"
    traces = await harness.trace(record.execution_id)
    assert traces["optional"]["status"] == "skipped"
    assert traces["next"]["status"] == "completed"
    ctx = next(c for c in harness.calls.contexts if c.node_id == "next")
    assert ctx.upstream == {"optional": None}


async def test_node_timeout_compensate_runs_the_compensation_agent(harness: Harness) -> None:
    dag = {
        "dag_id": "t-comp",
        "on_failure": "continue",
        "nodes": {
            "slow": node(
                "builtin.hang",
                compensation="test.compensate",
                timeout_policy={"timeout_seconds": 0.05, "on_timeout": "compensate"},
            ),
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    traces = await harness.trace(record.execution_id)
    assert traces["slow"]["status"] == "timed_out"
    assert "compensated by test.compensate" in traces["slow"]["error"]
    assert ("test.compensate", "slow", 1) in harness.calls.entries


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("exponential", [0.1, 0.2, 0.4]),
        ("linear", [0.1, 0.2, 0.3]),
        ("fixed", [0.1, 0.1, 0.1]),
    ],
)
async def test_retry_strategies_wait_as_configured(
    harness: Harness, strategy: str, expected: list[float]
) -> None:
    dag = {
        "dag_id": f"retry-{strategy}",
        "nodes": {
            "flaky": node(
                "builtin.flaky",
                params={"failures": 3},
                retry_policy={"max_retries": 3, "strategy": strategy, "base_delay": 0.1, "max_delay": 10},
            )
        },
    }
    record = await harness.run(dag)
    assert record.status == "completed"
    assert harness.clock.sleeps == pytest.approx(expected)
    traces = await harness.trace(record.execution_id)
    assert traces["flaky"]["attempt_count"] == 4
    retries = harness.observer.of_type(RetryEvent)
    assert [r.attempt for r in retries] == [1, 2, 3]


async def test_retry_delay_is_capped_by_max_delay(harness: Harness) -> None:
    dag = {
        "dag_id": "retry-cap",
        "nodes": {
            "flaky": node(
                "builtin.flaky",
                params={"failures": 4},
                retry_policy={"max_retries": 4, "base_delay": 1, "max_delay": 3},
            )
        },
    }
    await harness.run(dag)
    assert harness.clock.sleeps == [1, 2, 3, 3]


async def test_jitter_is_seeded_from_the_execution_id_in_deterministic_mode(harness: Harness) -> None:
    dag = {
        "dag_id": "jitter",
        "nodes": {
            "flaky": node(
                "builtin.flaky",
                params={"failures": 3},
                retry_policy={"max_retries": 3, "base_delay": 1, "max_delay": 100, "jitter": True},
            )
        },
    }
    await harness.engine.register_dag(dag)
    options = ExecutionOptions(deterministic_mode=True)
    runs = []
    for execution_id in ("same-id-1", "same-id-1-bis"):
        harness.clock.sleeps.clear()
        record = await harness.engine.execute("jitter", None, options, execution_id=execution_id)
        await harness.engine.wait(record.execution_id)
        runs.append(list(harness.clock.sleeps))
    for sleeps in runs:
        for delay, base in zip(sleeps, [1, 2, 4], strict=True):
            assert base * 0.5 <= delay < base
    assert runs[0] != runs[1]  # different execution ids, different seeds
    # the same execution id gives the same delays: replay the policy with the seeded generator
    policy = RetryPolicy(max_retries=3, base_delay=1, max_delay=100, jitter=True)
    rng = jitter_rng("same-id-1", "flaky", True)
    assert [retry_delay(policy, n, rng) for n in (1, 2, 3)] == runs[0]


async def test_non_retryable_error_is_not_retried(harness: Harness) -> None:
    dag = {
        "dag_id": "no-retry",
        "nodes": {
            "bad": node(
                "builtin.fail",
                params={"error": "bad input", "error_type": "ValueError"},
                retry_policy={"max_retries": 3, "retryable_exceptions": ["ConnectionError"]},
            )
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    traces = await harness.trace(record.execution_id)
    assert traces["bad"]["attempt_count"] == 1
    assert traces["bad"]["error"] == "ValueError: bad input"
    assert harness.clock.sleeps == []


async def test_retryable_exceptions_match_base_class_names(harness: Harness) -> None:
    dag = {
        "dag_id": "by-name",
        "nodes": {
            "net": node(
                "builtin.fail",
                params={"error": "refused", "error_type": "ConnectionRefusedError"},
                retry_policy={"max_retries": 2, "base_delay": 0, "retryable_exceptions": ["ConnectionError"]},
            )
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    traces = await harness.trace(record.execution_id)
    assert traces["net"]["attempt_count"] == 3  # 1 + 2 retries, then exhausted
    assert traces["net"]["error"] == "ConnectionRefusedError: refused"


async def test_fail_fast_cancels_running_siblings_and_stops(harness: Harness) -> None:
    dag = {
        "dag_id": "ff",
        "on_failure": "fail_fast",
        "nodes": {
            "boom": node("builtin.fail", params={"error": "boom"}),
            "sibling": node("builtin.hang"),
            "after": node(deps=("boom", "sibling")),
        },
    }
    started = time.monotonic()
    record = await harness.run(dag)
    assert time.monotonic() - started < 5
    assert record.status == "failed"
    traces = await harness.trace(record.execution_id)
    assert traces["boom"]["status"] == "failed"
    assert traces["sibling"]["status"] == "cancelled"
    assert traces["after"]["status"] == "pending"


async def test_continue_runs_independent_branches_and_skips_downstream_of_failure(harness: Harness) -> None:
    dag = {
        "dag_id": "cont",
        "on_failure": "continue",
        "nodes": {
            "boom": node("builtin.fail", params={"error": "boom"}),
            "ok": node(),
            "after_boom": node(deps=("boom",)),
            "after_ok": node(deps=("ok",)),
            "last": node(deps=("after_boom", "after_ok")),
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    traces = await harness.trace(record.execution_id)
    assert {n: t["status"] for n, t in traces.items()} == {
        "boom": "failed",
        "ok": "completed",
        "after_boom": "skipped",
        "after_ok": "completed",
        "last": "skipped",
    }
    assert "upstream boom" in traces["after_boom"]["error"]


async def test_compensate_runs_handlers_in_reverse_completion_order(harness: Harness) -> None:
    comp = {"compensation": "test.compensate"}
    dag = {
        "dag_id": "saga",
        "on_failure": "compensate",
        "nodes": {
            "first": node(**comp),
            "second": node(deps=("first",), **comp),
            "third": node(deps=("second",), **comp),
            "no_handler": node(deps=("second",)),
            "boom": node("builtin.fail", deps=("third", "no_handler"), params={"error": "boom"}, **comp),
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    compensations = [n for a, n, _ in harness.calls.entries if a == "test.compensate"]
    assert compensations == ["third", "second", "first"]
    assert "compensated: third, second, first" in (record.error or "")


async def test_cancel_stops_running_nodes_within_a_second_and_keeps_checkpoints(harness: Harness) -> None:
    dag = {
        "dag_id": "cancel",
        "nodes": {
            "done": node(),
            "stuck": node("builtin.hang", deps=("done",)),
            "never": node(deps=("stuck",)),
        },
    }
    await harness.engine.register_dag(dag)
    record = await harness.engine.execute("cancel")
    executor = harness.engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: executor.states["stuck"].status == "running")
    started = time.monotonic()
    cancelled = await harness.engine.cancel(record.execution_id)
    assert time.monotonic() - started < 1.0
    assert cancelled.status == "cancelled"
    assert cancelled.completed_at is not None
    traces = await harness.trace(record.execution_id)
    assert traces["done"]["status"] == "completed"
    assert traces["stuck"]["status"] == "cancelled"
    assert traces["never"]["status"] == "pending"
    checkpoints = await harness.engine.list_checkpoints(record.execution_id)
    assert [(c.node_id, c.status) for c in checkpoints] == [("done", "completed")]
    with pytest.raises(InvalidState):
        await harness.engine.cancel(record.execution_id)


async def test_cancel_of_a_queued_execution(harness: Harness) -> None:
    await harness.engine.register_dag({"dag_id": "q", "nodes": {"a": node()}})
    record = await harness.engine.create_execution("q")
    assert record.status == "queued"
    cancelled = await harness.engine.cancel(record.execution_id)
    assert cancelled.status == "cancelled"


@pytest.mark.parametrize("siblings", [False, True], ids=["alone-in-its-level", "in-a-level-run-by-workers"])
async def test_agent_restart_fails_the_attempt_retryably_and_the_retry_completes(
    harness: Harness, siblings: bool
) -> None:
    nodes = {"wedged": node("test.gate", retry_policy={"max_retries": 2, "base_delay": 0.5})}
    if siblings:  # run before and after it in the same worker, which must go on after the restart
        nodes |= {"a": node("builtin.echo"), "z": node("builtin.echo")}
    dag = {"dag_id": "restart", "nodes": nodes}
    await harness.engine.register_dag(dag)
    record = await harness.engine.execute("restart")
    await wait_until(lambda: harness.calls.count("wedged") == 1)
    result = harness.engine.registry.restart("test.gate")
    assert result.interrupted_nodes == ["wedged"] and result.restarts == 1
    async with asyncio.timeout(5):
        final = await harness.engine.wait(record.execution_id)
    assert final.status == "completed"
    traces = await harness.trace(record.execution_id)
    assert traces["wedged"]["attempt_count"] == 2
    assert {t["status"] for t in traces.values()} == {"completed"}
    outcomes = [
        e.outcome for e in harness.observer.of_type(NodeAttemptEvent) if e.outcome and e.node_id == "wedged"
    ]
    assert outcomes == ["restarted", "completed"]
    assert harness.clock.sleeps == [0.5]


async def test_dag_execution_timeout_is_recorded_not_enforced(harness: Harness) -> None:
    dag = {
        "dag_id": "slow-run",
        "execution_timeout_seconds": 0.01,
        "nodes": {"slow": node(params={"seconds": 0.1})},
    }
    record = await harness.run(dag)
    assert record.status == "completed"
    assert record.timeout_seconds == 0.01


async def test_running_trace_shows_the_stuck_node(harness: Harness) -> None:
    dag = {"dag_id": "stuck", "nodes": {"a": node(), "b": node("builtin.hang", deps=("a",))}}
    await harness.engine.register_dag(dag)
    record = await harness.engine.execute("stuck")
    executor = harness.engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: executor.states["b"].status == "running")
    await executor.writer.flush()
    # The stored trace (what another replica would serve) shows the stuck node running too.
    stored = await harness.engine.store.runs.traces(record.execution_id)
    assert stored["a"].status == "completed" and stored["b"].status == "running"
    listing = await harness.engine.list_executions(status="running")
    assert [r.execution_id for r in listing] == [record.execution_id]
    await harness.engine.cancel(record.execution_id)


async def test_unknown_agent_is_refused_at_registration(harness: Harness) -> None:
    with pytest.raises(DagValidationError) as info:
        await harness.engine.register_dag({"dag_id": "x", "nodes": {"a": node("nope.agent")}})
    assert info.value.problems == [("nodes.a.agent_id", "unknown agent 'nope.agent'")]


async def test_non_json_output_fails_the_node(harness: Harness) -> None:
    async def bad(ctx: Any) -> Any:
        return {"when": object()}

    harness.engine.registry.register("test.bad", bad)
    record = await harness.run({"dag_id": "bad-out", "nodes": {"a": node("test.bad")}})
    assert record.status == "failed"
    traces = await harness.trace(record.execution_id)
    assert traces["a"]["error"].startswith("AgentOutputError")


async def test_checkpoint_disabled_still_records_traces_and_chain_at_the_end(harness: Harness) -> None:
    dag = {"dag_id": "nocp", "nodes": {"a": node(), "b": node(deps=("a",))}}
    record = await harness.run(dag, checkpoint_enabled=False)
    assert record.status == "completed"
    assert await harness.engine.list_checkpoints(record.execution_id) == []
    traces = await harness.trace(record.execution_id)
    assert traces["b"]["status"] == "completed"
    report = await harness.engine.get_provenance(record.execution_id)
    assert report.chain_valid and [e.node_id for e in report.chain] == ["a", "b"]


async def test_cancel_right_after_start_still_records_cancelled(harness: Harness) -> None:
    await harness.engine.register_dag({"dag_id": "instant", "nodes": {"a": node("builtin.hang")}})
    record = await harness.engine.execute("instant")
    cancelled = await harness.engine.cancel(record.execution_id)  # before the run's task ever ran
    assert cancelled.status == "cancelled"
    assert harness.engine.local_executions() == []


async def test_interrupt_leaves_a_resumable_run(harness: Harness) -> None:
    dag = {"dag_id": "intr", "nodes": {"a": node(), "b": node("test.gate", deps=("a",))}}
    await harness.engine.register_dag(dag)
    record = await harness.engine.execute("intr")
    await wait_until(lambda: harness.calls.count("b") == 1)
    interrupted = await harness.engine.interrupt(record.execution_id, reason="shutting down")
    assert interrupted.status == "interrupted" and interrupted.error == "shutting down"
    traces = await harness.trace(record.execution_id)
    assert traces["b"]["status"] == "cancelled"
    result = await harness.engine.resume(record.execution_id)
    assert result.nodes_skipped == ["a"]
    assert (await harness.engine.wait(record.execution_id)).status == "completed"


def _register_level_agents(harness: Harness, gates: int) -> list[str]:
    """`test.instant` returns without waiting; `test.rendezvous` waits until `gates` of them started
    (bounded: a node left waiting fails the run instead of hanging the test). Both record the start."""
    started: list[str] = []
    everyone_in = asyncio.Event()

    async def instant(ctx: Any) -> Any:
        started.append(ctx.node_id)
        return ctx.node_id

    async def rendezvous(ctx: Any) -> Any:
        started.append(ctx.node_id)
        if sum(1 for n in started if n.startswith("gate")) == gates:
            everyone_in.set()
        async with asyncio.timeout(5):
            await everyone_in.wait()
        return ctx.node_id

    harness.engine.registry.register("test.instant", instant)
    harness.engine.registry.register("test.rendezvous", rendezvous)
    return started


async def test_nodes_that_wait_run_together_beside_nodes_that_return_at_once(harness: Harness) -> None:
    # Nodes that return at once run one after the other in one worker task; once a node waits, the
    # nodes still queued get workers of their own. Each gate node here returns only after all three
    # started: run one at a time, the level would never end.
    started = _register_level_agents(harness, gates=3)
    ids = ["a", "gate1", "b", "gate2", "c", "gate3", "d"]
    nodes = {n: node("test.rendezvous" if n.startswith("gate") else "test.instant") for n in ids}
    nodes["after"] = node("test.instant", deps=tuple(ids))
    record = await harness.run({"dag_id": "mixed", "nodes": nodes})
    assert record.status == "completed", record.error
    assert started == [*sorted(ids), "after"]  # node-id order within the level, then the next level
    traces = await harness.trace(record.execution_id)
    assert {t["status"] for t in traces.values()} == {"completed"}


async def test_fail_fast_never_starts_the_nodes_still_queued_in_the_level(harness: Harness) -> None:
    started = _register_level_agents(harness, gates=0)
    dag = {
        "dag_id": "ff-queued",
        "on_failure": "fail_fast",
        "nodes": {
            "a": node("test.instant"),
            "b_boom": node("builtin.fail", params={"error": "boom"}),
            "c": node("test.instant"),
            "d": node("test.instant"),
        },
    }
    record = await harness.run(dag)
    assert record.status == "failed"
    assert started == ["a"]
    traces = await harness.trace(record.execution_id)
    assert {n: t["status"] for n, t in traces.items()} == {
        "a": "completed",
        "b_boom": "failed",
        "c": "cancelled",
        "d": "cancelled",
    }
    assert traces["c"]["error"] == "cancelled: node b_boom failed (fail_fast)"


async def test_cancel_stops_every_waiting_node_of_a_level_run_by_workers(harness: Harness) -> None:
    dag = {
        "dag_id": "cancel-wide",
        "nodes": {
            "a": node("builtin.echo"),
            "stuck1": node("builtin.hang"),
            "stuck2": node("builtin.hang"),
            "z": node("builtin.echo"),
        },
    }
    await harness.engine.register_dag(dag)
    record = await harness.engine.execute("cancel-wide")
    executor = harness.engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: {executor.states[n].status for n in ("stuck1", "stuck2")} == {"running"})
    cancelled = await harness.engine.cancel(record.execution_id)
    assert cancelled.status == "cancelled"
    traces = await harness.trace(record.execution_id)
    assert {n: t["status"] for n, t in traces.items()} == {
        "a": "completed",
        "stuck1": "cancelled",
        "stuck2": "cancelled",
        "z": "completed",
    }


@pytest.mark.parametrize("ending", ["completed", "failed", "timed_out"])
async def test_a_finished_run_leaves_no_reference_cycles_behind(harness: Harness, ending: str) -> None:
    """Its node states and chain records are freed when the engine lets go of the run, not by the
    cyclic collector (whose collections would traverse them all): also after a node failed or timed
    out (the error's traceback would hold the attempt's frame)."""
    second = {
        "completed": node(deps=("a",)),
        "failed": node("builtin.fail", ("a",)),
        "timed_out": node(deps=("a",), params={"seconds": 5}, timeout_policy={"timeout_seconds": 0.01}),
    }[ending]
    outcome = "completed" if ending == "completed" else "failed"
    dag = {"dag_id": f"no-cycles-{ending}", "nodes": {"a": node(), "b": second, "c": node(deps=("a",))}}
    await harness.engine.register_dag(dag)
    gc.collect()
    gc.disable()
    try:
        record = await harness.engine.execute(dag["dag_id"], None, ExecutionOptions(checkpoint_enabled=False))
        async with asyncio.timeout(20):
            final = await harness.engine.wait(record.execution_id)
        await asyncio.sleep(0)  # the run task's done callbacks (the engine forgets the run)
        assert final.status == outcome
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage} & {"Executor", "RunState", "NodeState", "LevelRunner"}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == set()
