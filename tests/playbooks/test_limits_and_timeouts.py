"""throttle_concurrency and increase_node_timeout against the real orchestrator service (and the faked
Kubernetes API for the Deployment patch and rollout restart)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from playbooks.increase_node_timeout import IncreaseNodeTimeoutParams, IncreaseNodeTimeoutPlaybook
from playbooks.registry import default_registry
from playbooks.release_lock import ReleaseLockParams, ReleaseLockPlaybook
from playbooks.throttle_concurrency import ThrottleConcurrencyPlaybook, ThrottleParams
from tests.playbooks.conftest import Env, FakeKubeApi, gate_dag, make_deployment
from tests.watchdog.conftest import FakeClock
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.outcomes import StepStatus
from watchdog_sdk.playbook import MAX_WAIT_SECONDS, PlaybookLimits

THROTTLE = ThrottleConcurrencyPlaybook()
TIMEOUT = IncreaseNodeTimeoutPlaybook()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_throttle_lowers_live_limits_and_verifies(env: Env) -> None:
    ctx = await env.context("exec-any")
    params = ThrottleParams(max_parallel_nodes=5, max_concurrent_executions=25)
    precheck = await THROTTLE.preconditions(ctx, params)
    assert precheck.ok, precheck.reason
    assert [a.step for a in await THROTTLE.plan(ctx, params)] == ["set_limits"]
    result = await THROTTLE.apply(ctx, params)
    assert result.ok, result
    limits = await env.client.get_limits()
    assert (limits.max_parallel_nodes, limits.max_concurrent_executions) == (5, 25)
    assert (await THROTTLE.verify(ctx, params)).ok


async def test_throttle_refuses_when_limits_are_already_lower(env: Env) -> None:
    await env.client.set_limits(max_parallel_nodes=2, max_concurrent_executions=3)
    ctx = await env.context("exec-any")
    precheck = await THROTTLE.preconditions(
        ctx, ThrottleParams(max_parallel_nodes=5, max_concurrent_executions=25)
    )
    assert not precheck.ok and "already at or below the targets" in precheck.reason


async def test_throttle_in_kubernetes_can_keep_to_the_live_limits(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    """deployment_env: false — the live limits reach every replica and outlive restarts; no rollout."""
    kube_api.deployments["orchestrator-service"] = make_deployment(
        "orchestrator-service", {"GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "10"}
    )
    ctx = await env.context("exec-any", kubernetes=kube, clock=FakeClock(T0))
    params = ThrottleParams(max_parallel_nodes=5, max_concurrent_executions=25, deployment_env=False)
    assert [a.step for a in await THROTTLE.plan(ctx, params)] == ["set_limits"]
    assert (await THROTTLE.apply(ctx, params)).ok
    assert kube_api.patches == []
    limits = await env.client.get_limits()
    assert (limits.max_parallel_nodes, limits.max_concurrent_executions) == (5, 25)
    assert (await THROTTLE.verify(ctx, params)).ok


async def test_throttle_in_kubernetes_patches_the_deployment_and_restarts_it(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.deployments["orchestrator-service"] = make_deployment(
        "orchestrator-service", {"GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "10"}
    )
    ctx = await env.context("exec-any", kubernetes=kube, clock=FakeClock(T0))
    params = ThrottleParams(max_parallel_nodes=5, max_concurrent_executions=25)
    planned = await THROTTLE.plan(ctx, params)
    assert [a.step for a in planned] == ["set_limits", "patch_deployment_env", "rollout_restart"]
    assert "GL_ORCHESTRATOR_MAX_PARALLEL_NODES=5" in planned[1].description
    result = await THROTTLE.apply(ctx, params)
    assert result.ok, result
    deployment = await kube.get_deployment("orchestrator-service")
    assert deployment.env["orchestrator"] == {
        "GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "5",
        "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": "25",
    }
    assert deployment.template_annotations["kubectl.kubernetes.io/restartedAt"] == T0.isoformat()
    # Re-applying skips every step: no second rollout restart.
    patches = len(kube_api.patches)
    again = await THROTTLE.apply(ctx, params)
    assert [s.status for s in again.steps] == [StepStatus.SKIPPED] * 3
    assert len(kube_api.patches) == patches


async def test_increase_node_timeout_doubles_within_the_policy_maximum(env: Env) -> None:
    await env.orch.register(gate_dag("slow-dag"))
    ctx = await env.context("exec-any", limits=PlaybookLimits(max_node_timeout_seconds=200))
    params = IncreaseNodeTimeoutParams(dag_id="slow-dag", node_id="stuck")
    precheck = await TIMEOUT.preconditions(ctx, params)
    assert precheck.ok and precheck.facts["current"] == 120 and precheck.facts["target"] == 200
    assert "capped at the policy maximum 200s" in precheck.reason
    [action] = await TIMEOUT.plan(ctx, params)
    assert action.request["body"] == {
        "nodes": {"stuck": {"timeout_policy": {"timeout_seconds": 200, "on_timeout": "fail"}}}
    }
    result = await TIMEOUT.apply(ctx, params)
    assert result.ok, result
    dag = await env.client.get_dag("slow-dag")
    assert dag["nodes"]["stuck"]["timeout_policy"]["timeout_seconds"] == 200
    assert (await TIMEOUT.verify(ctx, params)).ok
    # At the maximum now: a second incident's playbook refuses.
    ctx2 = await env.context("exec-other", limits=PlaybookLimits(max_node_timeout_seconds=200))
    refused = await TIMEOUT.preconditions(ctx2, params)
    assert not refused.ok and "already at the policy maximum (200s)" in refused.reason


async def test_increase_node_timeout_refuses_unknown_node(env: Env) -> None:
    await env.orch.register(gate_dag("slow-dag-2"))
    ctx = await env.context("exec-any")
    precheck = await TIMEOUT.preconditions(
        ctx, IncreaseNodeTimeoutParams(dag_id="slow-dag-2", node_id="nope")
    )
    assert not precheck.ok and "has no node 'nope'" in precheck.reason
    result = await TIMEOUT.apply(ctx, IncreaseNodeTimeoutParams(dag_id="slow-dag-2", node_id="nope"))
    assert not result.ok and not result.steps


# -- remediation playbooks -------------------------------------------------------------------------------
# Playbooks against the real orchestrator service: what a careful on-call would check them for.


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
