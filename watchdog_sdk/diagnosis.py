"""The results of diagnosis: one `Finding` per runbook step, gathered into a `Diagnosis`.

Produced by the step modules (`watchdog.diagnostics.step<N>_<name>`) and `watchdog.diagnostics.runner`;
read by the planner (`watchdog.planner`), the incident store, the API and the renderers. Frozen
values: a step returns one, nothing mutates it afterwards.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Steps 1-8 are the runbook's; a plugin step takes a number of its own in 9-MAX_STEP
# (`watchdog_sdk.diagnostic_step`).
RUNBOOK_STEPS = 8
MAX_STEP = 99
# The evidence key under which a plugin step's `problem` finding names a likely cause it declared
# (`DiagnosticStep.causes`); the runner uses it when the runbook's own rules find no cause.
CAUSE_KEY = "likely_cause"


class StepStatus(StrEnum):
    """How a step ended.

    ok: the step looked and found nothing wrong. problem: it found something that explains or worsens
    the stall. unknown: it could not look (backend not configured or not reachable). error: it looked
    and the backend answered with an error, or the step itself failed.
    """

    OK = "ok"
    PROBLEM = "problem"
    UNKNOWN = "unknown"
    ERROR = "error"


class Finding(BaseModel):
    """What one diagnostic step found.

    `evidence` is JSON-serialisable data the planner may read by key (each step documents its keys),
    `duration_ms` how long the step took.
    """

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=1, le=MAX_STEP)
    name: str
    status: StepStatus
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float = 0.0


class Diagnosis(BaseModel):
    """The findings of steps 1-8 (and of plugin steps) for one execution, and the most likely cause
    with its evidence."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    started_at: datetime
    completed_at: datetime
    findings: list[Finding]
    likely_cause: str
    cause_evidence: list[str] = Field(default_factory=list)
    # Facts the planner and playbooks need, lifted from the findings: dag_id, stuck node, agent...
    dag_id: str | None = None
    stuck_node_id: str | None = None
    agent_id: str | None = None
    # The Kubernetes namespace the run's orchestrator and agents were looked at in (the watchdog's
    # `namespace` setting): what a policy rule's `namespace` matcher reads.
    namespace: str | None = None

    def finding(self, step: int) -> Finding | None:
        """The finding of `step`, if that step ran."""
        return next((f for f in self.findings if f.step == step), None)
