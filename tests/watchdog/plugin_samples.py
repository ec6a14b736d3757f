"""Plugins for tests/watchdog/test_plugins.py, loaded through `importlib.metadata.EntryPoint`s that
name them: one good playbook and one good diagnostic step, and one of each way a plugin can be broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext, DiagnosticStep
from watchdog_sdk.outcomes import Check, CheckStatus, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import Playbook, PlaybookContext, Step, StepRequest


class FlushParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache: str
    ttl_seconds: int = Field(default=60, ge=1)


class FlushRequest(StepRequest):
    cache: str


class FlushCache(Playbook[FlushParams]):
    name = "flush_cache"
    risk = Risk.LOW
    summary = "flush a cache"
    params_model = FlushParams

    async def preconditions(self, ctx: PlaybookContext, params: FlushParams) -> Precheck:
        return Precheck.passed("ok")

    async def steps(self, ctx: PlaybookContext, params: FlushParams) -> Sequence[Step[Any]]:
        async def flush(request: FlushRequest) -> dict[str, Any]:
            return {"flushed": request.cache}

        return [Step("flush", FlushRequest(cache=params.cache), flush, True, "flush", params.cache)]

    async def verify(self, ctx: PlaybookContext, params: FlushParams) -> VerifyResult:
        return VerifyResult.of(self.name, [Check(name="x", status=CheckStatus.OK, detail="x", decisive=True)])


class Opaque:
    """A type pydantic cannot describe in a JSON schema."""


class OpaqueParams(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    thing: Opaque


class BadModel(FlushCache):
    name = "bad_model"
    params_model = OpaqueParams  # type: ignore[assignment]


class NotAModel(FlushCache):
    name = "not_a_model"
    params_model = dict  # type: ignore[assignment]


class NoRisk(FlushCache):
    name = "no_risk"
    risk = "extreme"  # type: ignore[assignment]


class AnotherCancel(FlushCache):
    name = "cancel"


class Unfinished(Playbook[FlushParams]):  # verify and the rest not implemented: cannot be built
    name = "unfinished"
    risk = Risk.LOW
    summary = "x"
    params_model = FlushParams


NOT_A_PLAYBOOK = 42


async def queue_depth(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
    return Finding(
        step=0 + 1,  # the runner sets the step's own number and name
        name="?",
        status=StepStatus.PROBLEM,
        summary="queue orders has 12,000 messages waiting",
        evidence={"likely_cause": "queue_backlog", "depth": 12000},
    )


QUEUE_DEPTH = DiagnosticStep(
    20, "queue_depth", queue_depth, timeout_seconds=2.0, causes=frozenset({"queue_backlog"})
)
RUNBOOK_NUMBER = DiagnosticStep(5, "sneaky", queue_depth)
NO_TIMEOUT = DiagnosticStep(21, "no_timeout", queue_depth, timeout_seconds=0.0)
