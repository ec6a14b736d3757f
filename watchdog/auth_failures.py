"""Unauthenticated failures: every one counted, but logged and audited at a bounded rate per source.

Where it sits: the watchdog's auth middleware (`watchdog.http`: a missing or wrong bearer token) and
the approval routes (`watchdog.web`: a missing, malformed or forged link token, or a link to a prompt
that does not exist) call `AuthFailures.refused(source, reason, detail)` for each refusal. The counter
(`gl_watchdog_auth_failures_total{reason}`, handed in by the composition root) sees all of them; a
log line, and for a forged token on a real prompt an audit row, is written only while the source's
token bucket (and a bucket shared by all sources) has a token left. So an anonymous client hammering
the API cannot fill the log or the audit table, while the first refusals of any source are on record
and the suppressed ones are summed up in the next line that is written.

Sources are the peer addresses of the requests; at most `max_sources` buckets are kept (the least
recently refused source is forgotten first), so many sources cannot exhaust memory either.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gl_common.clock import Clock

log = logging.getLogger(__name__)

DEFAULT_BURST: Final = 5
DEFAULT_PER_MINUTE: Final = 1.0  # refill of one source's bucket
DEFAULT_ALL_PER_MINUTE: Final = 60.0  # refill of the bucket shared by every source (burst: 60)
DEFAULT_MAX_SOURCES: Final = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0

    def take(self, now: float, capacity: float, per_second: float) -> bool:
        self.tokens = min(capacity, self.tokens + (now - self.at) * per_second)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AuthFailures:
    """Counts every refusal; says which ones may be logged and audited (a token bucket per source)."""

    def __init__(
        self,
        clock: Clock,
        count: Callable[[str], None] | None = None,
        *,
        burst: int = DEFAULT_BURST,
        per_minute: float = DEFAULT_PER_MINUTE,
        all_per_minute: float = DEFAULT_ALL_PER_MINUTE,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        self._clock = clock
        self._count = count
        self._burst = float(burst)
        self._rate = per_minute / 60.0
        self._all_capacity = all_per_minute
        self._all_rate = all_per_minute / 60.0
        self._max_sources = max_sources
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._all = _Bucket(all_per_minute, clock.monotonic())

    def refused(self, source: str, reason: str, detail: str) -> bool:
        """Count one refusal of `source`; log it and return True when it may be recorded (audited),
        False when it is over the rate and only counted."""
        if self._count is not None:
            self._count(reason)
        now = self._clock.monotonic()
        bucket = self._sources.pop(source, None) or _Bucket(self._burst, now)
        if len(self._sources) >= self._max_sources:
            self._sources.popitem(last=False)
        self._sources[source] = bucket
        allowed = bucket.take(now, self._burst, self._rate) and self._all.take(
            now, self._all_capacity, self._all_rate
        )
        if not allowed:
            bucket.suppressed += 1
            return False
        since = f" ({bucket.suppressed} more from this source not logged)" if bucket.suppressed else ""
        bucket.suppressed = 0
        log.warning("unauthenticated request refused from %s: %s: %s%s", source, reason, detail, since)
        return True
