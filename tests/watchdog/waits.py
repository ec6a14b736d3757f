"""The injected sleep of the rate-limit retries (`watchdog.rate_limit`), shared by the Slack bot and
webhook notifier tests: it records each wait instead of waiting."""

from __future__ import annotations


class Waits:
    """The injected sleep: records each wait instead of waiting."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
