"""release_lock against real Redis and the faked Kubernetes API: only a confirmed-dead holder's lock is
released, by compare-and-delete on its fencing token; every other case is refused with the reason."""

from __future__ import annotations

import json

from playbooks.release_lock import ReleaseLockParams, ReleaseLockPlaybook
from tests.playbooks.conftest import Env, FakeKubeApi, make_pod
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.constants import heartbeat_key, lock_key
from watchdog_sdk.playbook import PlaybookLimits

PLAYBOOK = ReleaseLockPlaybook()
EXEC = "exec-orphan"
PARAMS = ReleaseLockParams(wait_for_completion=False)


async def hold(env: Env, owner: str, pod: str | None, token: int, execution_id: str = EXEC) -> None:
    value = {"owner": owner, "pod": pod, "token": token, "acquired_at": "2026-03-01T11:00:00Z"}
    await env.redis._redis.set(lock_key(execution_id), json.dumps(value), ex=3600)


async def beat(env: Env, replica: str, pod: str, ttl: int = 60) -> None:
    await env.redis._redis.set(
        heartbeat_key(replica), json.dumps({"pod": pod, "at": "2026-03-01T11:00:00Z"}), ex=ttl
    )


async def test_dead_holder_lock_is_released_by_its_token(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    await hold(env, "orch-dead", "orch-dead-pod", 41)
    ctx = await env.context(EXEC, kubernetes=kube)
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert precheck.ok, precheck.reason
    assert "heartbeat gone and pod orch-dead-pod is gone" in precheck.reason
    [action] = await PLAYBOOK.plan(ctx, PARAMS)
    assert action.request == {"key": lock_key(EXEC), "token": 41, "owner": "orch-dead"}
    assert "never a bare DEL" in action.description
    result = await PLAYBOOK.apply(ctx, PARAMS)
    assert result.ok, result
    assert result.steps[0].data["result"] == "released"
    assert await env.redis.get_lock(EXEC) is None
    verification = await PLAYBOOK.verify(ctx, PARAMS)
    assert verification.ok, verification.summary()


async def test_terminated_pod_counts_as_dead(env: Env, kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    kube_api.add_pod(make_pod("orch-dead-pod", {"app": "orchestrator-service"}, phase="Failed", ready=False))
    await hold(env, "orch-dead", "orch-dead-pod", 5)
    ctx = await env.context(EXEC, kubernetes=kube)
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert precheck.ok and "is terminated (Failed)" in precheck.reason


async def test_live_holder_is_refused_with_the_reason(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    await hold(env, "orch-b", "orch-b-pod", 7)
    await beat(env, "orch-b", "orch-b-pod")
    ctx = await env.context(EXEC, kubernetes=kube)
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert not precheck.ok
    assert precheck.reason.startswith("lock holder not confirmed dead: holder orch-b is alive")
    result = await PLAYBOOK.apply(ctx, PARAMS)
    assert not result.ok and not result.steps
    assert (await env.redis.get_lock(EXEC)) is not None


async def test_heartbeat_gone_but_pod_running_is_refused(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.add_pod(make_pod("orch-b-pod", {"app": "orchestrator-service"}))
    await hold(env, "orch-b", "orch-b-pod", 7)
    ctx = await env.context(EXEC, kubernetes=kube)
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert not precheck.ok and "but pod orch-b-pod is still Running" in precheck.reason


async def test_pod_cannot_be_checked_without_kubernetes(env: Env) -> None:
    await hold(env, "orch-b", "orch-b-pod", 7)
    ctx = await env.context(EXEC)
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert not precheck.ok and "cannot be checked (no Kubernetes)" in precheck.reason


async def test_kubernetes_api_failing_is_refused(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    await hold(env, "orch-b", "orch-b-pod", 7)
    kube_api.fail_status = 500
    ctx = await env.context(EXEC, kubernetes=kube)
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert not precheck.ok and "cannot be read" in precheck.reason


async def test_stale_heartbeat_without_ttl_past_grace_is_dead(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    await hold(env, "orch-c", "orch-c-pod", 9)
    await env.redis._redis.set(
        heartbeat_key("orch-c"), json.dumps({"pod": "orch-c-pod", "at": "2020-01-01T00:00:00Z"})
    )
    ctx = await env.context(EXEC, kubernetes=kube, limits=PlaybookLimits(lock_grace_seconds=30))
    precheck = await PLAYBOOK.preconditions(ctx, PARAMS)
    assert precheck.ok and "old (> 30s)" in precheck.reason


async def test_no_lock_and_no_redis_are_refused(env: Env) -> None:
    ctx = await env.context(EXEC)
    assert "nothing to release" in (await PLAYBOOK.preconditions(ctx, PARAMS)).reason
    no_redis = await env.context(EXEC, redis=False)
    assert "no Redis configured" in (await PLAYBOOK.preconditions(no_redis, PARAMS)).reason


async def test_a_new_holder_is_never_deleted(env: Env, kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    """The step re-run after a crash carries the dead holder's recorded token; a new holder keeps its lock."""
    await hold(env, "orch-dead", "orch-dead-pod", 41)
    ctx = await env.context(EXEC, kubernetes=kube)
    key = f"{ctx.incident_id}:release_lock:compare_and_delete"
    # The watchdog recorded the step with token 41 and died; meanwhile a live replica took the run over.
    await ctx.ledger.start(
        key,
        ctx.incident_id,
        "release_lock",
        "compare_and_delete",
        {"key": lock_key(EXEC), "token": 41, "owner": "orch-dead"},
    )
    await hold(env, "orch-new", "orch-new-pod", 42)
    await beat(env, "orch-new", "orch-new-pod")
    result = await PLAYBOOK.apply(ctx, PARAMS)
    assert not result.ok and "no longer held with token 41" in result.detail
    lock = await env.redis.get_lock(EXEC)
    assert lock is not None and lock.token == 42 and lock.owner == "orch-new"
