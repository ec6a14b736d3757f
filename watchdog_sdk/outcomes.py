"""What a playbook answers with: frozen values, never exceptions for an outside system's failure.

`Precheck` (may it act now, and why), `PlannedAction` (one action of the dry run, with the request it
would make), `ApplyResult` of `StepResult`s (how each idempotent step went), and `VerifyResult` of
`Check`s (the runbook's post-resolution verification). Like kopf's handler outcomes: a playbook returns
one of these, and the watchdog's remediation state machine (`watchdog.remediation`) decides what
happens next. `Risk` says how much harm a wrong application could do.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Risk(StrEnum):
    """How much harm a wrong application could do."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


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
