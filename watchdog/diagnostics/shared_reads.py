"""Orchestrator-wide reads shared by the diagnoses that run at the same moment (a burst of alerts).

Where it sits: `watchdog.diagnostics.runner.diagnoser()` gives its steps an orchestrator client wrapped
in `SharedReads`. Steps 5 and 8 (and plugin steps) read the orchestrator's JSON metrics, and step 1
the oldest running runs over their timeout and the count of running runs: figures about the whole
orchestrator, the same for every run. Thirty diagnoses of a burst asked for them thirty times each,
in the same second, of an orchestrator that the burst keeps busy (issue 11: a burst of 30 alerts was
diagnosed with p95 3.6-4.7 s, the target is 2 s). Here one answer serves every diagnosis that asks
within `ttl_seconds` (one request in flight at a time per read: the others wait for its answer).

What a run's own reads return (`get_execution`, its trace, logs, checkpoints) is never shared. The
figures a diagnosis shows may thus be up to `ttl_seconds` old, which is well inside what a step
reads them for (is the orchestrator at its limits, do checkpoint saves fail).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, TypeVar

from watchdog_sdk.clients.orchestrator import (
    ExecutionPage,
    ExecutionQuery,
    OrchestratorClient,
    OrchestratorMetrics,
)

T = TypeVar("T")

SHARED_SECONDS: Final = 1.0


class SharedReads(OrchestratorClient):
    """`inner` (the same connection pool, base URL and timeout), with its orchestrator-wide reads
    shared for `ttl_seconds`. Closing it closes `inner`: close one of them only."""

    def __init__(
        self,
        inner: OrchestratorClient,
        *,
        ttl_seconds: float = SHARED_SECONDS,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.__dict__.update(inner.__dict__)  # the inner client's state, its HTTP client included
        self.ttl_seconds = ttl_seconds
        self._now = now
        self._answers: dict[Hashable, tuple[float, asyncio.Future[Any]]] = {}

    async def get_metrics(self) -> OrchestratorMetrics:
        return await self._shared("metrics", super().get_metrics)

    async def list_executions_page(
        self, query: ExecutionQuery, *, limit: int | None = None, cursor: str | None = None
    ) -> ExecutionPage:
        key = ("page", tuple(sorted((k, str(v)) for k, v in query.params().items())), limit, cursor)
        return await self._shared(
            key, lambda: super(SharedReads, self).list_executions_page(query, limit=limit, cursor=cursor)
        )

    async def _shared(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        while True:
            now = self._now()
            held = self._answers.get(key)
            if held is None or now - held[0] > self.ttl_seconds or _failed(held[1]):
                return await self._read(key, read, now)
            try:
                answer: T = await asyncio.shield(held[1])
            except _Abandoned:  # its reader was cancelled (its step timed out): read again
                continue
            return answer

    async def _read(self, key: Hashable, read: Callable[[], Awaitable[T]], now: float) -> T:
        """Read, and hand the answer (or the failure) to whoever asks meanwhile."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers = {k: v for k, v in self._answers.items() if now - v[0] <= self.ttl_seconds}
        self._answers[key] = (now, future)
        try:
            answer = await read()
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else _Abandoned())
            future.exception()  # retrieved: waiters get it, nobody else needs it logged
            raise
        future.set_result(answer)
        return answer


class _Abandoned(Exception):
    """The shared read was cancelled before it had an answer."""


def _failed(future: asyncio.Future[Any]) -> bool:
    """A read that failed is not shared: the next diagnosis asks again."""
    return future.done() and future.exception() is not None
