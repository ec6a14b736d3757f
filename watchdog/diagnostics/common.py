"""Small helpers shared by the diagnostic step modules: building Findings, turning client errors into
Findings, the runbook's log filters, PromQL label quoting and time arithmetic.

Used only inside `watchdog.diagnostics`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from watchdog.diagnostics.models import Finding, StepStatus
from watchdog_sdk.errors import BackendUnavailable, ConfigError, WatchdogError

# Step 4: `kubectl logs ... | grep -i "error\|timeout\|hang\|stuck\|blocked\|waiting"`
AGENT_LOG_FILTER = re.compile(r"error|timeout|hang|stuck|blocked|waiting", re.IGNORECASE)
# Step 7: `grep -i "<agent_id>\|external\|http\|api\|timeout"` (the agent id is added per run)
EXTERNAL_LOG_WORDS = ("external", "http", "api", "timeout")
# Step 7, narrower: a line about an outside call that is waiting, slow or timing out.
EXTERNAL_CALL = re.compile(r"external|http|api\b|upstream|erp|connector|regulatory|factor", re.IGNORECASE)
WAITING = re.compile(r"waiting|timeout|timed out|slow|no response|retrying|hang", re.IGNORECASE)

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


def runbook_filter(agent_id: str | None) -> re.Pattern[str]:
    """Step 7's grep: the agent id or any of external/http/api/timeout, case-insensitive."""
    words = [re.escape(w) for w in EXTERNAL_LOG_WORDS]
    if agent_id:
        words.insert(0, re.escape(agent_id))
    return re.compile("|".join(words), re.IGNORECASE)


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
