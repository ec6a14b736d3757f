"""Resume under the same execution id, on SQLite and PostgreSQL: checkpointed nodes are skipped,
the rest re-run, downstream nodes get the checkpointed outputs, the provenance chain continues."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator_core.errors import InvalidState
from orchestrator_core.events import CheckpointEvent
from tests.orchestrator.conftest import RESUMABLE_DAG, Harness, cancel_at_gate, node, wait_until


async def test_resume_skips_checkpointed_nodes_and_reruns_the_rest(harness: Harness) -> None:
    execution_id = await cancel_at_gate(harness)
    result = await harness.engine.resume(execution_id)
    assert result.execution_id == execution_id
    assert result.status == "running"
    assert result.nodes_skipped == ["a", "b"]
    assert result.nodes_remaining == ["gate", "c"]
    async with asyncio.timeout(10):
        final = await harness.engine.wait(execution_id)
    assert final.status == "completed"
    assert harness.calls.count("a") == 1 and harness.calls.count("b") == 1
    assert harness.calls.count("gate") == 2 and harness.calls.count("c") == 1
    # c received b's output from the checkpoint
    c_ctx = next(ctx for ctx in harness.calls.contexts if ctx.node_id == "c")
    assert c_ctx.upstream["b"] == {"node": "b", "upstream": ["a"], "value": 2}
    traces = await harness.engine.get_trace(execution_id)
    assert {n: t.status for n, t in traces.node_traces.items()} == dict.fromkeys(
        ["a", "b", "c", "gate"], "completed"
    )
    report = await harness.engine.get_provenance(execution_id)
    assert report.chain_valid, report.problems
    assert [e.node_id for e in report.chain] == ["a", "b", "gate", "c"]
    loads = [e for e in harness.observer.of_type(CheckpointEvent) if e.operation == "load"]
    assert [(e.status, e.nodes) for e in loads] == [("ok", 2)]


async def test_resumed_chain_equals_an_uninterrupted_run(harness: Harness) -> None:
    execution_id = await cancel_at_gate(harness)
    await harness.engine.resume(execution_id)
    await harness.engine.wait(execution_id)
    resumed = await harness.engine.get_provenance(execution_id)

    # The same DAG and input, never interrupted (the gate blocks only on its first call ever).
    straight = await harness.engine.execute("resumable", {"year": 2025})
    await harness.engine.wait(straight.execution_id)
    fresh = await harness.engine.get_provenance(straight.execution_id)
    assert fresh.chain_valid and resumed.chain_valid
    assert fresh.chain == resumed.chain


async def test_resume_of_a_running_execution_is_refused(harness: Harness) -> None:
    await harness.engine.register_dag(RESUMABLE_DAG)
    record = await harness.engine.execute("resumable")
    await wait_until(lambda: harness.calls.count("gate") == 1)
    with pytest.raises(InvalidState):
        await harness.engine.resume(record.execution_id)
    await harness.engine.cancel(record.execution_id)


async def test_resume_of_a_completed_execution_is_refused(harness: Harness) -> None:
    record = await harness.run({"dag_id": "done", "nodes": {"a": node()}})
    assert record.status == "completed"
    with pytest.raises(InvalidState):
        await harness.engine.resume(record.execution_id)


async def test_resume_after_timeout_increase_applies_the_new_timeout(harness: Harness) -> None:
    dag = {
        "dag_id": "too-tight",
        "nodes": {
            "a": node(),
            "slow": node(deps=("a",), params={"seconds": 0.2}, timeout_policy={"timeout_seconds": 0.05}),
        },
    }
    first = await harness.run(dag)
    assert first.status == "failed"
    traces = await harness.trace(first.execution_id)
    assert traces["slow"]["status"] == "timed_out"
    updated = await harness.engine.update_dag(
        "too-tight", {"nodes": {"slow": {"timeout_policy": {"timeout_seconds": 5, "on_timeout": "fail"}}}}
    )
    assert updated.version == 2
    result = await harness.engine.resume(first.execution_id)
    assert result.nodes_skipped == ["a"] and result.nodes_remaining == ["slow"]
    final = await harness.engine.wait(first.execution_id)
    assert final.status == "completed"
    assert final.dag_version == 2
    report = await harness.engine.get_provenance(first.execution_id)
    assert report.chain_valid
    # the chain keeps the failed attempt's record and continues with the completed one
    assert [(e.node_id, e.status) for e in report.chain] == [
        ("a", "completed"),
        ("slow", "timed_out"),
        ("slow", "completed"),
    ]


async def test_interrupted_orphan_can_be_taken_over(harness: Harness) -> None:
    await harness.engine.register_dag(RESUMABLE_DAG)
    record = await harness.engine.execute("resumable")
    await wait_until(lambda: harness.calls.count("gate") == 1)
    executor = harness.engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: executor.states["b"].status == "completed")
    await executor.writer.flush()  # b's checkpoint is committed
    await harness.engine.detach(record.execution_id)  # as if this replica died: nothing written
    stored = await harness.engine.get_execution(record.execution_id)
    assert stored.status == "running"
    with pytest.raises(InvalidState):
        await harness.engine.resume(record.execution_id)
    result = await harness.engine.resume(record.execution_id, takeover=True, owner="replica-2")
    assert result.nodes_skipped == ["a", "b"]
    final = await harness.engine.wait(record.execution_id)
    assert final.status == "completed" and final.owner == "replica-2"
    assert final.fencing_token == stored.fencing_token + 1
