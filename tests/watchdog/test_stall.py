"""The stall rule (`watchdog_sdk.stall.assess`), one branch per test: no history, short history, within
the threshold, the floor, slow but progressing, stalling with and without progress signals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gl_common.quantiles import DurationSketch
from watchdog_sdk.stall import StallReason, StallSettings, assess, format_seconds

SETTINGS = StallSettings(
    quantile=0.99, multiple=3.0, floor_seconds=300.0, min_history=20, no_progress_seconds=600.0
)


def history(seconds: list[float]) -> DurationSketch:
    sketch = DurationSketch()
    for value in seconds:
        sketch.add(value)
    return sketch


# 100 runs of a node that normally takes 10-19 minutes: p99 about 19 minutes, threshold about 57.
TEN_MINUTE_NODE = history([600.0 + 6 * i for i in range(100)])


def test_a_node_without_history_is_not_judged() -> None:
    verdict = assess(None, 10 * 3600, None, SETTINGS)
    assert not verdict.stalling
    assert verdict.reason is StallReason.NO_HISTORY
    assert verdict.threshold_seconds is None
    assert assess(DurationSketch(), 10 * 3600, None, SETTINGS).reason is StallReason.NO_HISTORY


def test_a_node_with_fewer_completed_runs_than_the_minimum_is_not_judged() -> None:
    verdict = assess(history([60.0] * 19), 10 * 3600, None, SETTINGS)
    assert not verdict.stalling
    assert verdict.reason is StallReason.SHORT_HISTORY
    assert "only 19 completed runs" in verdict.text
    assert assess(history([60.0] * 20), 10 * 3600, None, SETTINGS).stalling


def test_the_threshold_is_the_multiple_of_the_high_quantile() -> None:
    p99 = TEN_MINUTE_NODE.quantile(0.99)
    assert p99 is not None
    verdict = assess(TEN_MINUTE_NODE, 3 * p99 - 1, None, SETTINGS)
    assert not verdict.stalling
    assert verdict.reason is StallReason.WITHIN_THRESHOLD
    assert verdict.threshold_seconds == pytest.approx(3 * p99)
    assert assess(TEN_MINUTE_NODE, 3 * p99 + 1, None, SETTINGS).stalling


def test_a_short_node_is_not_stalling_before_the_floor() -> None:
    ten_second_node = history([10.0] * 50)
    quick_window = SETTINGS.model_copy(update={"no_progress_seconds": 60.0})
    verdict = assess(ten_second_node, 299.0, None, quick_window)
    assert not verdict.stalling
    assert verdict.reason is StallReason.WITHIN_THRESHOLD
    assert verdict.threshold_seconds == 300.0
    assert "the floor 5m 00s" in verdict.text
    assert assess(ten_second_node, 301.0, None, quick_window).stalling


def test_a_node_that_normally_takes_no_time_is_judged_against_the_floor() -> None:
    instant_node = history([0.0] * 30)  # durations under a millisecond count as zero
    verdict = assess(instant_node, 900.0, None, SETTINGS)
    assert verdict.stalling
    assert verdict.threshold_seconds == 300.0
    assert verdict.text.startswith("stalling: running 15m 00s (normally p50 0s, p99 0s)")


def test_a_node_over_the_threshold_that_reported_progress_within_the_window_is_slow_not_hung() -> None:
    verdict = assess(TEN_MINUTE_NODE, 5 * 3600, 599.0, SETTINGS)
    assert not verdict.stalling
    assert verdict.reason is StallReason.PROGRESSING
    assert "slow, not hung" in verdict.text


def test_a_node_over_the_threshold_whose_last_progress_is_older_than_the_window_is_stalling() -> None:
    verdict = assess(TEN_MINUTE_NODE, 5 * 3600, 601.0, SETTINGS)
    assert verdict.stalling
    assert verdict.reason is StallReason.STALLED
    assert "no progress for 10m 01s" in verdict.text


def test_a_node_that_never_reported_progress_counts_its_whole_run_as_without_progress() -> None:
    verdict = assess(TEN_MINUTE_NODE, 5 * 3600, None, SETTINGS)
    assert verdict.stalling
    assert "no progress reported" in verdict.text
    # Over a threshold shorter than the window, a silent node is stalling only once the window passed.
    short = StallSettings(floor_seconds=60.0, min_history=20, no_progress_seconds=600.0)
    waiting = assess(history([10.0] * 50), 300.0, None, short)
    assert waiting.reason is StallReason.PROGRESSING
    assert "no progress reported, but not yet for 10m 00s" in waiting.text
    assert assess(history([10.0] * 50), 601.0, None, short).stalling


def test_the_verdict_shows_the_normal_duration_next_to_the_current_one() -> None:
    verdict = assess(TEN_MINUTE_NODE, 2 * 3600, None, SETTINGS)
    p50, p99 = TEN_MINUTE_NODE.quantile(0.5), TEN_MINUTE_NODE.quantile(0.99)
    assert (verdict.normal_p50_seconds, verdict.normal_p99_seconds) == (p50, p99)
    assert verdict.history_count == 100
    assert verdict.elapsed_seconds == 7200.0
    assert f"normally p50 {format_seconds(p50)}, p99 {format_seconds(p99)}" in verdict.text
    assert "running 2h 00m" in verdict.text


def test_a_negative_elapsed_time_counts_as_zero() -> None:
    verdict = assess(TEN_MINUTE_NODE, -5.0, -1.0, SETTINGS)
    assert (verdict.elapsed_seconds, verdict.seconds_since_progress) == (0.0, 0.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_time_that_is_not_a_finite_number_is_refused_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="elapsed_seconds must be a finite number"):
        assess(TEN_MINUTE_NODE, bad, None, SETTINGS)
    with pytest.raises(ValueError, match="seconds_since_progress must be a finite number"):
        assess(TEN_MINUTE_NODE, 10.0, bad, SETTINGS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantile", 1.0),
        ("multiple", 0.5),
        ("floor_seconds", -1),
        ("min_history", 0),
        ("no_progress_seconds", 0),
    ],
)
def test_settings_outside_their_range_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        StallSettings.model_validate({field: value})


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.25, "0.25s"), (45, "45s"), (725, "12m 05s"), (7380, "2h 03m")]
)
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    durations=st.lists(st.floats(min_value=0, max_value=1e6), max_size=40),
    elapsed=st.floats(min_value=-10, max_value=1e7),
    since=st.none() | st.floats(min_value=-10, max_value=1e7),
    settings=st.builds(
        StallSettings,
        quantile=st.floats(min_value=0.5, max_value=0.999),
        multiple=st.floats(min_value=1, max_value=10),
        floor_seconds=st.floats(min_value=0, max_value=3600),
        min_history=st.integers(min_value=1, max_value=30),
        no_progress_seconds=st.floats(min_value=1, max_value=7200),
    ),
)
def test_any_node_is_stalling_exactly_when_over_the_threshold_and_quiet_for_the_window(
    durations: list[float], elapsed: float, since: float | None, settings: StallSettings
) -> None:
    sketch = history(durations) if durations else None
    verdict = assess(sketch, elapsed, since, settings)
    assert verdict.text
    if len(durations) < settings.min_history:
        assert not verdict.stalling
        assert verdict.threshold_seconds is None
        return
    assert sketch is not None
    high = sketch.quantile(settings.quantile)
    assert high is not None
    threshold = max(settings.floor_seconds, settings.multiple * high)
    quiet = max(0.0, elapsed if since is None else since)
    assert verdict.threshold_seconds == threshold
    assert verdict.stalling == (max(0.0, elapsed) > threshold and quiet >= settings.no_progress_seconds)
