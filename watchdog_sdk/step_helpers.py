"""Helpers for writing a diagnostic step: building Findings, turning client errors into Findings,
filtering log lines, PromQL label quoting and time arithmetic.

Used by the built-in steps (`watchdog.diagnostics.step<N>_<name>`) and open to step plugins; depends
only on the diagnosis results (`watchdog_sdk.diagnosis`) and the shared errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.errors import BackendUnavailable, ConfigError, WatchdogError

MAX_EVIDENCE_LINES = 50


def finding(step: int, name: str, status: StepStatus, summary: str, /, **evidence: Any) -> Finding:
    """A Finding with JSON-friendly evidence."""
    return Finding(step=step, name=name, status=status, summary=summary, evidence=evidence)


def from_error(step: int, name: str, exc: BaseException, what: str, /, **evidence: Any) -> Finding:
    """The Finding of a step that could not finish because `exc` was raised while `what`.

    Unreachable or unconfigured backends give `unknown`; an answer with an error, or a bug, `error`.
    """
    status = StepStatus.UNKNOWN if isinstance(exc, BackendUnavailable | ConfigError) else StepStatus.ERROR
    reason = str(exc) if isinstance(exc, WatchdogError) else f"{type(exc).__name__}: {exc}"
    return finding(step, name, status, f"{what}: {reason}", reason=reason, **evidence)


def filter_lines(
    lines: Iterable[str], pattern: re.Pattern[str], limit: int = MAX_EVIDENCE_LINES
) -> list[str]:
    """The last `limit` lines matching `pattern` (recent lines matter most)."""
    matched = [line.rstrip() for line in lines if line.strip() and pattern.search(line)]
    return matched[-limit:]


def promql_label(value: str) -> str:
    """A label value quoted for a PromQL selector."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def as_utc(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime from a datetime or ISO string (None if absent or unparsable)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def seconds_since(start: datetime | str | None, now: datetime) -> float | None:
    """Seconds from `start` to `now`, or None when `start` is unknown."""
    begun = as_utc(start)
    if begun is None:
        return None
    return round((now - begun).total_seconds(), 3)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 of an optional datetime."""
    return value.isoformat() if value is not None else None
