"""What every playbook is made of: the context it acts in, its typed results, and the idempotent step.

The remediation loop (`watchdog.remediation`) and the CLI (`gl-watchdog playbook run`) build a
`PlaybookContext` (the incident, the execution, the clients, the action ledger, a clock) and call, in
this order, `preconditions()` (against live state, immediately before acting), `plan()` (a dry run: the
exact actions `apply()` would take), `apply()` and `verify()`. Playbooks reach outside systems only
through the client modules of `watchdog_sdk` (`watchdog_sdk.clients.*`), never `orchestrator_core`.

Like kopf's handler outcomes, results are frozen values and `apply()`/`verify()` never raise for an
outside system's failure: it becomes a failed step or an `unknown` check with the reason.

`apply()` is idempotent, keyed by incident, playbook and step: each step is recorded in the action
ledger (the store's `actions` table, unique idempotency key) before it runs and after it finishes, so
re-applying skips the steps already done. A step found `started` but never finished (the watchdog died
in the middle) is re-run only if the step is idempotent by nature (a GET, a compare-and-delete, setting
a limit to a value); otherwise it is marked `interrupted` and the playbook stops, so a non-idempotent
action (restarting an agent, starting a fresh run) is never done twice.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gl_common.clock import Clock, SystemClock
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.errors import WatchdogError


class Risk(StrEnum):
    """How much harm a wrong application could do."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


# -- the action ledger --------------------------------------------------------------------------------


class ActionState(StrEnum):
    """State of one recorded step in the ledger (the store's `actions.state`)."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the action ledger."""

    key: str
    incident_id: int
    playbook: str
    step: str
    state: ActionState
    request: dict[str, Any]
    result: dict[str, Any]


class ActionLedger(Protocol):
    """Where steps are recorded before and after they run; implemented over the store by the watchdog."""

    async def get(self, key: str) -> LedgerEntry | None:
        """The entry with idempotency key `key`, if any."""

    async def start(
        self, key: str, incident_id: int, playbook: str, step: str, request: dict[str, Any]
    ) -> bool:
        """Record the step as started; False when an entry with that key already exists (someone won)."""

    async def restart(self, key: str) -> bool:
        """Re-run a `started` idempotent step with its recorded request; False if no longer `started`."""

    async def finish(self, key: str, state: ActionState, result: dict[str, Any]) -> None:
        """Record how the step ended."""


def idempotency_key(incident_id: int, playbook: str, step: str) -> str:
    """The unique key of one step of one playbook for one incident."""
    return f"{incident_id}:{playbook}:{step}"


# The longest any playbook waits (for a ready pod, for the run to finish): a wait is always bounded.
MAX_WAIT_SECONDS = 3600.0


# -- context ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaybookLimits:
    """Bounds from the policy that playbooks enforce themselves."""

    max_node_timeout_seconds: int = 1800
    lock_grace_seconds: float = 30.0
    ready_timeout_seconds: float = 120.0
    poll_interval_seconds: float = 1.0


@dataclass(frozen=True)
class PlaybookContext:
    """Everything a playbook may touch. Optional clients are None when that backend is not configured."""

    incident_id: int
    execution_id: str
    orchestrator: OrchestratorClient
    ledger: ActionLedger
    redis: RedisClient | None = None
    kubernetes: KubernetesClient | None = None
    prometheus: PrometheusClient | None = None
    namespace: str = "greenlang"
    limits: PlaybookLimits = field(default_factory=PlaybookLimits)
    clock: Clock = field(default_factory=SystemClock)


# -- results ------------------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Precheck(_Frozen):
    """Whether the playbook may act now, and why (or why not)."""

    ok: bool
    reason: str
    facts: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def passed(cls, reason: str, **facts: Any) -> Precheck:
        return cls(ok=True, reason=reason, facts=facts)

    @classmethod
    def refused(cls, reason: str, **facts: Any) -> Precheck:
        return cls(ok=False, reason=reason, facts=facts)


class PlannedAction(_Frozen):
    """One action `apply()` would take: the step name, what it does, and the request it makes."""

    step: str
    description: str
    target: str
    request: dict[str, Any] = Field(default_factory=dict)
    idempotent: bool = False


class StepStatus(StrEnum):
    """How one step of `apply()` went."""

    DONE = "done"
    SKIPPED = "skipped"  # already done by an earlier apply of the same incident
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # found half-done after a crash; not repeated


class StepResult(_Frozen):
    """The outcome of one step."""

    step: str
    key: str
    status: StepStatus
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class ApplyResult(_Frozen):
    """The outcome of `apply()`: ok when every step is done or was already done."""

    playbook: str
    ok: bool
    steps: tuple[StepResult, ...] = ()
    detail: str = ""

    @property
    def interrupted(self) -> bool:
        return any(s.status is StepStatus.INTERRUPTED for s in self.steps)


class CheckStatus(StrEnum):
    """A verification check's verdict; `unknown` when its backend could not be asked."""

    OK = "ok"
    PROBLEM = "problem"
    UNKNOWN = "unknown"


class Check(_Frozen):
    """One post-resolution verification check of the runbook.

    A decisive check must be `ok` for the remediation to count as verified; the others are reported
    to the on-call (e.g. another run stuck is a separate incident, not a failure of this one).
    """

    name: str
    status: CheckStatus
    detail: str
    decisive: bool = False


class VerifyResult(_Frozen):
    """All checks; ok when every decisive check is ok."""

    playbook: str
    ok: bool
    checks: tuple[Check, ...] = ()

    @classmethod
    def of(cls, playbook: str, checks: list[Check]) -> VerifyResult:
        decisive = [c for c in checks if c.decisive]
        ok = bool(decisive) and all(c.status is CheckStatus.OK for c in decisive)
        return cls(playbook=playbook, ok=ok, checks=tuple(checks))

    def summary(self) -> str:
        return "; ".join(f"{c.name}: {c.status.value} ({c.detail})" for c in self.checks)


# -- the playbook -------------------------------------------------------------------------------------

P = TypeVar("P", bound=BaseModel)


class Playbook(abc.ABC, Generic[P]):
    """A runbook resolution option as code. Subclasses set `name`, `risk`, `params_model`, `summary`."""

    name: ClassVar[str]
    risk: ClassVar[Risk]
    summary: ClassVar[str]
    params_model: type[P]

    def parse_params(self, raw: dict[str, Any]) -> P:
        """Validate raw params (policy, planner or CLI); raises pydantic's ValidationError."""
        return self.params_model.model_validate(raw)

    @abc.abstractmethod
    async def preconditions(self, ctx: PlaybookContext, params: P) -> Precheck:
        """Check live state right before acting; refuse with a reason when acting would be unsafe."""

    @abc.abstractmethod
    async def plan(self, ctx: PlaybookContext, params: P) -> tuple[PlannedAction, ...]:
        """The exact actions `apply()` would take (a dry run: it changes nothing)."""

    @abc.abstractmethod
    async def apply(self, ctx: PlaybookContext, params: P) -> ApplyResult:
        """Take the actions as idempotent steps recorded in the ledger; never raises for outside failures."""

    @abc.abstractmethod
    async def verify(self, ctx: PlaybookContext, params: P) -> VerifyResult:
        """The runbook's post-resolution verification that applies to this playbook."""

    async def run_steps(self, ctx: PlaybookContext, steps: list[Step]) -> ApplyResult:
        """Run `steps` in order through the ledger; stop at the first that does not end done/skipped."""
        results: list[StepResult] = []
        for step in steps:
            result = await run_step(ctx, self.name, step)
            results.append(result)
            if result.status not in (StepStatus.DONE, StepStatus.SKIPPED):
                return ApplyResult(playbook=self.name, ok=False, steps=tuple(results), detail=result.detail)
        return ApplyResult(playbook=self.name, ok=True, steps=tuple(results), detail="all steps done")


@dataclass(frozen=True)
class Step:
    """One step of `apply()`: its name, whether re-running it is harmless, the request, and the action.

    `action(request)` performs the request. The request is recorded in the ledger before the action
    runs; an idempotent step found half-done after a crash is re-run with the *recorded* request (the
    pods it meant to delete, the timeout it computed), never one recomputed from changed state.
    """

    name: str
    idempotent: bool
    request: dict[str, Any]
    action: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def run_step(ctx: PlaybookContext, playbook: str, step: Step) -> StepResult:
    """Run one step at most once per incident, recorded in the ledger before and after."""
    key = idempotency_key(ctx.incident_id, playbook, step.name)
    existing = await ctx.ledger.get(key)
    request = step.request
    if existing is not None:
        if existing.state is ActionState.SUCCEEDED:
            return StepResult(
                step=step.name,
                key=key,
                status=StepStatus.SKIPPED,
                detail="already done",
                data=existing.result,
            )
        if existing.state is ActionState.FAILED:
            return StepResult(
                step=step.name,
                key=key,
                status=StepStatus.FAILED,
                detail=f"failed earlier: {existing.result.get('error', 'unknown error')}",
                data=existing.result,
            )
        if existing.state is ActionState.INTERRUPTED or not step.idempotent:
            if existing.state is ActionState.STARTED:
                await ctx.ledger.finish(
                    key, ActionState.INTERRUPTED, {"error": "interrupted before it finished; not repeated"}
                )
            return StepResult(
                step=step.name,
                key=key,
                status=StepStatus.INTERRUPTED,
                detail="started earlier but never finished; not repeated because it is not idempotent",
            )
        if not await ctx.ledger.restart(key):
            return StepResult(
                step=step.name, key=key, status=StepStatus.FAILED, detail="another worker took this step over"
            )
        request = existing.request
    elif not await ctx.ledger.start(key, ctx.incident_id, playbook, step.name, step.request):
        return StepResult(
            step=step.name, key=key, status=StepStatus.FAILED, detail="another worker is running this step"
        )
    try:
        data = await step.action(request)
    except WatchdogError as exc:
        await ctx.ledger.finish(key, ActionState.FAILED, {"error": str(exc)})
        return StepResult(step=step.name, key=key, status=StepStatus.FAILED, detail=str(exc))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug must not leave the step "started" forever nor crash the loop
        detail = f"{type(exc).__name__}: {exc}"
        await ctx.ledger.finish(key, ActionState.FAILED, {"error": detail})
        return StepResult(step=step.name, key=key, status=StepStatus.FAILED, detail=detail)
    await ctx.ledger.finish(key, ActionState.SUCCEEDED, data)
    return StepResult(step=step.name, key=key, status=StepStatus.DONE, detail="done", data=data)


class InMemoryLedger:
    """A ledger held in memory: for dry runs and one-off CLI runs that have no incident in the store."""

    def __init__(self) -> None:
        self._entries: dict[str, LedgerEntry] = {}

    async def get(self, key: str) -> LedgerEntry | None:
        return self._entries.get(key)

    async def start(
        self, key: str, incident_id: int, playbook: str, step: str, request: dict[str, Any]
    ) -> bool:
        if key in self._entries:
            return False
        self._entries[key] = LedgerEntry(
            key, incident_id, playbook, step, ActionState.STARTED, dict(request), {}
        )
        return True

    async def restart(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.state is ActionState.STARTED

    async def finish(self, key: str, state: ActionState, result: dict[str, Any]) -> None:
        entry = self._entries[key]
        self._entries[key] = LedgerEntry(
            key, entry.incident_id, entry.playbook, entry.step, state, entry.request, dict(result)
        )
