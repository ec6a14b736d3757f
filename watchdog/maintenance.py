"""Maintenance windows: planned periods in which the watchdog neither prompts nor acts on a run.

Declared in the policy file (`maintenance:`, validated with the rest of `watchdog.policy`, so an error
names its field, line and window) and asked by `watchdog.suppression` after a diagnosis, like the
Alertmanager silences of `watchdog.silences`:

    maintenance:
      - name: nightly-batch
        match: {dag_id: ["emissions-*"]}        # and/or agent: [...], labels: {namespace: "prod"}
        recurrence: daily                      # once | daily | weekly (with days: [sat, sun])
        start: "22:00"                         # once: a local date and time, "2026-12-24T08:00"
        end: "06:00"                           # or duration: PT8H (ISO 8601) / seconds
        timezone: Europe/Berlin                # an IANA zone (zoneinfo); default UTC

Times are wall-clock times in `timezone`: a daily window at 22:00 starts at 22:00 local time on both
sides of a DST change. `end` is a wall-clock time too (the next day's when it is not after `start`),
so a 22:00-06:00 window lasts 9 hours on the night the clocks go back; `duration` is elapsed time. A
start that does not exist on a spring-forward day (02:30 in Europe/Berlin on the last Sunday of
March) is read with the offset before the change, as zoneinfo does (it begins at 03:30 local time).
Every matcher given must hold: shell-style patterns over the incident's `dag_id` and `agent` labels
and over any other label (see `watchdog.suppression.incident_labels` for the labels an incident has).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowMatch(_Strict):
    """Which incidents a window covers: every condition given must hold."""

    dag_id: list[str] = Field(default_factory=list)
    agent: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> WindowMatch:
        if not (self.dag_id or self.agent or self.labels):
            raise ValueError("a maintenance window must match on at least one of dag_id, agent, labels")
        return self

    def covers(self, labels: dict[str, str]) -> bool:
        """True when `labels` satisfy every condition (a missing label matches no pattern)."""
        wanted = [("dag_id", self.dag_id), ("agent", self.agent)]
        wanted += [(name, [pattern]) for name, pattern in self.labels.items()]
        return all(_any(labels.get(name), patterns) for name, patterns in wanted if patterns)


class MaintenanceWindow(_Strict):
    """One named window, once or recurring, in its time zone."""

    name: str = Field(min_length=1)
    match: WindowMatch
    recurrence: Literal["once", "daily", "weekly"] = "once"
    start: str
    end: str | None = None
    duration: timedelta | None = None
    timezone: str = "UTC"
    days: list[Day] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r} (an IANA name such as Europe/Berlin)") from exc
        return zone

    @field_validator("duration")
    @classmethod
    def _positive(cls, duration: timedelta | None) -> timedelta | None:
        if duration is not None and duration <= timedelta(0):
            raise ValueError("duration must be positive")
        return duration

    @model_validator(mode="after")
    def _consistent(self) -> MaintenanceWindow:
        if (self.end is None) == (self.duration is None):
            raise ValueError(f"window {self.name!r}: give exactly one of end, duration")
        if self.recurrence == "weekly" and not self.days:
            raise ValueError(f"window {self.name!r}: a weekly window needs days (mon..sun)")
        if self.recurrence != "weekly" and self.days:
            raise ValueError(f"window {self.name!r}: days are for a weekly window only")
        parse = _parse_datetime if self.recurrence == "once" else _parse_time
        for field in ("start", "end"):
            value = getattr(self, field)
            if value is not None:
                parse(value, f"window {self.name!r}: {field}")
        once_end = _parse_datetime(self.end, "") if self.recurrence == "once" and self.end else None
        if once_end is not None and once_end <= _parse_datetime(self.start, ""):
            raise ValueError(f"window {self.name!r}: end {self.end} is not after start {self.start}")
        return self

    def covers(self, labels: dict[str, str]) -> bool:
        """True when the window's matchers cover `labels` (at any time)."""
        return self.match.covers(labels)

    def occurrence_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The (start, end) in UTC of the occurrence that contains `now`, or None."""
        return next(((s, e) for s, e in self._occurrences_near(now) if s <= now < e), None)

    def describe(self, occurrence: tuple[datetime, datetime]) -> dict[str, Any]:
        """What the incident's audit records about the window."""
        return {"kind": "maintenance", "name": self.name, "ends_at": occurrence[1].isoformat()}

    def _occurrences_near(self, now: datetime) -> list[tuple[datetime, datetime]]:
        zone = ZoneInfo(self.timezone)
        if self.recurrence == "once":
            return [self._occurrence(_parse_datetime(self.start, ""), zone, None)]
        start_time = _parse_time(self.start, "")
        span = self.duration or timedelta(days=1)
        today = now.astimezone(zone).date()
        back = span.days + 2  # an occurrence that began this many days ago may still run
        candidates = [today - timedelta(days=n) for n in range(back, -1, -1)]
        return [
            self._occurrence(datetime.combine(d, start_time), zone, d)
            for d in candidates
            if self.recurrence == "daily" or DAYS[d.weekday()] in self.days
        ]

    def _occurrence(
        self, local_start: datetime, zone: ZoneInfo, day: date | None
    ) -> tuple[datetime, datetime]:
        start = _in_zone(local_start, zone)
        if self.duration is not None:
            return start, start + self.duration
        assert self.end is not None
        if day is None:
            return start, _in_zone(_parse_datetime(self.end, ""), zone)
        end_time = _parse_time(self.end, "")
        end_day = day if end_time > local_start.time() else day + timedelta(days=1)
        return start, _in_zone(datetime.combine(end_day, end_time), zone)


def active_windows(
    windows: list[MaintenanceWindow], labels: dict[str, str], now: datetime
) -> list[tuple[MaintenanceWindow, tuple[datetime, datetime]]]:
    """The windows covering `labels` that are open at `now`, each with its current occurrence."""
    found = []
    for window in windows:
        if window.covers(labels):
            occurrence = window.occurrence_at(now)
            if occurrence is not None:
                found.append((window, occurrence))
    return found


def _in_zone(local: datetime, zone: ZoneInfo) -> datetime:
    """A naive local time (or an aware one, kept) as UTC."""
    aware = local if local.tzinfo is not None else local.replace(tzinfo=zone)
    return aware.astimezone(UTC)


def _parse_time(text: str, what: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a time of day HH:MM") from None


def _parse_datetime(text: str, what: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a date and time YYYY-MM-DDTHH:MM") from None


def _any(value: str | None, patterns: list[str]) -> bool:
    return value is not None and any(fnmatchcase(value, p) for p in patterns)
