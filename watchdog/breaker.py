"""The remediation circuit breaker's state, read from the store: failed remediations in its window.

Counted by `watchdog.limits` (one `remediation_failed` rate event per failed remediation, in the
transaction that escalates it) and read there before every remediation acts; read here too by the
scrape-time gauges (`IncidentService.refresh_gauges` → `gl_watchdog_circuit_breaker_open`), so every
replica reports the store's state, and the gauge falls back to 0 when the failures age out of the
window without anything else happening.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from watchdog.policy import CircuitBreaker
from watchdog.store import Tx

RATE_FAILED: Final = "remediation_failed"
GLOBAL_KEY: Final = "*"


async def failures_in(tx: Tx, breaker: CircuitBreaker, now: datetime) -> int:
    """Failed remediations counted within the breaker's window ending `now`."""
    since = now - timedelta(seconds=breaker.window_seconds)
    return await tx.count_rate_events(RATE_FAILED, GLOBAL_KEY, since)


def is_open(failures: int, breaker: CircuitBreaker) -> bool:
    """Whether `failures` in the window open the breaker (nothing acts until they age out)."""
    return failures >= breaker.failures
