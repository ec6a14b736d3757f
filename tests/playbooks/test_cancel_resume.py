"""cancel and resume against the real orchestrator service (PostgreSQL store, Redis ownership locks)."""

from __future__ import annotations

import json

from playbooks.cancel import CancelParams, CancelPlaybook
from playbooks.resume import ResumeParams, ResumePlaybook
from tests.playbooks.conftest import Env, gate_dag
from watchdog_sdk.constants import lock_key
from watchdog_sdk.outcomes import StepStatus

CANCEL = CancelPlaybook()
RESUME = ResumePlaybook()


async def test_cancel_keeps_checkpoints_and_verifies(env: Env) -> None:
    execution_id = await env.run(gate_dag("cancel-me"), {"batch": 7})
    await env.wait_running_node(execution_id, "stuck")
    ctx = await env.context(execution_id)
    params = CancelParams(verify_timeout_seconds=10)
    assert (await CANCEL.preconditions(ctx, params)).ok
    [action] = await CANCEL.plan(ctx, params)
    assert action.request["path"] == f"/executions/{execution_id}/cancel"
    result = await CANCEL.apply(ctx, params)
    assert result.ok, result
    verification = await CANCEL.verify(ctx, params)
    assert verification.ok, verification.summary()
    checkpoints = await env.client.get_checkpoints(execution_id)
    assert [c.node_id for c in checkpoints.checkpoints if c.status == "completed"] == ["first"]


async def test_cancel_and_start_a_fresh_run_with_the_original_input(env: Env) -> None:
    execution_id = await env.run(gate_dag("cancel-fresh"), {"batch": 42})
    await env.wait_running_node(execution_id, "stuck")
    ctx = await env.context(execution_id)
    params = CancelParams(start_fresh_run=True, verify_timeout_seconds=10)
    planned = await CANCEL.plan(ctx, params)
    assert [a.step for a in planned] == ["cancel", "start_fresh_run"]
    assert planned[1].request["input_data"] == {"batch": 42}
    result = await CANCEL.apply(ctx, params)
    assert result.ok, result
    fresh_id = result.steps[1].data["execution_id"]
    assert fresh_id != execution_id
    fresh = await env.client.get_execution(fresh_id)
    assert fresh.dag_id == "cancel-fresh" and fresh.input_data == {"batch": 42}
    # Applying again for the same incident starts no second fresh run.
    again = await CANCEL.apply(ctx, params)
    assert [s.status for s in again.steps] == [StepStatus.SKIPPED, StepStatus.SKIPPED]
    runs = await env.client.list_executions(status=None, dag_id="cancel-fresh")
    assert len(runs) == 2
    verification = await CANCEL.verify(ctx, params)
    assert verification.ok, verification.summary()
    assert {c.name: c.detail for c in verification.checks}["fresh_run"].startswith(
        f"fresh run {fresh_id} is "
    )
    env.gates.open("cancel-fresh")


async def test_cancel_refuses_a_finished_run(env: Env) -> None:
    execution_id = await env.run(gate_dag("cancel-done"))
    env.gates.open("cancel-done")
    await env.orch.wait_status(execution_id, "completed")
    ctx = await env.context(execution_id)
    precheck = await CANCEL.preconditions(ctx, CancelParams())
    assert not precheck.ok and precheck.reason.startswith("run already finished (status completed)")


async def test_resume_a_cancelled_run_skips_completed_nodes_and_keeps_the_chain_valid(env: Env) -> None:
    execution_id = await env.run(gate_dag("resume-me"))
    await env.wait_running_node(execution_id, "stuck")
    await env.client.cancel(execution_id)
    await env.orch.wait_status(execution_id, "cancelled")
    env.gates.open("resume-me")  # the slow dependency is healthy again
    ctx = await env.context(execution_id)
    params = ResumeParams(verify_timeout_seconds=20)
    precheck = await RESUME.preconditions(ctx, params)
    assert precheck.ok, precheck.reason
    assert precheck.facts["completed_checkpoints"] == ["first"]
    result = await RESUME.apply(ctx, params)
    assert result.ok, result
    assert result.steps[0].data["nodes_skipped"] == ["first"]
    verification = await RESUME.verify(ctx, params)
    assert verification.ok, verification.summary()
    assert {c.name: c.status for c in verification.checks}["provenance_chain_valid"] == "ok"


async def test_resume_refuses_a_resume_the_orchestrator_already_queued(env: Env) -> None:
    """At max_concurrent_executions the orchestrator queues a resume; a second one would be a 409."""
    stopped = await env.run(gate_dag("resume-queued"))
    await env.wait_running_node(stopped, "stuck")
    await env.client.cancel(stopped)
    await env.orch.wait_status(stopped, "cancelled")
    await env.client.set_limits(max_concurrent_executions=1)
    busy = await env.run(gate_dag("resume-busy"))
    await env.wait_running_node(busy, "stuck")
    queued = await env.client.resume(stopped)
    assert (queued.status, queued.nodes_skipped) == ("queued", ["first"])

    precheck = await RESUME.preconditions(await env.context(stopped), ResumeParams())
    assert not precheck.ok
    assert precheck.reason.startswith("run is queued for admission")
    env.gates.open("resume-queued")
    env.gates.open("resume-busy")
    await env.orch.wait_status(busy, "completed")
    await env.orch.wait_status(stopped, "completed")


async def test_resume_refuses_a_running_run_with_a_live_owner(env: Env) -> None:
    execution_id = await env.run(gate_dag("resume-live"))
    await env.wait_running_node(execution_id, "stuck")
    ctx = await env.context(execution_id)
    precheck = await RESUME.preconditions(ctx, ResumeParams())
    assert not precheck.ok
    assert "never a second writer" in precheck.reason or "second writer" in precheck.reason
    assert "holder orch-a is alive" in precheck.reason
    env.gates.open("resume-live")


async def test_resume_refuses_while_a_live_holder_keeps_the_lock_of_a_failed_run(env: Env) -> None:
    execution_id = await env.run(gate_dag("resume-held"))
    await env.wait_running_node(execution_id, "stuck")
    await env.client.cancel(execution_id)
    await env.orch.wait_status(execution_id, "cancelled")
    # Another live replica holds the run's lock (as during a takeover).
    raw = await env.redis._redis.get("gl:orchestrator:heartbeat:orch-a")
    assert raw is not None
    await env.redis._redis.set(
        lock_key(execution_id), json.dumps({"owner": "orch-a", "pod": "orch-a-pod", "token": 99})
    )
    ctx = await env.context(execution_id)
    precheck = await RESUME.preconditions(ctx, ResumeParams())
    assert not precheck.ok and "its lock is still held" in precheck.reason
    await env.redis._redis.delete(lock_key(execution_id))


async def test_resume_refuses_a_completed_run(env: Env) -> None:
    execution_id = await env.run(gate_dag("resume-done"))
    env.gates.open("resume-done")
    await env.orch.wait_status(execution_id, "completed")
    ctx = await env.context(execution_id)
    precheck = await RESUME.preconditions(ctx, ResumeParams())
    assert not precheck.ok and "run already finished" in precheck.reason
