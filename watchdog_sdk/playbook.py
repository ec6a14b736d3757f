"""The playbook interface: the context a playbook acts in, the playbook itself, and its idempotent steps.

The watchdog's remediation state machine (`watchdog.remediation`; the service and `gl-watchdog playbook
run` alike) builds a `PlaybookContext` (the incident, the execution, the clients, the action ledger,
the policy's bounds, a clock) and calls, in this order, `preconditions()` (against live state,
immediately before acting), `plan()` (a dry run: the exact actions `apply()` would take), `apply()` and
`verify()`. The built-in playbooks (`playbooks.*`) implement this interface and import only this package
and `gl_common`, as playbook plugins will; a playbook gets clients, never the watchdog's store, so it
cannot step around the safety rails (approvals, budgets, the circuit breaker, the audit log).

A playbook plans and applies with typed values: `steps()` returns its `Step`s, each with a typed
request (a `StepRequest` model) and the action that carries it out; `plan()` shows them (a dry run)
and `apply()` runs them. Results are frozen values (`watchdog_sdk.outcomes`) and `apply()`/`verify()`
never raise for an outside system's failure: it becomes a failed step or an `unknown` check.

`apply()` is idempotent, keyed by incident, playbook and step: each step is recorded in the action
ledger (`watchdog_sdk.ledger`; the watchdog's `actions` table) before it runs and after it finishes, so
re-applying skips the steps already done. A step found `started` but never finished (the watchdog died
in the middle) is re-run only if the step is idempotent by nature (a GET, a compare-and-delete, setting
a limit to a value), with the request parsed back from its record; otherwise it is marked
`interrupted` and the playbook stops, so a non-idempotent action (restarting an agent, starting a
fresh run) is never done twice.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from opentelemetry.trace import NoOpTracer, Tracer
from pydantic import BaseModel, ConfigDict

from gl_common.clock import Clock, SystemClock
from watchdog_sdk.clients import ClientAccess, Clients
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.ledger import ActionLedger, ActionState, idempotency_key
from watchdog_sdk.outcomes import (
    ApplyResult,
    PlannedAction,
    Precheck,
    Risk,
    StepResult,
    StepStatus,
    VerifyResult,
)

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
class PlaybookContext(ClientAccess):
    """Everything a playbook may touch. Optional clients are None when that backend is not configured."""

    incident_id: int
    execution_id: str
    clients: Clients
    ledger: ActionLedger
    limits: PlaybookLimits = field(default_factory=PlaybookLimits)
    clock: Clock = field(default_factory=SystemClock)
    # Makes a span per step (`watchdog.action`); the watchdog's, where spans are exported.
    tracer: Tracer = field(default_factory=NoOpTracer)


# -- steps --------------------------------------------------------------------------------------------


class StepRequest(BaseModel):
    """The typed request of one step. Its JSON form is what the ledger records before the step runs and
    what a dry run shows; an idempotent step found half-done after a crash is re-run with the request
    parsed back from that record (the pods it meant to delete, the timeout it computed), never one
    recomputed from changed state."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class OrchestratorCall(StepRequest):
    """A request to the orchestrator's API, recorded as the call it makes (`method`, `path`) so the audit
    shows it; the action itself calls the typed client (`ctx.orchestrator`), never parses the path."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str


R = TypeVar("R", bound=StepRequest)


@dataclass(frozen=True)
class Step(Generic[R]):
    """One step of `apply()`: its name, its typed request, the action that performs it, whether
    re-running it is harmless, and what a dry run says about it (`description`, `target`)."""

    name: str
    request: R
    action: Callable[[R], Awaitable[dict[str, Any]]]
    idempotent: bool
    description: str
    target: str

    def planned(self) -> PlannedAction:
        """The step as the dry run shows it."""
        return PlannedAction(
            step=self.name,
            description=self.description,
            target=self.target,
            request=self.request.model_dump(mode="json"),
            idempotent=self.idempotent,
        )


def orchestrator_post(
    name: str,
    path: str,
    call: Callable[[], Awaitable[BaseModel]],
    *,
    idempotent: bool,
    description: str,
    target: str,
) -> Step[OrchestratorCall]:
    """A step that is one POST to the orchestrator's API: recorded as `POST <path>`, carried out by
    `call` (the typed client's method), whose answer is the step's result."""

    async def action(_request: OrchestratorCall) -> dict[str, Any]:
        return (await call()).model_dump()

    request = OrchestratorCall(method="POST", path=path)
    return Step(name, request, action, idempotent=idempotent, description=description, target=target)


ACTION_SPAN = "watchdog.action"


async def run_step(ctx: PlaybookContext, playbook: str, step: Step[Any]) -> StepResult:
    """Run one step at most once per incident, recorded in the ledger before and after, in a span
    (`watchdog.action`, attributes `playbook`, `action`, `status`): what the step asks the
    orchestrator carries it as `traceparent`."""
    attributes: dict[str, str | int] = {
        "playbook": playbook,
        "action": step.name,
        "incident_id": ctx.incident_id,
    }
    with ctx.tracer.start_as_current_span(ACTION_SPAN, attributes=attributes) as span:
        result = await _run_step(ctx, playbook, step)
        span.set_attribute("status", result.status.value)
        return result


async def _run_step(ctx: PlaybookContext, playbook: str, step: Step[Any]) -> StepResult:
    key = idempotency_key(ctx.incident_id, playbook, step.name)
    existing = await ctx.ledger.get(key)
    rerun: dict[str, Any] | None = None
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
        rerun = existing.request
    elif not await ctx.ledger.start(
        key, ctx.incident_id, playbook, step.name, step.request.model_dump(mode="json")
    ):
        return StepResult(
            step=step.name, key=key, status=StepStatus.FAILED, detail="another worker is running this step"
        )
    try:
        request = step.request if rerun is None else type(step.request).model_validate(rerun)
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


# -- the playbook -------------------------------------------------------------------------------------

P = TypeVar("P", bound=BaseModel)


class Playbook(abc.ABC, Generic[P]):
    """A runbook resolution option as code. Subclasses set `name`, `risk`, `params_model` (a pydantic
    model of its parameters), `summary`, and implement `preconditions`, `steps` and `verify`."""

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
    async def steps(self, ctx: PlaybookContext, params: P) -> Sequence[Step[Any]]:
        """The steps `apply()` takes, with their typed requests (reading live state, changing nothing)."""

    @abc.abstractmethod
    async def verify(self, ctx: PlaybookContext, params: P) -> VerifyResult:
        """The runbook's post-resolution verification that applies to this playbook."""

    async def plan(self, ctx: PlaybookContext, params: P) -> tuple[PlannedAction, ...]:
        """The exact actions `apply()` would take (a dry run: it changes nothing)."""
        return tuple(step.planned() for step in await self.steps(ctx, params))

    async def apply(self, ctx: PlaybookContext, params: P) -> ApplyResult:
        """Take the steps, each recorded in the ledger; never raises for outside failures."""
        try:
            steps = await self.steps(ctx, params)
        except WatchdogError as exc:
            return ApplyResult(playbook=self.name, ok=False, detail=f"cannot plan: {exc}")
        return await self.run_steps(ctx, steps)

    async def run_steps(self, ctx: PlaybookContext, steps: Sequence[Step[Any]]) -> ApplyResult:
        """Run `steps` in order through the ledger; stop at the first that does not end done/skipped."""
        results: list[StepResult] = []
        for step in steps:
            result = await run_step(ctx, self.name, step)
            results.append(result)
            if result.status not in (StepStatus.DONE, StepStatus.SKIPPED):
                return ApplyResult(playbook=self.name, ok=False, steps=tuple(results), detail=result.detail)
        return ApplyResult(playbook=self.name, ok=True, steps=tuple(results), detail="all steps done")
