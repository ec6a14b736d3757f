"""The one clock of the distribution: wall time for timestamps, monotonic time for durations, sleep.

Where it sits: passed down from each service's composition root (`Engine.open`, the watchdog's app)
to everything that reads time, so tests inject a fake one and ten-minute windows run in milliseconds.
Nothing reads `datetime.now()` or `time.monotonic()` in the middle of logic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Protocol


class Clock(Protocol):
    """Wall clock for timestamps, monotonic clock for durations, and sleep."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


def utc_now() -> datetime:
    """The real wall clock: an aware UTC datetime."""
    return datetime.now(UTC)


class SystemClock:
    """The real clocks.

    `now` and `monotonic` are the C functions themselves (`datetime.now` bound to UTC, `time.monotonic`),
    not methods calling them: the engine reads them several times per node, and a Python frame per
    reading was a measurable share of a no-op node's cost."""

    now: Callable[[], datetime] = staticmethod(partial(datetime.now, UTC))
    monotonic: Callable[[], float] = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
