"""A call answered HTTP 429 is sent again after its `Retry-After`, a bounded number of times.

Where it sits: used by the two chat clients, `watchdog.slack_bot.SlackApi` (Slack's Web API) and the
incoming-webhook notifiers of `watchdog.notifier` (`post_json` with a `RateLimitRetry`). Slack's rate
limit (https://api.slack.com/apis/rate-limits) answers 429 with `Retry-After` in seconds: the call is
sent again after that wait, at most `retries` times and `max_wait_seconds` of waiting in all (a wait
that would go past that is not begun); then the last answer is the call's outcome, with a note saying
why it was not tried again. So a delivery takes at most (retries + 1) times its timeout, plus the
waits. The wait is injected (`sleep`) so tests run without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import httpx

RATE_LIMITED: Final = 429
RATE_LIMIT_RETRIES: Final = 2  # a rate-limited call is sent at most this many times more
RATE_LIMIT_WAIT_SECONDS: Final = 30.0  # and waits at most this long in all for them
DEFAULT_RETRY_AFTER_SECONDS: Final = 1.0  # a 429 without a usable Retry-After (Slack always sends one)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a 429 asks to wait (`Retry-After`, delta-seconds; the default when it is missing or
    not a number: the HTTP-date form is not Slack's); None when `response` is not a 429."""
    if response.status_code != RATE_LIMITED:
        return None
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECONDS


@dataclass(frozen=True)
class RateLimitRetry:
    """How often and how long a rate-limited call is tried again (see the module docstring)."""

    retries: int = RATE_LIMIT_RETRIES
    max_wait_seconds: float = RATE_LIMIT_WAIT_SECONDS
    sleep: Sleep = asyncio.sleep

    async def call(self, attempt: Callable[[], Awaitable[tuple[T, float | None]]]) -> tuple[T, str | None]:
        """Run `attempt` (its outcome and the wait a 429 asks for, None when not rate limited) until it
        is not rate limited or the bounds are reached: the last outcome, and why it was given up while
        still rate limited (None when it was not)."""
        outcome, wait = await attempt()
        tries, waited = 1, 0.0
        while wait is not None:
            if tries > self.retries:
                return outcome, f"rate limited; tried {tries} times"
            if waited + wait > self.max_wait_seconds:
                why = f"Retry-After {wait:g}s is past the {self.max_wait_seconds:g}s of waiting allowed"
                return outcome, f"rate limited; {why}"
            await self.sleep(wait)
            waited += wait
            outcome, wait = await attempt()
            tries += 1
        return outcome, None


DEFAULT_RATE_LIMIT: Final = RateLimitRetry()
