"""The ways a run gets stuck that its DAG timeout cannot see (issue 16), judged from the orchestrator's
signals: each a cause of its own, with a severity and its evidence.

Where it sits: pure judgments, no I/O, shared by the sweep (`watchdog.stuck_runs`, which asks the
orchestrator for the candidates and opens the incidents) and the diagnostic steps (step 1 judges the
execution, step 3 its node), so an incident the sweep opened for a cause is diagnosed with the same
rule and thresholds and names the same cause. The thresholds are `StuckSettings`
(`WatchdogSettings.stuck_runs`; docs/architecture.md, "Stall detection: signals, thresholds, tuning").

- `node_stalling`: a running node far beyond its normal duration, without progress (the rule of
  `watchdog_sdk.stall` over the node's `started_at`, `last_progress_at` and `normal_duration`);
- `retry_storm`: a running node at attempt `retry_storm_attempts` or later (its `attempt`);
- `queued_too_long`: queued for longer than `queued_max_seconds` (the execution's `queued_at`);
- `cancel_not_completing`: a cancel asked for `cancel_grace_seconds` ago or more, and the run still
  not cancelled (`cancel_requested_at`);
- `resume_loop`: failed at the same node in its last `resume_loop_count` attempts or more
  (`failure_streak`);
- `owner_gone`: running, its owner replica's heartbeat gone while its lock is still held
  (`owner_alive` false).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from watchdog_sdk.clients.orchestrator_models import QUANTILES, Execution, NormalDuration
from watchdog_sdk.stall import StallSettings, StallVerdict, assess, format_seconds


class StuckCause(StrEnum):
    """The causes these judgments name (a diagnosis' `likely_cause`, a policy rule's `likely_cause`)."""

    NODE_STALLING = "node_stalling"
    RETRY_STORM = "retry_storm"
    QUEUED_TOO_LONG = "queued_too_long"
    CANCEL_NOT_COMPLETING = "cancel_not_completing"
    RESUME_LOOP = "resume_loop"
    OWNER_GONE = "owner_gone"


# How urgent each is: `critical` when the run cannot end by itself (nothing will move it: its owner is
# gone, it fails at the same node on every resume), `warning` when it may still (a stall may be a very
# slow node, a queue drains, a cancel completes late, retries end at max_retries).
SEVERITY: Final[dict[StuckCause, str]] = {
    StuckCause.NODE_STALLING: "warning",
    StuckCause.RETRY_STORM: "warning",
    StuckCause.QUEUED_TOO_LONG: "warning",
    StuckCause.CANCEL_NOT_COMPLETING: "warning",
    StuckCause.RESUME_LOOP: "critical",
    StuckCause.OWNER_GONE: "critical",
}


class StuckSettings(BaseModel):
    """The thresholds of the stuck-run judgments (`WatchdogSettings.stuck_runs`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stall: StallSettings = Field(default_factory=StallSettings)
    queued_max_seconds: float = Field(1800.0, gt=0, description="queued longer than this: admission starved")
    cancel_grace_seconds: float = Field(300.0, gt=0, description="a cancel not completed after this")
    resume_loop_count: int = Field(3, ge=2, description="failed at the same node this many times in a row")
    retry_storm_attempts: int = Field(5, ge=2, description="a node at this attempt or later")

    @field_validator("stall")
    @classmethod
    def _reported_quantile(cls, stall: StallSettings) -> StallSettings:
        if stall.quantile not in QUANTILES:
            raise ValueError(
                f"stall.quantile {stall.quantile} is not one the orchestrator reports of a node's "
                f"history; choose one of {', '.join(map(str, QUANTILES))}"
            )
        return stall


@dataclass(frozen=True)
class StuckState:
    """One stuck state found: its cause, severity, one line for people, and its evidence."""

    cause: StuckCause
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY[self.cause]

    def as_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause.value,
            "severity": self.severity,
            "summary": self.summary,
            **self.evidence,
        }


def execution_states(execution: Execution, now: datetime, settings: StuckSettings) -> list[StuckState]:
    """The execution-level stuck states of `execution` at `now` (none when its fields are unknown)."""
    found = [
        _queued_too_long(execution, now, settings),
        _cancel_not_completing(execution, now, settings),
        _resume_loop(execution, settings),
        _owner_gone(execution),
    ]
    return [state for state in found if state is not None]


def _seconds(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


def _queued_too_long(execution: Execution, now: datetime, settings: StuckSettings) -> StuckState | None:
    waited = _seconds(execution.queued_at, now)
    if execution.status != "queued" or waited is None or waited <= settings.queued_max_seconds:
        return None
    return StuckState(
        StuckCause.QUEUED_TOO_LONG,
        f"queued for {format_seconds(waited)}, longer than {format_seconds(settings.queued_max_seconds)}: "
        "admission is starved (the concurrency limit is full, or too low)",
        {"queued_seconds": round(waited, 3), "queued_max_seconds": settings.queued_max_seconds},
    )


def _cancel_not_completing(execution: Execution, now: datetime, settings: StuckSettings) -> StuckState | None:
    waited = _seconds(execution.cancel_requested_at, now)
    if execution.status not in ("running", "queued") or waited is None:
        return None
    if waited < settings.cancel_grace_seconds:
        return None
    return StuckState(
        StuckCause.CANCEL_NOT_COMPLETING,
        f"a cancel was asked for {format_seconds(waited)} ago and the run is still {execution.status} "
        f"(grace {format_seconds(settings.cancel_grace_seconds)})",
        {"cancel_pending_seconds": round(waited, 3), "cancel_grace_seconds": settings.cancel_grace_seconds},
    )


def _resume_loop(execution: Execution, settings: StuckSettings) -> StuckState | None:
    streak = execution.failure_streak
    if streak is None or streak.count < settings.resume_loop_count or execution.status == "completed":
        return None
    resumed = execution.resume_count
    return StuckState(
        StuckCause.RESUME_LOOP,
        f"failed at node {streak.node_id} in each of its last {streak.count} attempts "
        f"(resumed {resumed if resumed is not None else '?'} times): resuming again will not help",
        {"failure_node_id": streak.node_id, "failure_streak": streak.count, "resume_count": resumed},
    )


def _owner_gone(execution: Execution) -> StuckState | None:
    if execution.status != "running" or execution.owner_alive is not False:
        return None
    return StuckState(
        StuckCause.OWNER_GONE,
        f"its owner replica {execution.owner or '?'} has no heartbeat, but its lock is still held: "
        "no live replica can take the run over until it expires or is released",
        {"owner": execution.owner, "owner_alive": False},
    )


@dataclass(frozen=True)
class NodeSignals:
    """What the node-level judgments read of one running node (a trace's node, or a running-nodes item)."""

    node_id: str
    agent_id: str | None
    attempt: int
    started_at: datetime | None
    last_progress_at: datetime | None
    normal_duration: NormalDuration | None


def stall_verdict(node: NodeSignals, now: datetime, settings: StuckSettings) -> StallVerdict | None:
    """The stall rule's verdict on `node` at `now` (None without a start time)."""
    elapsed = _seconds(node.started_at, now)
    if elapsed is None:
        return None
    return assess(node.normal_duration, elapsed, _seconds(node.last_progress_at, now), settings.stall)


def node_states(node: NodeSignals, now: datetime, settings: StuckSettings) -> list[StuckState]:
    """The node-level stuck states of a running node: stalling, and a retry storm."""
    found: list[StuckState] = []
    verdict = stall_verdict(node, now, settings)
    if verdict is not None and verdict.stalling:
        found.append(
            StuckState(
                StuckCause.NODE_STALLING,
                f"node {node.node_id} (agent {node.agent_id or '?'}) {verdict.text}",
                {"node_id": node.node_id, **_stall(verdict)},
            )
        )
    if node.attempt >= settings.retry_storm_attempts:
        found.append(
            StuckState(
                StuckCause.RETRY_STORM,
                f"node {node.node_id} (agent {node.agent_id or '?'}) is at attempt {node.attempt}: "
                f"retrying in a storm (threshold {settings.retry_storm_attempts})",
                {"node_id": node.node_id, "attempt": node.attempt},
            )
        )
    return found


def _stall(verdict: StallVerdict) -> dict[str, Any]:
    """A verdict's numbers as evidence: the node's normal duration next to its current one."""
    return {
        "running_seconds": round(verdict.elapsed_seconds, 3),
        "seconds_since_progress": verdict.seconds_since_progress,
        "threshold_seconds": verdict.threshold_seconds,
        "normal_p50_seconds": verdict.normal_p50_seconds,
        "normal_p99_seconds": verdict.normal_p99_seconds,
        "history_count": verdict.history_count,
    }


def stall_evidence(verdict: StallVerdict) -> dict[str, Any]:
    """The evidence of a stall verdict, whatever it said (diagnosis step 3 shows it for every node)."""
    return {"stall_reason": verdict.reason.value, **_stall(verdict)}
