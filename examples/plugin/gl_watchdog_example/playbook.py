"""Playbook `raise_concurrency`: raise the orchestrator's concurrent-execution limit so a queue drains.

Preconditions: the limit now in force is below the target (else there is nothing to do). One step,
idempotent by nature (it sets a value): `PUT /admin/limits`. Verify: the limit in force is the target.
The watchdog runs it only through its remediation state machine (mode, approval, budgets, circuit
breaker, audit); the playbook reaches the orchestrator only through `ctx.orchestrator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.outcomes import Check, CheckStatus, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import OrchestratorCall, Playbook, PlaybookContext, Step

LIMITS_PATH = "/admin/limits"


class RaiseConcurrencyParams(BaseModel):
    """The target limit, bounded so a policy typo cannot open the floodgates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent_executions: int = Field(ge=1, le=500)


class SetLimit(OrchestratorCall):
    max_concurrent_executions: int


class RaiseConcurrencyPlaybook(Playbook[RaiseConcurrencyParams]):
    name = "raise_concurrency"
    risk = Risk.MEDIUM
    summary = "raise the orchestrator's max_concurrent_executions so queued runs start"
    params_model = RaiseConcurrencyParams

    async def preconditions(self, ctx: PlaybookContext, params: RaiseConcurrencyParams) -> Precheck:
        try:
            limits = await ctx.orchestrator.get_limits()
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read the limits: {exc}")
        if limits.max_concurrent_executions >= params.max_concurrent_executions:
            return Precheck.refused(
                f"the limit is already {limits.max_concurrent_executions}, "
                f"not below the target {params.max_concurrent_executions}"
            )
        return Precheck.passed(
            f"the limit is {limits.max_concurrent_executions}, below the target",
            current=limits.max_concurrent_executions,
        )

    async def steps(self, ctx: PlaybookContext, params: RaiseConcurrencyParams) -> Sequence[Step[Any]]:
        async def set_limit(request: SetLimit) -> dict[str, Any]:
            limits = await ctx.orchestrator.set_limits(
                max_concurrent_executions=request.max_concurrent_executions
            )
            return {"max_concurrent_executions": limits.max_concurrent_executions}

        target = params.max_concurrent_executions
        return [
            Step(
                "set_limit",
                SetLimit(method="PUT", path=LIMITS_PATH, max_concurrent_executions=target),
                set_limit,
                idempotent=True,
                description=f"set max_concurrent_executions to {target}",
                target="orchestrator",
            )
        ]

    async def verify(self, ctx: PlaybookContext, params: RaiseConcurrencyParams) -> VerifyResult:
        try:
            limits = await ctx.orchestrator.get_limits()
        except WatchdogError as exc:
            check = Check(name="limit", status=CheckStatus.UNKNOWN, detail=str(exc), decisive=True)
            return VerifyResult.of(self.name, [check])
        ok = limits.max_concurrent_executions == params.max_concurrent_executions
        check = Check(
            name="limit",
            status=CheckStatus.OK if ok else CheckStatus.PROBLEM,
            detail=f"max_concurrent_executions is {limits.max_concurrent_executions}",
            decisive=True,
        )
        return VerifyResult.of(self.name, [check])
