"""Playbook `cancel` — runbook resolution option 1: cancel the stuck run, optionally start a fresh one.

Cancelling keeps the completed nodes' checkpoints. With `start_fresh_run`, a new execution of the same
DAG is started with the original `input_data` (checkpointing and deterministic mode on, as the
runbook's command does). Run by the watchdog's remediation state machine (also for `gl-watchdog
playbook run cancel`); talks to the orchestrator only through `watchdog_sdk.clients.orchestrator`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from playbooks import checks
from watchdog_sdk.errors import Conflict, WatchdogError
from watchdog_sdk.ledger import idempotency_key
from watchdog_sdk.outcomes import Check, CheckStatus, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import MAX_WAIT_SECONDS, OrchestratorCall, Playbook, PlaybookContext, Step

CANCELLABLE = frozenset({"queued", "running", "interrupted"})


class CancelParams(BaseModel):
    """Whether to start a fresh run of the same DAG with the original input after cancelling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_fresh_run: bool = False
    verify_timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)


class StartFreshRun(OrchestratorCall):
    """`POST /dags/{dag_id}/execute` with the cancelled run's input, checkpointed and deterministic (as the
    runbook's command does)."""

    dag_id: str
    input_data: Any = None
    execution_options: dict[str, bool]

    @classmethod
    def of(cls, dag_id: str, input_data: Any) -> StartFreshRun:
        return cls(
            method="POST",
            path=f"/dags/{dag_id}/execute",
            dag_id=dag_id,
            input_data=input_data,
            execution_options={"checkpoint_enabled": True, "deterministic_mode": True},
        )


class CancelPlaybook(Playbook[CancelParams]):
    """Cancel the run (checkpoints kept); optionally start it afresh."""

    name = "cancel"
    risk = Risk.HIGH
    summary = "cancel the stuck execution (checkpoints kept), optionally start a fresh run"
    params_model = CancelParams

    async def preconditions(self, ctx: PlaybookContext, params: CancelParams) -> Precheck:
        try:
            execution = await ctx.orchestrator.get_execution(ctx.execution_id)
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read execution {ctx.execution_id}: {exc}")
        if execution.status not in CANCELLABLE:
            return Precheck.refused(
                f"run already finished (status {execution.status}); nothing to cancel",
                status=execution.status,
            )
        if params.start_fresh_run and not execution.dag_id:
            return Precheck.refused("cannot start a fresh run: the execution does not name its DAG")
        return Precheck.passed(
            f"execution is {execution.status}; it can be cancelled",
            status=execution.status,
            dag_id=execution.dag_id,
        )

    async def steps(self, ctx: PlaybookContext, params: CancelParams) -> list[Step[Any]]:
        async def cancel(_request: OrchestratorCall) -> dict[str, Any]:
            try:
                execution = await ctx.orchestrator.cancel(ctx.execution_id)
            except Conflict:
                # Already finished: done if it is cancelled (e.g. our own earlier, unrecorded cancel).
                execution = await ctx.orchestrator.get_execution(ctx.execution_id)
                if execution.status != "cancelled":
                    raise
            return {"status": execution.status}

        async def start_fresh(request: StartFreshRun) -> dict[str, Any]:
            fresh = await ctx.orchestrator.execute(request.dag_id, request.input_data)
            return {"execution_id": fresh.execution_id, "status": fresh.status}

        steps: list[Step[Any]] = [
            Step(
                "cancel",
                OrchestratorCall(method="POST", path=f"/executions/{ctx.execution_id}/cancel"),
                cancel,
                idempotent=True,
                description=f"cancel execution {ctx.execution_id} (completed checkpoints are kept)",
                target=ctx.execution_id,
            )
        ]
        if params.start_fresh_run:
            execution = await ctx.orchestrator.get_execution(ctx.execution_id)
            dag_id = str(execution.dag_id)
            steps.append(
                Step(
                    "start_fresh_run",
                    StartFreshRun.of(dag_id, execution.input_data),
                    start_fresh,
                    idempotent=False,
                    description=f"start a fresh run of DAG {execution.dag_id} with the original input",
                    target=dag_id,
                )
            )
        return steps

    async def _fresh_run_check(self, ctx: PlaybookContext) -> Check:
        entry = await ctx.ledger.get(idempotency_key(ctx.incident_id, self.name, "start_fresh_run"))
        fresh_id = entry.result.get("execution_id") if entry is not None else None
        if not fresh_id:
            return Check(
                name="fresh_run", status=CheckStatus.PROBLEM, detail="no fresh run was started", decisive=True
            )
        try:
            fresh = await ctx.orchestrator.get_execution(str(fresh_id))
        except WatchdogError as exc:
            return Check(name="fresh_run", status=CheckStatus.UNKNOWN, detail=str(exc), decisive=True)
        healthy = fresh.status in ("queued", "running", "completed")
        return Check(
            name="fresh_run",
            status=CheckStatus.OK if healthy else CheckStatus.PROBLEM,
            detail=f"fresh run {fresh.execution_id} is {fresh.status}",
            decisive=True,
        )

    async def verify(self, ctx: PlaybookContext, params: CancelParams) -> VerifyResult:
        execution, note = await checks.wait_for_status(
            ctx, ctx.execution_id, {"cancelled"}, params.verify_timeout_seconds
        )
        found = [checks.execution_status_check(execution, {"cancelled"}, note)]
        if params.start_fresh_run:
            found.append(await self._fresh_run_check(ctx))
        found.append(await checks.no_other_stuck_runs(ctx))
        found.append(await checks.active_executions_check(ctx))
        found.extend(await checks.prometheus_checks(ctx))
        return VerifyResult.of(self.name, found)
