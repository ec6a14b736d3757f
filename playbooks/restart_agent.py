"""Playbook `restart_agent` — runbook resolution option 3: restart the agent the stuck node waits on.

In Kubernetes: delete the agent's pods (label `agent-id=<id>`), then wait, bounded, for a ready
replacement; the orchestrator's retry policy re-runs the node once the agent answers again. Embedded:
`POST /admin/agents/{id}/restart` restarts the in-process agent worker, which cancels the hung attempt
as a retryable `AgentRestarted` error. Verification waits (bounded) for the run to finish and checks
it completed with a valid provenance chain. Rate limits (restarts per agent per hour) are enforced by
the remediation loop from the policy. Called by the loop and the CLI; reaches the orchestrator and
Kubernetes only through `watchdog_sdk.clients`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from playbooks import checks
from playbooks.base import (
    MAX_WAIT_SECONDS,
    ApplyResult,
    PlannedAction,
    Playbook,
    PlaybookContext,
    Precheck,
    Risk,
    Step,
    VerifyResult,
)
from watchdog_sdk.constants import AGENT_LABEL
from watchdog_sdk.errors import KubernetesNotFound, WatchdogError


class RestartAgentParams(BaseModel):
    """Which agent, how long to wait for a ready replacement, and for the run to finish afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str = Field(min_length=1)
    ready_timeout_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)
    verify_timeout_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)


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

    async def plan(self, ctx: PlaybookContext, params: RestartAgentParams) -> tuple[PlannedAction, ...]:
        if ctx.kubernetes is None:
            return (
                PlannedAction(
                    step="restart_worker",
                    description=f"restart the in-process agent worker {params.agent_id} "
                    f"(POST /admin/agents/{params.agent_id}/restart); the hung attempt is retried",
                    target=params.agent_id,
                    request={"method": "POST", "path": f"/admin/agents/{params.agent_id}/restart"},
                    idempotent=False,
                ),
            )
        pods = [p.name for p in await ctx.kubernetes.list_pods(self._selector(params))]
        return (
            PlannedAction(
                step="delete_pods",
                description=f"kubectl delete pod -n {ctx.namespace} {' '.join(pods)}",
                target=self._selector(params),
                request={"namespace": ctx.namespace, "pods": pods},
                idempotent=True,
            ),
            PlannedAction(
                step="wait_ready",
                description=f"wait up to {params.ready_timeout_seconds:g}s for a ready pod labelled "
                f"{self._selector(params)} that replaces them",
                target=self._selector(params),
                request={
                    "selector": self._selector(params),
                    "replaced": pods,
                    "timeout": params.ready_timeout_seconds,
                },
                idempotent=True,
            ),
        )

    async def apply(self, ctx: PlaybookContext, params: RestartAgentParams) -> ApplyResult:
        try:
            planned = await self.plan(ctx, params)
        except WatchdogError as exc:
            return ApplyResult(playbook=self.name, ok=False, detail=f"cannot plan: {exc}")
        kube = ctx.kubernetes

        async def restart_worker(_request: dict[str, Any]) -> dict[str, Any]:
            result = await ctx.orchestrator.restart_agent(params.agent_id)
            return result.model_dump()

        async def delete_pods(request: dict[str, Any]) -> dict[str, Any]:
            if kube is None:
                raise RuntimeError("delete_pods planned without Kubernetes")
            deleted, gone = [], []
            for pod in request["pods"]:
                try:
                    await kube.delete_pod(pod)
                    deleted.append(pod)
                except KubernetesNotFound:
                    gone.append(pod)
            return {"deleted": deleted, "already_gone": gone}

        async def wait_ready(request: dict[str, Any]) -> dict[str, Any]:
            if kube is None:
                raise RuntimeError("wait_ready planned without Kubernetes")
            pod = await kube.wait_for_ready_replacement(
                request["selector"],
                set(request["replaced"]),
                deadline_seconds=request["timeout"],
                poll_seconds=ctx.limits.poll_interval_seconds,
                sleep=ctx.clock.sleep,
            )
            return {"ready_pod": pod.name}

        actions = {"restart_worker": restart_worker, "delete_pods": delete_pods, "wait_ready": wait_ready}
        steps = [Step(p.step, p.idempotent, p.request, actions[p.step]) for p in planned]
        return await self.run_steps(ctx, steps)

    async def verify(self, ctx: PlaybookContext, params: RestartAgentParams) -> VerifyResult:
        found = await checks.run_completion_checks(ctx, params.verify_timeout_seconds)
        return VerifyResult.of(self.name, found)
