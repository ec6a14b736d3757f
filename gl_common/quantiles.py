"""A cheap, mergeable streaming estimate of duration quantiles with a bounded relative error.

Where it sits: the history that stall detection reads (`watchdog_sdk.stall.assess`). The orchestrator
keeps one sketch per (dag, node, agent) of its completed nodes' durations (`orchestrator_core.node_history`,
stored as `to_json`) and serves its p50, p95 and p99 as a node's `normal_duration`, which the watchdog's
sweep and diagnosis judge with (docs/architecture.md, "Stuck-run signals" and "Stall detection").
`bench/detection.py` builds them from a simulated history. Imports nothing of ours.

The estimate is DDSketch's (Masson, Rim and Lee, VLDB 2019): a duration `x` is counted in the bucket
`i = ceil(log_gamma(x))`, `gamma = (1 + a) / (1 - a)`, so bucket `i` holds `(gamma^(i-1), gamma^i]`
and its representative `2 gamma^i / (gamma + 1)` is within a relative error `a` of every value in it.
`quantile(q)` returns the representative of the bucket holding the value of rank `floor(q (n - 1))`
(the lower q-quantile of the values added), so it is within `a` of that value, however many values
were added and in whatever order, and two sketches merge by adding their counts. Durations under
`MIN_SECONDS` are counted as zero (an absolute error under a millisecond).

The buckets are one dense run of at most `max_bins` counters: when a new bucket would stretch the run
past that, the lowest buckets are collapsed into one (DDSketch's "collapsing lowest" store). Only the
smallest values lose their bound, and only when the durations span more than `gamma^max_bins`
(about 27,000x at the defaults); the high quantiles that stall detection reads keep it. The JSON form
is the run of counters and a few numbers: a few hundred bytes for a node's history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_RELATIVE_ACCURACY = 0.02
DEFAULT_MAX_BINS = 256
MIN_SECONDS = 1e-3  # durations below this are counted as zero
WIRE_VERSION = 1
# The buckets of a JSON document must stand for durations a float can hold: |log(value)| under this.
MAX_LOG_SECONDS = 700.0


class _Wire(BaseModel):
    """The JSON form of a sketch (validated on the way in; each problem names its field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(description="format version")
    alpha: float = Field(gt=0, lt=1, description="relative accuracy")
    max_bins: int = Field(ge=2, le=100_000)
    n: int = Field(ge=0, description="values added")
    zeros: int = Field(ge=0, description="values under MIN_SECONDS")
    offset: int = Field(description="bucket index of bins[0]")
    bins: list[int] = Field(description="counts of consecutive buckets from `offset`")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.v != WIRE_VERSION:
            raise ValueError(f"v: unknown sketch format version {self.v} (this code reads {WIRE_VERSION})")
        if len(self.bins) > self.max_bins:
            raise ValueError(f"bins: {len(self.bins)} buckets, more than max_bins {self.max_bins}")
        log_gamma = math.log((1 + self.alpha) / (1 - self.alpha))
        if max(abs(self.offset), abs(self.offset + len(self.bins))) * log_gamma > MAX_LOG_SECONDS:
            raise ValueError(f"offset: bucket {self.offset} stands for no duration a float can hold")
        if any(c < 0 for c in self.bins):
            raise ValueError("bins: a bucket count is negative")
        if self.n != self.zeros + sum(self.bins):
            raise ValueError(f"n: {self.n} is not zeros + sum(bins) = {self.zeros + sum(self.bins)}")
        return self


class DurationSketch:
    """Quantiles of durations in seconds, within `relative_accuracy` (see the module docstring)."""

    __slots__ = ("_bins", "_gamma", "_log_gamma", "_max_bins", "_offset", "_zeros", "relative_accuracy")

    def __init__(
        self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY, max_bins: int = DEFAULT_MAX_BINS
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), not {relative_accuracy}")
        if max_bins < 2:
            raise ValueError(f"max_bins must be at least 2, not {max_bins}")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._max_bins = max_bins
        self._zeros = 0
        self._offset = 0  # bucket index of _bins[0]
        self._bins: list[int] = []

    @property
    def count(self) -> int:
        """How many durations were added (merged sketches included)."""
        return self._zeros + sum(self._bins)

    @property
    def max_bins(self) -> int:
        return self._max_bins

    def add(self, seconds: float) -> None:
        """Count one duration (seconds, finite and not negative)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a duration must be a finite number of seconds >= 0, not {seconds!r}")
        if seconds < MIN_SECONDS:
            self._zeros += 1
            return
        self._add_at(math.ceil(math.log(seconds) / self._log_gamma), 1)

    def quantile(self, q: float) -> float | None:
        """The lower q-quantile of the durations added, within the relative accuracy; None if empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile must be in [0, 1], not {q!r}")
        total = self.count
        if total == 0:
            return None
        rank = math.floor(q * (total - 1))
        if rank < self._zeros:
            return 0.0
        seen = self._zeros
        for position, bucket_count in enumerate(self._bins):
            seen += bucket_count
            if seen > rank:
                return self._value_of(self._offset + position)
        raise AssertionError("unreachable: the ranks are counted")  # pragma: no cover

    def merge(self, other: DurationSketch) -> None:
        """Add another sketch's durations to this one (same relative accuracy)."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge sketches of relative accuracy {other.relative_accuracy} "
                f"into {self.relative_accuracy}"
            )
        zeros, offset, bins = other._zeros, other._offset, list(other._bins)  # `other` may be `self`
        self._zeros += zeros
        for position, bucket_count in enumerate(bins):
            if bucket_count:
                self._add_at(offset + position, bucket_count)

    def to_dict(self) -> dict[str, Any]:
        """The sketch as a JSON-able mapping (to embed in a larger document); see `to_json`."""
        return _Wire(
            v=WIRE_VERSION,
            alpha=self.relative_accuracy,
            max_bins=self._max_bins,
            n=self.count,
            zeros=self._zeros,
            offset=self._offset,
            bins=self._bins,
        ).model_dump()

    def to_json(self) -> str:
        """A compact JSON document: `from_json(s.to_json())` answers every quantile as `s` does."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> DurationSketch:
        """Read `to_dict`'s mapping back; a malformed one raises ValueError naming the problem."""
        return cls._from_wire(_Wire.model_validate(document))  # pydantic's ValidationError is a ValueError

    @classmethod
    def from_json(cls, text: str | bytes) -> DurationSketch:
        """Read `to_json`'s document back; a malformed one raises ValueError naming the problem."""
        return cls._from_wire(_Wire.model_validate_json(text))

    @classmethod
    def _from_wire(cls, wire: _Wire) -> DurationSketch:
        sketch = cls(wire.alpha, wire.max_bins)
        sketch._zeros = wire.zeros
        # Leading and trailing empty buckets carry nothing: keep the run tight, as `add` does.
        first = next((i for i, c in enumerate(wire.bins) if c), None)
        if first is not None:
            last = max(i for i, c in enumerate(wire.bins) if c)
            sketch._offset = wire.offset + first
            sketch._bins = list(wire.bins[first : last + 1])
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DurationSketch):
            return NotImplemented
        return (
            self.relative_accuracy == other.relative_accuracy
            and self._max_bins == other._max_bins
            and self._zeros == other._zeros
            and self._offset == other._offset
            and self._bins == other._bins
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"DurationSketch(count={self.count}, relative_accuracy={self.relative_accuracy})"

    # -- the dense run of buckets ----------------------------------------------------------------------

    def _value_of(self, index: int) -> float:
        return 2 * self._gamma**index / (self._gamma + 1)

    def _add_at(self, index: int, weight: int) -> None:
        if not self._bins:
            self._offset, self._bins = index, [weight]
            return
        top = self._offset + len(self._bins) - 1
        if index > top:
            self._bins.extend([0] * (index - top))
            self._bins[-1] += weight
            self._collapse_lowest()
        elif index >= self._offset:
            self._bins[index - self._offset] += weight
        else:  # below the run: stretch it down as far as allowed, the rest counts in the lowest bucket
            low = max(index, top - self._max_bins + 1)
            self._bins[:0] = [0] * (self._offset - low)
            self._offset = low
            self._bins[0] += weight

    def _collapse_lowest(self) -> None:
        excess = len(self._bins) - self._max_bins
        if excess <= 0:
            return
        lowest = sum(self._bins[: excess + 1])
        del self._bins[:excess]
        self._bins[0] = lowest
        self._offset += excess
