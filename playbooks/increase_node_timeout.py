"""Playbook `increase_node_timeout` — runbook resolution option 6, for a legitimately slow node.

Raises one node's `timeout_policy.timeout_seconds` in the DAG definition (`PUT /dags/{dag_id}`, a
partial update that the orchestrator revalidates and versions), keeping its `on_timeout`. The new value
is `timeout_seconds` when given, else the current one times `factor`, and never above the policy's
`max_node_timeout_seconds`. It applies to later runs of the DAG. Run by the watchdog's remediation
state machine; talks to the orchestrator only through `watchdog_sdk.clients.orchestrator`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from playbooks import checks
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.ledger import idempotency_key
from watchdog_sdk.outcomes import ApplyResult, Check, CheckStatus, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import OrchestratorCall, Playbook, PlaybookContext, Step, StepRequest


class IncreaseNodeTimeoutParams(BaseModel):
    """Which node of which DAG, and the new timeout (absolute, or a factor of the current one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_id: str = Field(min_length=1)
    node_id: str = Field(min_length=1)
    timeout_seconds: int | None = Field(default=None, ge=1)
    factor: float = Field(default=2.0, gt=1.0, le=10.0)


def node_of(dag: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    """The node definition `node_id` of a DAG document (nodes keyed by id, or a list with node_id)."""
    nodes = dag.get("nodes")
    if isinstance(nodes, dict):
        node = nodes.get(node_id)
        return node if isinstance(node, dict) else None
    if isinstance(nodes, list):
        return next((n for n in nodes if isinstance(n, dict) and n.get("node_id") == node_id), None)
    return None


class NodeTimeoutPolicy(StepRequest):
    """A node's new `timeout_policy` (its `on_timeout` kept)."""

    timeout_seconds: int | float
    on_timeout: str


class NodePatch(StepRequest):
    timeout_policy: NodeTimeoutPolicy


class DagPatch(StepRequest):
    """The partial DAG update `PUT /dags/{dag_id}` deep-merges: one node's timeout policy."""

    nodes: dict[str, NodePatch]


class UpdateDag(OrchestratorCall):
    """`PUT /dags/{dag_id}` with the new timeout of one node."""

    body: DagPatch

    def timeout_of(self, node_id: str) -> int | float | None:
        node = self.body.nodes.get(node_id)
        return None if node is None else node.timeout_policy.timeout_seconds


class IncreaseNodeTimeoutPlaybook(Playbook[IncreaseNodeTimeoutParams]):
    """Give a legitimately slow node more time in later runs, bounded by the policy maximum."""

    name = "increase_node_timeout"
    risk = Risk.LOW
    summary = "raise one node's timeout_policy.timeout_seconds in the DAG (bounded by the policy maximum)"
    params_model = IncreaseNodeTimeoutParams

    async def _target(
        self, ctx: PlaybookContext, params: IncreaseNodeTimeoutParams
    ) -> tuple[Precheck, dict[str, Any]]:
        try:
            dag = await ctx.orchestrator.get_dag(params.dag_id)
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read DAG {params.dag_id}: {exc}"), {}
        node = node_of(dag, params.node_id)
        if node is None:
            return Precheck.refused(f"DAG {params.dag_id} has no node {params.node_id!r}"), {}
        policy = node.get("timeout_policy") or {}
        current = policy.get("timeout_seconds")
        on_timeout = policy.get("on_timeout", "fail")
        maximum = ctx.limits.max_node_timeout_seconds
        if not isinstance(current, int | float):
            # No per-node timeout means no per-node limit: setting one would restrict it, not raise it.
            return Precheck.refused(
                f"node {params.node_id} has no timeout of its own (only the DAG's execution timeout "
                "applies): there is no node timeout to raise"
            ), {}
        if params.timeout_seconds is not None:
            wanted = params.timeout_seconds
        else:
            wanted = math.ceil(current * params.factor)
        target = min(wanted, maximum)
        facts = {
            "current": current,
            "wanted": wanted,
            "target": target,
            "maximum": maximum,
            "on_timeout": on_timeout,
        }
        if current >= maximum:
            return Precheck.refused(
                f"node {params.node_id} is already at the policy maximum ({maximum}s)", **facts
            ), facts
        if target <= current:
            return Precheck.refused(
                f"new timeout {target}s would not raise the current {current}s", **facts
            ), facts
        capped = f" (capped at the policy maximum {maximum}s)" if wanted > maximum else ""
        return Precheck.passed(
            f"raise {params.node_id} timeout from {current}s to {target}s{capped}", **facts
        ), facts

    async def preconditions(self, ctx: PlaybookContext, params: IncreaseNodeTimeoutParams) -> Precheck:
        precheck, _ = await self._target(ctx, params)
        return precheck

    async def steps(self, ctx: PlaybookContext, params: IncreaseNodeTimeoutParams) -> list[Step[Any]]:
        precheck, facts = await self._target(ctx, params)
        if not facts:
            return []

        async def update(request: UpdateDag) -> dict[str, Any]:
            dag = await ctx.orchestrator.update_dag(params.dag_id, request.body.model_dump(mode="json"))
            node = node_of(dag, params.node_id) or {}
            return {"dag_version": dag.get("version"), "timeout_policy": node.get("timeout_policy")}

        policy = NodeTimeoutPolicy(timeout_seconds=facts["target"], on_timeout=facts["on_timeout"])
        return [
            Step(
                "update_dag",
                UpdateDag(
                    method="PUT",
                    path=f"/dags/{params.dag_id}",
                    body=DagPatch(nodes={params.node_id: NodePatch(timeout_policy=policy)}),
                ),
                update,
                idempotent=True,
                description=precheck.reason
                if precheck.ok
                else f"update {params.node_id} timeout: {precheck.reason}",
                target=f"{params.dag_id}/{params.node_id}",
            )
        ]

    async def apply(self, ctx: PlaybookContext, params: IncreaseNodeTimeoutParams) -> ApplyResult:
        steps = await self.steps(ctx, params)
        if not steps:
            precheck = await self.preconditions(ctx, params)
            return ApplyResult(playbook=self.name, ok=False, detail=precheck.reason)
        return await self.run_steps(ctx, steps)

    async def verify(self, ctx: PlaybookContext, params: IncreaseNodeTimeoutParams) -> VerifyResult:
        found: list[Check] = []
        entry = await ctx.ledger.get(idempotency_key(ctx.incident_id, self.name, "update_dag"))
        target = None
        if entry is not None:
            target = UpdateDag.model_validate(entry.request).timeout_of(params.node_id)
        try:
            dag = await ctx.orchestrator.get_dag(params.dag_id)
            node = node_of(dag, params.node_id) or {}
            current = (node.get("timeout_policy") or {}).get("timeout_seconds")
            ok = target is not None and current == target
            found.append(
                Check(
                    name="dag_timeout",
                    status=CheckStatus.OK if ok else CheckStatus.PROBLEM,
                    detail=f"{params.node_id} timeout_seconds is {current} (wanted {target})",
                    decisive=True,
                )
            )
        except WatchdogError as exc:
            found.append(
                Check(name="dag_timeout", status=CheckStatus.UNKNOWN, detail=str(exc), decisive=True)
            )
        found.append(await checks.no_other_stuck_runs(ctx))
        found.append(await checks.active_executions_check(ctx))
        found.extend(await checks.prometheus_checks(ctx))
        return VerifyResult.of(self.name, found)
