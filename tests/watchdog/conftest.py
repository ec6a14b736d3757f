"""Fixtures of the watchdog tests: clients against real services, a settable clock.

Owned by the clients/diagnostics engineer; the intake engineer may append fixtures below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from watchdog.clients.redis import RedisClient


class FakeClock:
    """A settable UTC clock for injected-time code: `clock()` returns now, `advance()` moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisClient]:
    client = RedisClient(redis_url, timeout=2.0, clock=clock)
    yield client
    await client.aclose()
