"""Playbooks against the real orchestrator service: what a careful on-call would check them for."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from playbooks.increase_node_timeout import IncreaseNodeTimeoutParams, IncreaseNodeTimeoutPlaybook
from playbooks.registry import default_registry
from playbooks.release_lock import ReleaseLockParams, ReleaseLockPlaybook
from playbooks.throttle_concurrency import ThrottleConcurrencyPlaybook, ThrottleParams
from tests.playbooks.conftest import Env, FakeKubeApi, gate_dag, make_deployment
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.playbook import MAX_WAIT_SECONDS

THROTTLE = ThrottleConcurrencyPlaybook()


async def test_throttle_never_raises_a_limit_that_is_already_below_its_target(env: Env) -> None:
    await env.client.set_limits(max_parallel_nodes=3, max_concurrent_executions=50)
    ctx = await env.context("exec-any")
    params = ThrottleParams(max_parallel_nodes=5, max_concurrent_executions=25)
    assert (await THROTTLE.preconditions(ctx, params)).ok
    [action] = await THROTTLE.plan(ctx, params)
    assert action.request["body"] == {"max_concurrent_executions": 25}
    result = await THROTTLE.apply(ctx, params)
    assert result.ok, result
    limits = await env.client.get_limits()
    assert (limits.max_parallel_nodes, limits.max_concurrent_executions) == (3, 25)
    verification = await THROTTLE.verify(ctx, params)
    assert verification.ok, verification.summary()


async def test_throttle_in_kubernetes_patches_only_the_limits_it_lowers(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.deployments["orchestrator-service"] = make_deployment("orchestrator-service", {})
    await env.client.set_limits(max_parallel_nodes=2, max_concurrent_executions=50)
    ctx = await env.context("exec-any", kubernetes=kube)
    params = ThrottleParams(max_parallel_nodes=5, max_concurrent_executions=25)
    result = await THROTTLE.apply(ctx, params)
    assert result.ok, result
    deployment = await kube.get_deployment("orchestrator-service")
    assert deployment.env["orchestrator"] == {"GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": "25"}
    assert (await env.client.get_limits()).max_parallel_nodes == 2


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("restart_agent", {"agent_id": "a", "ready_timeout_seconds": 1e9}),
        ("restart_agent", {"agent_id": "a", "verify_timeout_seconds": 1e9}),
        ("cancel", {"verify_timeout_seconds": 1e9}),
        ("cancel", {"verify_timeout_seconds": 0}),
        ("resume", {"verify_timeout_seconds": 1e9}),
        ("release_lock", {"verify_timeout_seconds": 1e9}),
    ],
)
def test_every_wait_is_bounded(name: str, params: dict[str, Any]) -> None:
    playbook = default_registry().get(name)
    with pytest.raises(ValidationError):
        playbook.parse_params(params)
    assert MAX_WAIT_SECONDS <= 3600


async def test_increase_node_timeout_never_puts_a_limit_on_a_node_that_had_none(env: Env) -> None:
    await env.orch.register(gate_dag("rv-no-node-timeout"))
    ctx = await env.context("exec-any")
    timeout = IncreaseNodeTimeoutPlaybook()
    for params in (
        IncreaseNodeTimeoutParams(dag_id="rv-no-node-timeout", node_id="first"),
        IncreaseNodeTimeoutParams(dag_id="rv-no-node-timeout", node_id="first", timeout_seconds=60),
    ):
        precheck = await timeout.preconditions(ctx, params)
        assert not precheck.ok and "has no timeout of its own" in precheck.reason
        result = await timeout.apply(ctx, params)
        assert not result.ok and result.steps == ()
    dag = await env.client.get_dag("rv-no-node-timeout")
    assert dag["nodes"]["first"]["timeout_policy"]["timeout_seconds"] is None
    assert dag["version"] == 1


async def test_release_lock_dry_run_without_a_lock_says_there_is_nothing_to_delete(env: Env) -> None:
    ctx = await env.context("rv-no-lock-exec")
    [action] = await ReleaseLockPlaybook().plan(ctx, ReleaseLockParams())
    assert "nothing to delete" in action.description
    assert "None" not in action.description


async def test_throttle_rollout_warns_and_verify_lists_runs_left_interrupted(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.deployments["orchestrator-service"] = make_deployment("orchestrator-service", {})
    ctx = await env.context("exec-any", kubernetes=kube)
    params = ThrottleParams(max_parallel_nodes=5)
    planned = await THROTTLE.plan(ctx, params)
    assert "runs still going end interrupted and need a resume" in planned[-1].description
    assert (await THROTTLE.apply(ctx, params)).ok
    verification = await THROTTLE.verify(ctx, params)
    [check] = [c for c in verification.checks if c.name == "interrupted_runs"]
    assert check.status.value == "ok" and not check.decisive
    assert verification.ok
