"""Playbook `resume` — runbook resolution option 2: resume the run from its checkpoints.

Completed nodes are skipped; the rest run again, and the provenance chain continues. Never a second
writer: the run must be cancelled, failed or interrupted, or — if it still shows `running` — its owner
must be confirmed dead (`playbooks.holders`). Verification waits (bounded) for the resumed run to end
and checks it completed with a valid provenance chain. Run by the watchdog's remediation state machine;
talks to the orchestrator only through `watchdog_sdk.clients.orchestrator`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from playbooks import checks, holders
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.outcomes import Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import MAX_WAIT_SECONDS, Playbook, PlaybookContext, Step, orchestrator_post

RESUMABLE = frozenset({"cancelled", "failed", "interrupted"})


class ResumeParams(BaseModel):
    """How long verification waits for the resumed run to finish."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verify_timeout_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)


class ResumePlaybook(Playbook[ResumeParams]):
    """Resume from the last checkpoints, only when no one else is running the execution."""

    name = "resume"
    risk = Risk.MEDIUM
    summary = "resume the execution from its checkpoints (completed nodes skipped)"
    params_model = ResumeParams

    async def preconditions(self, ctx: PlaybookContext, params: ResumeParams) -> Precheck:
        try:
            execution = await ctx.orchestrator.get_execution(ctx.execution_id)
            checkpoints = await ctx.orchestrator.get_checkpoints(ctx.execution_id)
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read execution {ctx.execution_id}: {exc}")
        completed = [c.node_id for c in checkpoints.checkpoints if c.status == "completed"]
        facts: dict[str, Any] = {"status": execution.status, "completed_checkpoints": completed}
        if execution.status == "completed":
            return Precheck.refused("run already finished (status completed); nothing to resume", **facts)
        if execution.status in RESUMABLE:
            if ctx.redis is not None:
                try:
                    lock = await ctx.redis.get_lock(ctx.execution_id)
                except WatchdogError as exc:
                    return Precheck.refused(f"cannot check the run's lock: {exc}", **facts)
                if lock is not None:
                    verdict = await holders.judge_lock(ctx, lock)
                    if not verdict.dead:
                        return Precheck.refused(
                            f"run is {execution.status} but its lock is still held: {verdict.reason}", **facts
                        )
            return Precheck.passed(
                f"run is {execution.status} with {len(completed)} completed checkpoint(s); resuming is safe",
                **facts,
            )
        if execution.status == "queued":  # a new run, or a resume the orchestrator already queued
            return Precheck.refused(
                "run is queued for admission (the orchestrator is at max_concurrent_executions); "
                "it starts, from its checkpoints, when a slot frees: nothing to resume",
                **facts,
            )
        # running: only if the owner is confirmed gone, never a second writer.
        if not execution.owner:
            return Precheck.refused(
                f"run is {execution.status} and names no owner to confirm gone; never a second writer",
                **facts,
            )
        verdict = await holders.judge_replica(ctx, execution.owner, None)
        if not verdict.dead:
            return Precheck.refused(
                f"run is {execution.status} and its owner is not confirmed gone ({verdict.reason}); "
                "resuming would make a second writer",
                **facts,
            )
        return Precheck.passed(f"run is {execution.status} but {verdict.reason}", **facts)

    async def steps(self, ctx: PlaybookContext, params: ResumeParams) -> list[Step[Any]]:
        execution_id = ctx.execution_id
        what = f"resume execution {execution_id} from its checkpoints (completed nodes skipped)"
        resume = orchestrator_post(
            "resume",
            f"/executions/{execution_id}/resume",
            lambda: ctx.orchestrator.resume(execution_id),
            idempotent=False,
            description=what,
            target=execution_id,
        )
        return [resume]

    async def verify(self, ctx: PlaybookContext, params: ResumeParams) -> VerifyResult:
        found = await checks.run_completion_checks(ctx, params.verify_timeout_seconds)
        return VerifyResult.of(self.name, found)
