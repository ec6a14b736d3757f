"""Stall detection: is a running node hung, long before its DAG's timeout says so?

Where it sits: a pure rule over numbers, no I/O, in the SDK because both the sweep
(`watchdog.stuck_runs`, through `watchdog_sdk.stuck`) and diagnostic step 3 judge with it. Its callers
give it a node's history of completed durations (anything with a `count` and `quantile(q)`: the
orchestrator's `normal_duration` summary of its per-node `DurationSketch`, or a
`gl_common.quantiles.DurationSketch` itself, as `bench/detection.py` does), how long the node has been
running and how long ago it last reported progress (docs/architecture.md, "Stall detection").

The rule, in the order `assess` applies it:

1. no history, or fewer than `min_history` completed runs of this node: the rule does not apply
   (the DAG timeout still does);
2. `threshold = max(floor_seconds, multiple x quantile(history))`: a node running no longer than that
   is normal;
3. over the threshold but progress reported within `no_progress_seconds`: slow, not hung;
4. over the threshold and no progress for `no_progress_seconds` (or never, for an agent that does
   not report progress: then the whole run counts as without progress): stalling.

The defaults come from `bench/detection.py` (tuned on one seed, reported on another: docs/benchmarks.md,
"Detection quality").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class History(Protocol):
    """A node's completed durations as the rule reads them (`DurationSketch` is one)."""

    @property
    def count(self) -> int: ...

    def quantile(self, q: float) -> float | None: ...


class StallSettings(BaseModel):
    """The stall rule's knobs (docs/architecture.md, "Stall detection: signals, thresholds, tuning")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quantile: float = Field(0.95, gt=0, lt=1, description="the high quantile of normal durations")
    multiple: float = Field(3.0, ge=1, description="stalling beyond this multiple of that quantile")
    floor_seconds: float = Field(
        300.0, ge=0, description="never stalling before this long, however short the node normally is"
    )
    min_history: int = Field(10, ge=1, description="completed runs of the node before the rule applies")
    no_progress_seconds: float = Field(
        600.0, gt=0, description="progress reported within this window means slow, not hung"
    )


class StallReason(StrEnum):
    """Which branch of the rule decided."""

    NO_HISTORY = "no_history"
    SHORT_HISTORY = "short_history"
    WITHIN_THRESHOLD = "within_threshold"
    PROGRESSING = "progressing"
    STALLED = "stalled"


@dataclass(frozen=True)
class StallVerdict:
    """The rule's answer for one running node, with what a diagnosis shows ("normal vs current")."""

    stalling: bool
    reason: StallReason
    elapsed_seconds: float
    seconds_since_progress: float | None  # None: the node has reported no progress
    history_count: int
    threshold_seconds: float | None  # None while the rule does not apply (no or short history)
    normal_p50_seconds: float | None
    normal_p99_seconds: float | None
    text: str


def assess(
    history: History | None,
    elapsed_seconds: float,
    seconds_since_progress: float | None,
    settings: StallSettings,
) -> StallVerdict:
    """Judge one running node (see the module docstring for the rule).

    Negative times (a clock a little ahead on another replica) count as zero; NaN and infinity are refused.
    """
    elapsed = _seconds("elapsed_seconds", elapsed_seconds)
    since = (
        None if seconds_since_progress is None else _seconds("seconds_since_progress", seconds_since_progress)
    )
    count = 0 if history is None else history.count
    p50 = None if history is None else history.quantile(0.5)
    p99 = None if history is None else history.quantile(0.99)

    def verdict(stalling: bool, reason: StallReason, threshold: float | None, text: str) -> StallVerdict:
        return StallVerdict(stalling, reason, elapsed, since, count, threshold, p50, p99, text)

    running = f"running {format_seconds(elapsed)}"
    if history is None or count == 0:
        return verdict(False, StallReason.NO_HISTORY, None, f"{running}; no completed runs of this node yet")
    if count < settings.min_history:
        return verdict(
            False,
            StallReason.SHORT_HISTORY,
            None,
            f"{running}; only {count} completed runs of this node, the rule needs {settings.min_history}",
        )
    high = history.quantile(settings.quantile)
    assert high is not None  # the history is not empty
    threshold = max(settings.floor_seconds, settings.multiple * high)
    normal = f"normally p50 {format_seconds(p50)}, p{_percent(settings.quantile)} {format_seconds(high)}"
    basis = (
        f"the floor {format_seconds(settings.floor_seconds)}"
        if threshold == settings.floor_seconds
        else f"{settings.multiple:g} x p{_percent(settings.quantile)}"
    )
    over = f"threshold {format_seconds(threshold)} ({basis})"
    if elapsed <= threshold:
        return verdict(
            False, StallReason.WITHIN_THRESHOLD, threshold, f"{running}, {normal}; within the {over}"
        )
    quiet = elapsed if since is None else since
    if quiet < settings.no_progress_seconds:
        recent = (
            f"progress {format_seconds(quiet)} ago: slow, not hung"
            if since is not None
            else f"no progress reported, but not yet for {format_seconds(settings.no_progress_seconds)}"
        )
        return verdict(
            False, StallReason.PROGRESSING, threshold, f"{running}, {normal}; over the {over}; {recent}"
        )
    silence = "no progress reported" if since is None else f"no progress for {format_seconds(quiet)}"
    times = f", {elapsed / high:.1f} x its normal p{_percent(settings.quantile)}" if high > 0 else ""
    return verdict(
        True,
        StallReason.STALLED,
        threshold,
        f"stalling: {running}{times} ({normal}); over the {over}, {silence}",
    )


def format_seconds(seconds: float | None) -> str:
    """A duration for people: `45s`, `12m 05s`, `2h 03m`."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.2f}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _percent(q: float) -> str:
    return f"{q * 100:g}"


def _seconds(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    return max(0.0, value)
