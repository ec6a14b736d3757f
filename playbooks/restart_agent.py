"""Playbook `restart_agent` — runbook resolution option 3: restart the agent the stuck node waits on.

In Kubernetes: delete the agent's pods (label `agent-id=<id>`), then wait, bounded, for a ready
replacement; the orchestrator's retry policy re-runs the node once the agent answers again. Embedded:
`POST /admin/agents/{id}/restart` restarts the in-process agent worker, which cancels the hung attempt
as a retryable `AgentRestarted` error. Verification waits (bounded) for the run to finish and checks
it completed with a valid provenance chain. Rate limits (restarts per agent per hour) are enforced by
the remediation state machine from the policy, which runs this playbook (for the service and the
CLI); reaches the orchestrator and Kubernetes only through `watchdog_sdk.clients`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from playbooks import checks
from watchdog_sdk.constants import AGENT_LABEL
from watchdog_sdk.errors import KubernetesNotFound, WatchdogError
from watchdog_sdk.outcomes import Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import (
    MAX_WAIT_SECONDS,
    Playbook,
    PlaybookContext,
    Step,
    StepRequest,
    orchestrator_post,
)


class RestartAgentParams(BaseModel):
    """Which agent, how long to wait for a ready replacement, and for the run to finish afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str = Field(min_length=1)
    ready_timeout_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)
    verify_timeout_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)


class DeletePods(StepRequest):
    """The agent's pods to delete (those seen when the step was planned; re-deleting one is harmless)."""

    namespace: str
    pods: list[str]


class WaitReady(StepRequest):
    """Wait (bounded) for a ready pod matching `selector` that is none of the `replaced` ones."""

    selector: str
    replaced: list[str]
    timeout: float


class RestartAgentPlaybook(Playbook[RestartAgentParams]):
    """Restart the agent: delete its pods and wait for a ready one, or restart the in-process worker."""

    name = "restart_agent"
    risk = Risk.MEDIUM
    summary = (
        "restart the stuck node's agent (delete its pods, wait for a ready one; embedded: restart the worker)"
    )
    params_model = RestartAgentParams

    def _selector(self, params: RestartAgentParams) -> str:
        return f"{AGENT_LABEL}={params.agent_id}"

    async def preconditions(self, ctx: PlaybookContext, params: RestartAgentParams) -> Precheck:
        try:
            trace = await ctx.orchestrator.get_trace(ctx.execution_id)
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read the trace of {ctx.execution_id}: {exc}")
        if trace.status not in ("running", "queued"):
            return Precheck.refused(f"run already finished (status {trace.status}); nothing to unstick")
        waiting = sorted(
            n for n, t in trace.node_traces.items() if t.status == "running" and t.agent_id == params.agent_id
        )
        if not waiting:
            return Precheck.refused(
                f"no node of execution {ctx.execution_id} is running on agent {params.agent_id}; "
                "restarting it would not help"
            )
        if ctx.kubernetes is not None:
            try:
                pods = await ctx.kubernetes.list_pods(self._selector(params))
            except WatchdogError as exc:
                return Precheck.refused(
                    f"cannot list the pods of agent {params.agent_id}: {exc}", nodes=waiting
                )
            if not pods:
                return Precheck.refused(
                    f"no pods labelled {self._selector(params)} in namespace {ctx.namespace}", nodes=waiting
                )
            names = [p.name for p in pods]
            return Precheck.passed(
                f"node(s) {', '.join(waiting)} wait on agent {params.agent_id}; pods {', '.join(names)}",
                nodes=waiting,
                pods=names,
            )
        try:
            agents = await ctx.orchestrator.list_agents()
        except WatchdogError as exc:
            return Precheck.refused(f"cannot list the orchestrator's agents: {exc}", nodes=waiting)
        agent = next((a for a in agents if a.agent_id == params.agent_id), None)
        if agent is None:
            return Precheck.refused(f"the orchestrator knows no agent {params.agent_id!r}", nodes=waiting)
        return Precheck.passed(
            f"node(s) {', '.join(waiting)} wait on in-process agent {params.agent_id} "
            f"(restarted {agent.restarts} times)",
            nodes=waiting,
            restarts=agent.restarts,
        )

    async def steps(self, ctx: PlaybookContext, params: RestartAgentParams) -> list[Step[Any]]:
        kube = ctx.kubernetes
        if kube is None:
            return [
                orchestrator_post(
                    "restart_worker",
                    f"/admin/agents/{params.agent_id}/restart",
                    lambda: ctx.orchestrator.restart_agent(params.agent_id),
                    idempotent=False,
                    description=f"restart the in-process agent worker {params.agent_id} "
                    f"(POST /admin/agents/{params.agent_id}/restart); the hung attempt is retried",
                    target=params.agent_id,
                )
            ]

        async def delete_pods(request: DeletePods) -> dict[str, Any]:
            deleted, gone = [], []
            for pod in request.pods:
                try:
                    await kube.delete_pod(pod)
                    deleted.append(pod)
                except KubernetesNotFound:
                    gone.append(pod)
            return {"deleted": deleted, "already_gone": gone}

        async def wait_ready(request: WaitReady) -> dict[str, Any]:
            pod = await kube.wait_for_ready_replacement(
                request.selector,
                set(request.replaced),
                deadline_seconds=request.timeout,
                poll_seconds=ctx.limits.poll_interval_seconds,
                sleep=ctx.clock.sleep,
            )
            return {"ready_pod": pod.name}

        selector = self._selector(params)
        pods = [p.name for p in await kube.list_pods(selector)]
        return [
            Step(
                "delete_pods",
                DeletePods(namespace=ctx.namespace, pods=pods),
                delete_pods,
                idempotent=True,
                description=f"kubectl delete pod -n {ctx.namespace} {' '.join(pods)}",
                target=selector,
            ),
            Step(
                "wait_ready",
                WaitReady(selector=selector, replaced=pods, timeout=params.ready_timeout_seconds),
                wait_ready,
                idempotent=True,
                description=f"wait up to {params.ready_timeout_seconds:g}s for a ready pod labelled "
                f"{selector} that replaces them",
                target=selector,
            ),
        ]

    async def verify(self, ctx: PlaybookContext, params: RestartAgentParams) -> VerifyResult:
        found = await checks.run_completion_checks(ctx, params.verify_timeout_seconds)
        return VerifyResult.of(self.name, found)
