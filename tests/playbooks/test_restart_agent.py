"""restart_agent against the real orchestrator service: embedded worker restart and Kubernetes pods."""

from __future__ import annotations

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from playbooks.restart_agent import RestartAgentParams, RestartAgentPlaybook
from tests.playbooks.conftest import Env, FakeKubeApi, gate_dag, make_pod
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.outcomes import StepStatus

PLAYBOOK = RestartAgentPlaybook()
SCOPE2 = "emissions.scope2"


async def stuck_emissions_run(env: Env) -> str:
    execution_id = await env.run(emissions_dag(log_interval_seconds=0.2), emissions_demo_input())
    await env.wait_running_node(execution_id, "scope2")
    return execution_id


async def restarts_of(env: Env, agent_id: str) -> int:
    return next(a.restarts for a in await env.client.list_agents() if a.agent_id == agent_id)


async def test_embedded_restart_unsticks_the_run_and_verifies(env: Env) -> None:
    execution_id = await stuck_emissions_run(env)
    ctx = await env.context(execution_id, redis=False)
    params = RestartAgentParams(agent_id=SCOPE2, verify_timeout_seconds=20)
    precheck = await PLAYBOOK.preconditions(ctx, params)
    assert precheck.ok, precheck.reason
    assert precheck.facts["nodes"] == ["scope2"]
    [action] = await PLAYBOOK.plan(ctx, params)
    assert action.request == {"method": "POST", "path": f"/admin/agents/{SCOPE2}/restart"}
    before = await restarts_of(env, SCOPE2)
    result = await PLAYBOOK.apply(ctx, params)
    assert result.ok, result
    assert await restarts_of(env, SCOPE2) == before + 1
    verification = await PLAYBOOK.verify(ctx, params)
    assert verification.ok, verification.summary()
    checks = {c.name: c for c in verification.checks}
    assert checks["execution_status"].detail.startswith("status completed")
    assert checks["provenance_chain_valid"].status == "ok"
    # Re-applying for the same incident skips the done step: the agent is not restarted again.
    again = await PLAYBOOK.apply(ctx, params)
    assert again.ok and [s.status for s in again.steps] == [StepStatus.SKIPPED]
    assert await restarts_of(env, SCOPE2) == before + 1


async def test_refuses_when_the_run_already_finished(env: Env) -> None:
    execution_id = await env.run(
        emissions_dag(dag_id="emissions-ok", hang_scope2=False), emissions_demo_input()
    )
    await env.orch.wait_status(execution_id, "completed")
    ctx = await env.context(execution_id, redis=False)
    precheck = await PLAYBOOK.preconditions(ctx, RestartAgentParams(agent_id=SCOPE2))
    assert not precheck.ok and "run already finished (status completed)" in precheck.reason


async def test_refuses_when_no_node_waits_on_that_agent(env: Env) -> None:
    execution_id = await stuck_emissions_run(env)
    ctx = await env.context(execution_id, redis=False)
    precheck = await PLAYBOOK.preconditions(ctx, RestartAgentParams(agent_id="emissions.scope1"))
    assert not precheck.ok and "restarting it would not help" in precheck.reason
    await env.client.cancel(execution_id)


async def test_kubernetes_deletes_the_agent_pods_and_waits_for_a_ready_replacement(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    dag = gate_dag("k8s-restart")
    execution_id = await env.run(dag)
    await env.wait_running_node(execution_id, "stuck")
    kube_api.add_pod(
        make_pod("gate-1", {"agent-id": "test.gate"}, ready=False, waiting_reason="CrashLoopBackOff")
    )
    kube_api.add_pod(make_pod("other-1", {"agent-id": "builtin.echo"}))

    def replaced(name: str) -> None:  # the Deployment brings a fresh, ready pod; the agent answers again
        kube_api.add_pod(make_pod(f"{name}-new", {"agent-id": "test.gate"}))
        env.gates.open("k8s-restart")

    kube_api.on_delete = replaced
    ctx = await env.context(execution_id, kubernetes=kube, redis=False)
    params = RestartAgentParams(agent_id="test.gate", ready_timeout_seconds=5, verify_timeout_seconds=20)
    precheck = await PLAYBOOK.preconditions(ctx, params)
    assert precheck.ok and precheck.facts["pods"] == ["gate-1"]
    planned = await PLAYBOOK.plan(ctx, params)
    assert [a.step for a in planned] == ["delete_pods", "wait_ready"]
    result = await PLAYBOOK.apply(ctx, params)
    assert result.ok, result
    assert result.steps[0].data == {"deleted": ["gate-1"], "already_gone": []}
    assert result.steps[1].data == {"ready_pod": "gate-1-new"}
    assert "other-1" in kube_api.pods  # only the agent's pods were touched
    assert ("DELETE", "/api/v1/namespaces/greenlang/pods/gate-1", {}) in kube_api.requests
    verification = await PLAYBOOK.verify(ctx, params)
    assert verification.ok, verification.summary()


async def test_kubernetes_refuses_without_agent_pods(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    execution_id = await env.run(gate_dag("k8s-nopods"))
    await env.wait_running_node(execution_id, "stuck")
    ctx = await env.context(execution_id, kubernetes=kube, redis=False)
    precheck = await PLAYBOOK.preconditions(ctx, RestartAgentParams(agent_id="test.gate"))
    assert not precheck.ok and "no pods labelled agent-id=test.gate" in precheck.reason
    assert kube_api.requests  # it asked the API
    env.gates.open("k8s-nopods")


async def test_kubernetes_wait_is_bounded_and_reported(
    env: Env, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    execution_id = await env.run(gate_dag("k8s-noready"))
    await env.wait_running_node(execution_id, "stuck")
    kube_api.add_pod(make_pod("gate-1", {"agent-id": "test.gate"}))
    kube_api.on_delete = lambda name: kube_api.add_pod(
        make_pod("gate-2", {"agent-id": "test.gate"}, ready=False)
    )
    ctx = await env.context(execution_id, kubernetes=kube, redis=False)
    result = await PLAYBOOK.apply(ctx, RestartAgentParams(agent_id="test.gate", ready_timeout_seconds=0.3))
    assert not result.ok
    assert [s.status for s in result.steps] == [StepStatus.DONE, StepStatus.FAILED]
    assert "no ready replacement pod" in result.detail
    env.gates.open("k8s-noready")
