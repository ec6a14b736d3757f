"""The Plan: what the watchdog means to do about one stuck execution, and why.

Made by the planner (`watchdog.planner.make_plan`) from a Diagnosis and the policy, or by hand for a
manual playbook run (`watchdog.remediation`); completed with the playbook's dry-run actions; stored
on the incident and in its approval prompt as JSON and parsed back into this model once, at the store
boundary (`watchdog.store`), so everything above the store handles a typed value. `params` are the
playbook's parameters in their JSON form: the playbook's own params model validates them
(`Playbook.parse_params`) right before it is asked to act.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from watchdog.settings import Mode
from watchdog_sdk.outcomes import PlannedAction, Risk


class Plan(BaseModel):
    """What the watchdog means to do about one stuck execution, and why."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    likely_cause: str
    playbook: str | None
    params: dict[str, Any] = Field(default_factory=dict)
    risk: Risk | None = None
    mode: Mode
    requires_approval: bool = False
    will_act: bool = False
    rule: str | None = None
    rationale: str
    evidence: list[str] = Field(default_factory=list)
    actions: list[PlannedAction] = Field(default_factory=list)

    def headline(self) -> str:
        """One line for notifications and the terminal."""
        if self.playbook is None:
            return f"no automatic fix for {self.likely_cause}: escalate to on-call"
        verb = "would run" if not self.will_act else "run"
        return f"{verb} {self.playbook}({_params_text(self.params)}) [risk {self.risk}]"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())
