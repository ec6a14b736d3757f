"""Maintenance windows: when they are open (time zones, DST, daily/weekly/once), what they match, how
the policy file refuses a bad one (naming its line and window), and that an open window holds an
incident at the gate like a silence does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.watchdog.recording_playbook import POLICY
from watchdog.errors import PolicyError
from watchdog.maintenance import MaintenanceWindow, active_windows
from watchdog.policy import parse_policy, parse_policy_text

EMISSIONS = {"dag_id": ["emissions-*"]}


def window(**fields: Any) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate({"name": "w", "match": EMISSIONS, **fields})


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


NIGHTLY_BERLIN = {"recurrence": "daily", "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"}


@pytest.mark.parametrize(
    ("now", "open_"),
    [
        (utc(2026, 1, 15, 21, 0), True),  # 22:00 CET: starts
        (utc(2026, 1, 15, 20, 59), False),
        (utc(2026, 1, 16, 4, 59), True),  # 05:59 CET, the next morning
        (utc(2026, 1, 16, 5, 0), False),  # 06:00 CET: ends
        (utc(2026, 7, 15, 20, 0), True),  # 22:00 CEST: starts an hour earlier in UTC
        (utc(2026, 7, 15, 19, 59), False),
        (utc(2026, 7, 16, 3, 59), True),  # 05:59 CEST
        (utc(2026, 7, 16, 4, 0), False),
    ],
)
def test_a_daily_window_follows_the_wall_clock_of_its_zone_in_winter_and_summer(
    now: datetime, open_: bool
) -> None:
    assert (window(**NIGHTLY_BERLIN).occurrence_at(now) is not None) is open_


def test_the_night_the_clocks_go_back_a_wall_clock_end_lasts_nine_hours_and_a_duration_eight() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET. 22:00 CEST on the 24th is 20:00 UTC.
    by_end = window(**NIGHTLY_BERLIN).occurrence_at(utc(2026, 10, 25, 4, 30))
    assert by_end == (utc(2026, 10, 24, 20, 0), utc(2026, 10, 25, 5, 0))
    by_duration = window(recurrence="daily", start="22:00", duration="PT8H", timezone="Europe/Berlin")
    assert by_duration.occurrence_at(utc(2026, 10, 25, 3, 59)) == (
        utc(2026, 10, 24, 20, 0),
        utc(2026, 10, 25, 4, 0),
    )
    assert by_duration.occurrence_at(utc(2026, 10, 25, 4, 0)) is None


def test_a_start_that_does_not_exist_on_the_spring_forward_day_begins_after_the_gap() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist; it is read as 02:30 CET = 01:30 UTC.
    w = window(recurrence="daily", start="02:30", duration="PT1H", timezone="Europe/Berlin")
    assert w.occurrence_at(utc(2026, 3, 29, 1, 30)) == (utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30))
    assert w.occurrence_at(utc(2026, 3, 29, 1, 29)) is None
    assert w.occurrence_at(utc(2026, 3, 30, 0, 30)) is not None  # the next day: 02:30 CEST


def test_a_weekly_window_is_open_on_its_days_only_in_its_zone() -> None:
    # Saturdays and Sundays 00:00-23:59 in New York (UTC-5 in December).
    w = window(
        recurrence="weekly", days=["sat", "sun"], start="00:00", end="23:59", timezone="America/New_York"
    )
    assert w.occurrence_at(utc(2026, 12, 5, 12, 0)) is not None  # Saturday
    assert w.occurrence_at(utc(2026, 12, 5, 4, 59)) is None  # Friday 23:59 in New York
    assert w.occurrence_at(utc(2026, 12, 5, 5, 0)) is not None  # Saturday 00:00 in New York
    assert w.occurrence_at(utc(2026, 12, 7, 12, 0)) is None  # Monday


def test_a_weekly_window_longer_than_a_day_is_open_the_day_after_it_starts() -> None:
    w = window(recurrence="weekly", days=["fri"], start="18:00", duration="P2D", timezone="UTC")
    assert w.occurrence_at(utc(2026, 12, 6, 10, 0)) == (utc(2026, 12, 4, 18, 0), utc(2026, 12, 6, 18, 0))
    assert w.occurrence_at(utc(2026, 12, 6, 18, 0)) is None


def test_a_once_window_is_open_between_its_local_start_and_end() -> None:
    w = window(start="2026-12-24T08:00", end="2026-12-26T20:00", timezone="Asia/Tokyo")
    assert w.occurrence_at(utc(2026, 12, 23, 23, 0)) is not None  # 08:00 in Tokyo
    assert w.occurrence_at(utc(2026, 12, 23, 22, 59)) is None
    assert w.occurrence_at(utc(2026, 12, 26, 11, 0)) is None  # 20:00 in Tokyo


def test_windows_match_on_dag_agent_and_labels_all_given_conditions() -> None:
    w = MaintenanceWindow.model_validate(
        {
            "name": "calc-upgrade",
            "match": {"dag_id": ["emissions-*"], "agent": ["calc"], "labels": {"namespace": "prod*"}},
            "start": "2026-12-06T00:00",
            "duration": 3600,
        }
    )
    labels = {"dag_id": "emissions-daily", "agent": "calc", "namespace": "prod-eu"}
    now = utc(2026, 12, 6, 0, 30)
    assert [found.name for found, _ in active_windows([w], labels, now)] == ["calc-upgrade"]
    for other in ({"agent": "other"}, {"dag_id": "billing"}, {"namespace": "staging"}, {"agent": ""}):
        assert active_windows([w], {**labels, **other}, now) == []
    assert active_windows([w], labels, utc(2026, 12, 6, 1, 0)) == []


POLICY_WITH_WINDOWS = """\
version: 1
rules:
  - name: agent
    when: {likely_cause: [agent_unresponsive]}
    playbook: restart_agent
maintenance:
  - name: nightly
    match: {dag_id: [emissions-*]}
    recurrence: daily
    start: "22:00"
    end: "06:00"
    timezone: Europe/Berlin
  - name: upgrade
    match: {agent: [calc]}
    start: "2026-12-24T08:00"
    duration: PT4H
    timezone: {zone}
"""


def test_the_policy_loads_its_maintenance_windows() -> None:
    policy = parse_policy_text(POLICY_WITH_WINDOWS.replace("{zone}", "UTC"))
    assert [w.name for w in policy.maintenance] == ["nightly", "upgrade"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            POLICY_WITH_WINDOWS.replace("{zone}", "Mars/Olympus"),
            "maintenance.1.timezone: unknown time zone 'Mars/Olympus' (an IANA name such as Europe/Berlin) "
            "[line 17, window 'upgrade']",
        ),
        (
            POLICY_WITH_WINDOWS.replace("{zone}", "UTC").replace(
                'end: "06:00"', 'end: "06:00"\n    duration: PT1H'
            ),
            "window 'nightly': give exactly one of end, duration [line 7, window 'nightly']",
        ),
        (
            POLICY_WITH_WINDOWS.replace("{zone}", "UTC").replace("recurrence: daily", "recurrence: weekly"),
            "window 'nightly': a weekly window needs days (mon..sun) [line 7, window 'nightly']",
        ),
        (
            POLICY_WITH_WINDOWS.replace("{zone}", "UTC").replace('start: "22:00"', 'start: "10pm"'),
            "window 'nightly': start '10pm' is not a time of day HH:MM [line 7, window 'nightly']",
        ),
        (
            POLICY_WITH_WINDOWS.replace("{zone}", "UTC").replace("match: {agent: [calc]}", "match: {}"),
            "maintenance.1.match: a maintenance window must match on at least one of dag_id, agent, labels "
            "[line 14, window 'upgrade']",
        ),
        (
            POLICY_WITH_WINDOWS.replace("{zone}", "UTC").replace("duration: PT4H", "duration: PT0S"),
            "maintenance.1.duration: duration must be positive [line 16, window 'upgrade']",
        ),
    ],
)
def test_a_bad_maintenance_window_is_refused_naming_its_line_and_window(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy_text(text, source="policy.yaml")
    assert expected in str(refused.value)


def test_the_recording_policy_has_no_windows_by_default() -> None:
    assert parse_policy(POLICY).maintenance == []
