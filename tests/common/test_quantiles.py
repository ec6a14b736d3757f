"""The duration sketch (`gl_common.quantiles`): its relative-error bound against exact quantiles
(hypothesis), merging, collapsing the lowest buckets, the JSON round trip and what it refuses."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gl_common.quantiles import DurationSketch

ALPHA = 0.02
durations = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False)
quantiles = st.floats(min_value=0.0, max_value=1.0)


def exact_quantile(values: list[float], q: float) -> float:
    """The lower q-quantile: the value of rank floor(q (n - 1)), the one the sketch promises."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def sketch_of(values: list[float], **kwargs: float) -> DurationSketch:
    sketch = DurationSketch(**kwargs)  # type: ignore[arg-type]
    for value in values:
        sketch.add(value)
    return sketch


def within(estimate: float | None, exact: float, alpha: float) -> bool:
    assert estimate is not None
    return abs(estimate - exact) <= alpha * exact * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(durations, min_size=1, max_size=400), qs=st.lists(quantiles, min_size=1, max_size=8))
def test_every_quantile_is_within_the_relative_accuracy_of_the_exact_one(
    values: list[float], qs: list[float]
) -> None:
    sketch = sketch_of(values, relative_accuracy=ALPHA, max_bins=100_000)
    for q in [*qs, 0.0, 0.5, 0.99, 1.0]:
        assert within(sketch.quantile(q), exact_quantile(values, q), ALPHA), q


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(durations, min_size=1, max_size=300),
    q=quantiles,
    max_bins=st.integers(min_value=2, max_value=40),
)
def test_collapsing_the_lowest_buckets_keeps_the_bound_for_the_values_near_the_top(
    values: list[float], q: float, max_bins: int
) -> None:
    sketch = sketch_of(values, relative_accuracy=ALPHA, max_bins=max_bins)
    gamma = (1 + ALPHA) / (1 - ALPHA)
    exact = exact_quantile(values, q)
    if exact >= max(values) * gamma ** -(max_bins - 2):
        assert within(sketch.quantile(q), exact, ALPHA)
    assert len(json.loads(sketch.to_json())["bins"]) <= max_bins


@settings(max_examples=200, deadline=None)
@given(
    left=st.lists(durations, max_size=200),
    right=st.lists(durations, max_size=200),
    max_bins=st.sampled_from([8, 256, 100_000]),
)
def test_merging_two_sketches_equals_sketching_all_their_durations(
    left: list[float], right: list[float], max_bins: int
) -> None:
    merged = sketch_of(left, max_bins=max_bins)
    merged.merge(sketch_of(right, max_bins=max_bins))
    assert merged == sketch_of(left + right, max_bins=max_bins)
    assert merged.count == len(left) + len(right)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(durations, st.just(0.0)), max_size=300))
def test_the_json_round_trip_answers_every_quantile_the_same(values: list[float]) -> None:
    sketch = sketch_of(values, max_bins=64)
    back = DurationSketch.from_json(sketch.to_json())
    assert back == sketch
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
        assert back.quantile(q) == sketch.quantile(q)


def test_a_sketch_embedded_as_a_mapping_reads_back_equal() -> None:
    sketch = sketch_of([0.0, 0.5, 12.0, 12.5, 3600.0])
    document = json.loads(json.dumps({"history": sketch.to_dict()}))
    assert DurationSketch.from_dict(document["history"]) == sketch


def test_a_sketch_merged_into_itself_counts_everything_twice() -> None:
    values = [0.0, 1.0, 2.0, 2.0, 30.0]
    sketch = sketch_of(values)
    sketch.merge(sketch)
    assert sketch == sketch_of(values + values)


def test_a_year_of_heavy_tailed_durations_stays_a_few_hundred_bytes() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(300), 0.8) * rng.paretovariate(2.5) for _ in range(50_000)]
    sketch = sketch_of(values)
    assert len(sketch.to_json()) < 1_000
    for q in (0.5, 0.9, 0.99):
        assert within(sketch.quantile(q), exact_quantile(values, q), ALPHA)


def test_an_empty_sketch_has_no_quantile() -> None:
    assert DurationSketch().quantile(0.99) is None
    assert DurationSketch().count == 0


def test_durations_under_a_millisecond_count_as_zero() -> None:
    sketch = sketch_of([0.0, 0.0004, 5.0])
    assert sketch.count == 3
    assert sketch.quantile(0.5) == 0.0
    assert within(sketch.quantile(1.0), 5.0, ALPHA)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_a_negative_or_non_finite_duration_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        DurationSketch().add(bad)


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_a_quantile_outside_zero_to_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]"):
        sketch_of([1.0]).quantile(q)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"relative_accuracy": 0.0}, "relative_accuracy"),
        ({"relative_accuracy": 1.0}, "relative_accuracy"),
        ({"max_bins": 1}, "max_bins"),
    ],
)
def test_a_sketch_without_a_usable_accuracy_or_size_is_refused(
    kwargs: dict[str, float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        DurationSketch(**kwargs)  # type: ignore[arg-type]


def test_sketches_of_different_accuracies_do_not_merge() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        DurationSketch(relative_accuracy=0.02).merge(DurationSketch(relative_accuracy=0.01))


def good_document() -> dict[str, object]:
    return json.loads(sketch_of([1.0, 2.0, 2.0, 30.0]).to_json())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"v": 2}, "unknown sketch format version"),
        ({"n": 5}, "is not zeros"),
        ({"bins": [1, -1]}, "negative"),
        ({"zeros": -1}, "zeros"),
        ({"alpha": 1.5}, "alpha"),
        ({"max_bins": 2, "bins": [1, 1, 1], "n": 3, "zeros": 0}, "more than max_bins"),
        ({"offset": 10**9}, "no duration a float can hold"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_document_is_refused_naming_the_problem(change: dict[str, object], problem: str) -> None:
    document = good_document() | change
    with pytest.raises(ValueError, match=problem):
        DurationSketch.from_json(json.dumps(document))


def test_a_malformed_mapping_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="bins"):
        DurationSketch.from_dict(good_document() | {"bins": "many"})


def test_a_document_that_is_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid JSON"):
        DurationSketch.from_json("{not json")
