"""Playbook `throttle_concurrency` — runbook resolution option 4: relieve resource contention.

Lowers `max_parallel_nodes` and/or `max_concurrent_executions` live through the orchestrator's admin
route (`PUT /admin/limits`). The orchestrator stores the change, so it takes effect at once on every
replica (whichever one the Service sends the request to) and survives their restarts, until someone
clears it (`DELETE /admin/limits`); a limit already below its target is left as it is (a throttle
never raises one).

In Kubernetes it also does what the runbook's commands do, so the Deployment itself carries the new
values: patch the orchestrator Deployment's env (`GL_ORCHESTRATOR_MAX_PARALLEL_NODES`,
`GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS`) and roll it out (`kubectl rollout restart`: the pod
template's restartedAt annotation). That restarts every replica, and runs still going end
`interrupted` (the policy resumes them). `deployment_env: false` keeps to the live limits (no restart;
the chart then grants no Deployment access); `rollout_restart: false` patches without the explicit
restart. Run by the watchdog's remediation state machine (for the service and the CLI); reaches the
orchestrator and Kubernetes only through `watchdog_sdk.clients`.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from playbooks import checks
from watchdog_sdk.constants import ORCHESTRATOR_DEPLOYMENT, RESTARTED_AT_ANNOTATION
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.outcomes import Check, CheckStatus, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import OrchestratorCall, Playbook, PlaybookContext, Step, StepRequest

ENV_PARALLEL = "GL_ORCHESTRATOR_MAX_PARALLEL_NODES"
ENV_CONCURRENT = "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS"


class ThrottleParams(BaseModel):
    """The lower limits to set (at least one), and the orchestrator Deployment to patch in Kubernetes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_parallel_nodes: int | None = Field(default=None, ge=1)
    max_concurrent_executions: int | None = Field(default=None, ge=1)
    deployment: str = ORCHESTRATOR_DEPLOYMENT
    deployment_env: bool = True
    rollout_restart: bool = True

    @model_validator(mode="after")
    def _something_to_set(self) -> ThrottleParams:
        if self.max_parallel_nodes is None and self.max_concurrent_executions is None:
            raise ValueError("give max_parallel_nodes and/or max_concurrent_executions")
        return self

    def targets(self) -> dict[str, int]:
        return {
            k: v
            for k, v in {
                "max_parallel_nodes": self.max_parallel_nodes,
                "max_concurrent_executions": self.max_concurrent_executions,
            }.items()
            if v is not None
        }


class LimitValues(StepRequest):
    """The limits `PUT /admin/limits` sets; a limit left out (None) is not touched."""

    max_parallel_nodes: int | None = None
    max_concurrent_executions: int | None = None

    def limits(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    @model_serializer(mode="wrap")
    def _only_the_set_limits(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class SetLimits(OrchestratorCall):
    """`PUT /admin/limits` with the new live limits (stored by the orchestrator, applied on every replica)."""

    body: LimitValues


class PatchDeploymentEnv(StepRequest):
    """Set these env variables on the orchestrator Deployment's container (a pod template change)."""

    deployment: str
    namespace: str
    env: dict[str, str]


class RolloutRestart(StepRequest):
    """`kubectl rollout restart` of the orchestrator Deployment (the pod template's restartedAt)."""

    deployment: str
    namespace: str


class ThrottleConcurrencyPlaybook(Playbook[ThrottleParams]):
    """Lower the orchestrator's concurrency limits live on every replica and (in Kubernetes) in its
    Deployment."""

    name = "throttle_concurrency"
    risk = Risk.MEDIUM
    summary = (
        "lower max_parallel_nodes / max_concurrent_executions (live on every replica; Deployment env "
        "in Kubernetes)"
    )
    params_model = ThrottleParams

    async def preconditions(self, ctx: PlaybookContext, params: ThrottleParams) -> Precheck:
        try:
            limits = await ctx.orchestrator.get_limits()
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read the orchestrator's limits: {exc}")
        current = {
            "max_parallel_nodes": limits.max_parallel_nodes,
            "max_concurrent_executions": limits.max_concurrent_executions,
        }
        lower = {k: v for k, v in params.targets().items() if v < current[k]}
        if not lower:
            return Precheck.refused(
                f"limits are already at or below the targets (now {current}, targets {params.targets()})",
                current=current,
            )
        if ctx.kubernetes is not None and params.deployment_env:
            try:
                await ctx.kubernetes.get_deployment(params.deployment)
            except WatchdogError as exc:
                return Precheck.refused(f"cannot read Deployment {params.deployment}: {exc}", current=current)
        return Precheck.passed(f"lower {lower} (now {current})", current=current, lower=lower)

    async def _settable(self, ctx: PlaybookContext, params: ThrottleParams) -> dict[str, int]:
        """The targets that do not raise a limit: a throttle never loosens one that is already lower.

        A target equal to the current value stays in, so a re-plan after a crash (limits already set)
        still patches the Deployment with the same values.
        """
        try:
            limits = await ctx.orchestrator.get_limits()
        except WatchdogError:
            return params.targets()  # preconditions refuse when the limits cannot be read
        current = {
            "max_parallel_nodes": limits.max_parallel_nodes,
            "max_concurrent_executions": limits.max_concurrent_executions,
        }
        return {k: v for k, v in params.targets().items() if current[k] is None or v <= current[k]}

    async def steps(self, ctx: PlaybookContext, params: ThrottleParams) -> list[Step[Any]]:
        targets = await self._settable(ctx, params)

        async def set_limits(request: SetLimits) -> dict[str, Any]:
            limits = await ctx.orchestrator.set_limits(**request.body.limits())
            return limits.model_dump()

        steps: list[Step[Any]] = [
            Step(
                "set_limits",
                SetLimits(method="PUT", path="/admin/limits", body=LimitValues(**targets)),
                set_limits,
                idempotent=True,
                description=f"set live limits {targets} on every replica (PUT /admin/limits)",
                target="orchestrator",
            )
        ]
        kube = ctx.kubernetes
        if kube is None or not params.deployment_env:
            return steps

        async def patch_env(request: PatchDeploymentEnv) -> dict[str, Any]:
            await kube.patch_deployment_env(request.deployment, request.env)
            return {"env": request.env}

        async def rollout(request: RolloutRestart) -> dict[str, Any]:
            deployment = await kube.rollout_restart(request.deployment, now=ctx.clock.now())
            return {"restarted_at": deployment.template_annotations.get(RESTARTED_AT_ANNOTATION)}

        env = {}
        if "max_parallel_nodes" in targets:
            env[ENV_PARALLEL] = str(targets["max_parallel_nodes"])
        if "max_concurrent_executions" in targets:
            env[ENV_CONCURRENT] = str(targets["max_concurrent_executions"])
        steps.append(
            Step(
                "patch_deployment_env",
                PatchDeploymentEnv(deployment=params.deployment, namespace=ctx.namespace, env=env),
                patch_env,
                idempotent=True,
                description=f"kubectl set env deployment/{params.deployment} -n {ctx.namespace} "
                + " ".join(f"{k}={v}" for k, v in env.items())
                + " (a pod template change: Kubernetes rolls every replica out)",
                target=f"deployment/{params.deployment}",
            )
        )
        if params.rollout_restart:
            steps.append(
                Step(
                    "rollout_restart",
                    RolloutRestart(deployment=params.deployment, namespace=ctx.namespace),
                    rollout,
                    idempotent=False,
                    description=f"kubectl rollout restart deployment/{params.deployment} "
                    f"-n {ctx.namespace} (restarts every orchestrator replica: runs still going "
                    "end interrupted and need a resume)",
                    target=f"deployment/{params.deployment}",
                )
            )
        return steps

    async def verify(self, ctx: PlaybookContext, params: ThrottleParams) -> VerifyResult:
        found: list[Check] = []
        try:
            limits = await ctx.orchestrator.get_limits()
            now = limits.model_dump()
            wrong = {
                k: now.get(k)
                for k, v in params.targets().items()
                if not isinstance(now.get(k), int) or now[k] > v
            }
            found.append(
                Check(
                    name="limits_in_force",
                    status=CheckStatus.PROBLEM if wrong else CheckStatus.OK,
                    detail=f"limits now {now}" + (f"; above the targets: {wrong}" if wrong else ""),
                    decisive=True,
                )
            )
        except WatchdogError as exc:
            found.append(
                Check(name="limits_in_force", status=CheckStatus.UNKNOWN, detail=str(exc), decisive=True)
            )
        found.append(await checks.active_executions_check(ctx))
        found.append(await checks.no_other_stuck_runs(ctx))
        if ctx.kubernetes is not None and params.deployment_env:
            found.append(await _interrupted_runs(ctx))
        found.extend(await checks.prometheus_checks(ctx))
        return VerifyResult.of(self.name, found)


async def _interrupted_runs(ctx: PlaybookContext) -> Check:
    """After a rollout restart: the runs it left `interrupted`, which no replica resumes on its own."""
    try:
        runs = await ctx.orchestrator.list_executions(status="interrupted")
    except WatchdogError as exc:
        return Check(name="interrupted_runs", status=CheckStatus.UNKNOWN, detail=str(exc))
    if not runs:
        return Check(name="interrupted_runs", status=CheckStatus.OK, detail="no run left interrupted")
    ids = ", ".join(sorted(r.execution_id for r in runs))
    return Check(
        name="interrupted_runs",
        status=CheckStatus.PROBLEM,
        detail=f"{len(runs)} run(s) left interrupted by the rollout, to resume "
        f"(gl-watchdog playbook run resume --execution ID): {ids}",
    )
