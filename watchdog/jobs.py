"""The watchdog's background jobs: started with `spawn`, awaited on shutdown, never lost silently.

One `JobTracker` per watchdog, made by the composition root (`watchdog.assembly`) and shared by the
diagnosis jobs (`watchdog.diagnosis`) and the remediations that follow an approval decision
(`watchdog.responder`). `Watchdog.aclose()` closes it: running jobs get a grace period, then are
cancelled; what they did not finish is durable in the store and resumed by the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

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
