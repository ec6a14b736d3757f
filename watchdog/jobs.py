"""The watchdog's background jobs: started with `spawn`, awaited on shutdown, never lost silently.

One `JobTracker` per watchdog, made by the composition root (`watchdog.assembly`) and shared by the
diagnosis jobs (`watchdog.diagnosis`), the remediations that follow an approval decision
(`watchdog.responder`) and the retries the reconciler starts (`watchdog.reconciler`).
`Watchdog.aclose()` closes it: running jobs get a grace period, then are cancelled; what they did not
finish is durable in the store and resumed by the next start (or taken back by the reconciler).

`retried` runs one write of a job again after a short pause when the store is out of reach for a
moment (a pool timeout, a dropped connection), so a job's outcome is not lost to a blip; what still
fails is raised for the job to report.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

T = TypeVar("T")

# The pauses between the attempts of one write (four attempts, 3.5 s of waiting at most).
SAVE_RETRY_DELAYS: Final = (0.5, 1.0, 2.0)

log = logging.getLogger(__name__)


class JobTracker:
    """Background jobs of the service: started with `spawn`, awaited by `wait_idle` and `aclose`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any] | None:
        """Run `coro` in the background; its failure is logged, never lost silently.

        Once shutdown has begun nothing new starts (None is returned): the work is durable in the
        store and is resumed by the next start (`DiagnosisService.resume`,
        `RemediationService.resume_interrupted`).
        """
        if self._closing:
            coro.close()
            log.info("not starting %s: shutting down (it resumes on the next start)", name)
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Wait until no job runs (jobs started by jobs included); bound it with `asyncio.timeout`."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Wait up to `grace_seconds` for running jobs, then cancel the rest and wait for them."""
        self._closing = True
        try:
            async with asyncio.timeout(grace_seconds):
                await self.wait_idle()
        except TimeoutError:
            late = list(self._tasks)
            log.warning("cancelling %d background job(s) still running at shutdown", len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def exponential_backoff(first_seconds: float, *, cap_factor: int = 8) -> Callable[[int], float]:
    """Seconds before the retry that follows the n-th failed attempt: `first_seconds`, doubled each
    time, at most `cap_factor` times the first."""

    def delay(attempt: int) -> float:
        return float(first_seconds * min(2 ** max(attempt - 1, 0), cap_factor))

    return delay


async def retried(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], Awaitable[None]],
    delays: Sequence[float] = SAVE_RETRY_DELAYS,
) -> T:
    """`operation()`, tried again after each of `delays` while it raises one of `retry_on`; the last
    failure is raised."""
    for delay in delays:
        try:
            return await operation()
        except retry_on as exc:
            log.warning("%s failed (%s); trying again in %gs", what, exc, delay)
        await sleep(delay)
    return await operation()
