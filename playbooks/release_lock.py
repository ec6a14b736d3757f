"""Playbook `release_lock` — runbook resolution option 5, done safely.

The runbook's `DEL 'gl:orchestrator:lock:<execution_id>'` is only safe when the holder is confirmed
dead; this playbook checks exactly that (`playbooks.holders`: heartbeat stale past the grace period AND
pod gone or terminated) and then deletes the lock by compare-and-delete on the holder's fencing token
(a Lua script in `watchdog_sdk.clients.redis`), never a bare DEL: if a new holder took the lock in between,
its token differs and it is left alone. A live holder makes it refuse, with the reason. Once released,
a live orchestrator replica takes the run over; verification checks the dead holder's lock is gone and
waits (bounded) for the run to end. Run by the watchdog's remediation state machine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from playbooks import checks, holders
from watchdog_sdk.clients.redis import ReleaseResult
from watchdog_sdk.constants import lock_key
from watchdog_sdk.errors import LockError, WatchdogError
from watchdog_sdk.ledger import idempotency_key
from watchdog_sdk.outcomes import ApplyResult, Check, CheckStatus, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import MAX_WAIT_SECONDS, Playbook, PlaybookContext, Step, StepRequest


class ReleaseLockParams(BaseModel):
    """How long verification waits for the run to be taken over and finish."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verify_timeout_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)
    wait_for_completion: bool = True


class ReleaseLock(StepRequest):
    """Delete the lock `key` only while it still carries fencing token `token` (its holder `owner`)."""

    key: str
    token: int | None
    owner: str | None


class ReleaseLockPlaybook(Playbook[ReleaseLockParams]):
    """Release the run's ownership lock, only when its holder is confirmed dead, by fencing token."""

    name = "release_lock"
    risk = Risk.HIGH
    summary = (
        "release the run's ownership lock held by a dead replica (compare-and-delete on its fencing token)"
    )
    params_model = ReleaseLockParams

    async def preconditions(self, ctx: PlaybookContext, params: ReleaseLockParams) -> Precheck:
        if ctx.redis is None:
            return Precheck.refused("no Redis configured: the embedded orchestrator's locks are in-process")
        try:
            lock = await ctx.redis.get_lock(ctx.execution_id)
        except WatchdogError as exc:
            return Precheck.refused(f"cannot read {lock_key(ctx.execution_id)}: {exc}")
        if lock is None:
            return Precheck.refused(f"no lock {lock_key(ctx.execution_id)} is held; nothing to release")
        if lock.token is None:
            return Precheck.refused(f"lock {lock.key} carries no fencing token; refusing a bare DEL")
        verdict = await holders.judge_lock(ctx, lock)
        if not verdict.dead:
            return Precheck.refused(f"lock holder not confirmed dead: {verdict.reason}", **verdict.facts)
        return Precheck.passed(verdict.reason, token=lock.token, owner=lock.owner, **verdict.facts)

    def _step(self, ctx: PlaybookContext, request: ReleaseLock) -> Step[ReleaseLock]:
        redis = ctx.redis

        async def release(req: ReleaseLock) -> dict[str, Any]:
            if redis is None or req.token is None:
                raise LockError("no fencing token to release by")
            result = await redis.compare_and_delete_lock(ctx.execution_id, req.token)
            if result in (ReleaseResult.RELEASED, ReleaseResult.ABSENT):
                return {"result": result.value, "token": req.token, "owner": req.owner}
            raise LockError(
                f"lock not released ({result.value}): it is no longer held with token {req.token}"
            )

        if request.token is None:
            what = f"no lock with a fencing token is held at {request.key}: nothing to delete"
        else:
            what = (
                f"delete {request.key} only if it still carries fencing token {request.token} "
                f"(holder {request.owner}); never a bare DEL"
            )
        return Step(
            "compare_and_delete", request, release, idempotent=True, description=what, target=request.key
        )

    async def steps(self, ctx: PlaybookContext, params: ReleaseLockParams) -> list[Step[Any]]:
        lock = await ctx.redis.get_lock(ctx.execution_id) if ctx.redis is not None else None
        token, owner = (lock.token, lock.owner) if lock is not None else (None, None)
        return [self._step(ctx, ReleaseLock(key=lock_key(ctx.execution_id), token=token, owner=owner))]

    async def apply(self, ctx: PlaybookContext, params: ReleaseLockParams) -> ApplyResult:
        # Re-judge right before acting: the token released is the one of the holder just confirmed dead.
        precheck = await self.preconditions(ctx, params)
        key = idempotency_key(ctx.incident_id, self.name, "compare_and_delete")
        if not precheck.ok and await ctx.ledger.get(key) is None:
            return ApplyResult(playbook=self.name, ok=False, detail=precheck.reason)
        request = ReleaseLock(
            key=lock_key(ctx.execution_id),
            token=precheck.facts.get("token"),
            owner=precheck.facts.get("owner"),
        )
        return await self.run_steps(ctx, [self._step(ctx, request)])

    async def verify(self, ctx: PlaybookContext, params: ReleaseLockParams) -> VerifyResult:
        found: list[Check] = []
        entry = await ctx.ledger.get(idempotency_key(ctx.incident_id, self.name, "compare_and_delete"))
        released_token = ReleaseLock.model_validate(entry.request).token if entry is not None else None
        if ctx.redis is None:
            found.append(
                Check(name="lock_released", status=CheckStatus.UNKNOWN, detail="no Redis", decisive=True)
            )
        else:
            try:
                lock = await ctx.redis.get_lock(ctx.execution_id)
                if lock is not None and lock.token == released_token:
                    found.append(
                        Check(
                            name="lock_released",
                            status=CheckStatus.PROBLEM,
                            detail=f"{lock.key} still carries the dead holder's token {released_token}",
                            decisive=True,
                        )
                    )
                else:
                    now = "free" if lock is None else f"now held by {lock.owner} with token {lock.token}"
                    found.append(
                        Check(
                            name="lock_released",
                            status=CheckStatus.OK,
                            detail=f"token {released_token} released; lock {now}",
                            decisive=True,
                        )
                    )
            except WatchdogError as exc:
                found.append(
                    Check(name="lock_released", status=CheckStatus.UNKNOWN, detail=str(exc), decisive=True)
                )
        if params.wait_for_completion:
            execution, note = await checks.wait_for_status(
                ctx, ctx.execution_id, checks.TERMINAL_STATUSES, params.verify_timeout_seconds
            )
            found.append(checks.execution_status_check(execution, {"completed"}, note))
        found.append(await checks.no_other_stuck_runs(ctx))
        found.extend(await checks.prometheus_checks(ctx))
        return VerifyResult.of(self.name, found)
