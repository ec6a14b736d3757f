"""Orchestrator-wide reads shared by the diagnoses that run at the same moment (a burst of alerts).

Where it sits: `watchdog.diagnostics.runner.diagnoser()` gives its steps an orchestrator client wrapped
in `SharedReads`. Steps 5 and 8 (and plugin steps) read the orchestrator's JSON metrics, and step 1
the oldest running runs over their timeout and the count of running runs: figures about the whole
orchestrator, the same for every run. Thirty diagnoses of a burst asked for them thirty times each,
in the same second, of an orchestrator that the burst keeps busy (issue 11: a burst of 30 alerts was
diagnosed with p95 3.6-4.7 s, the target is 2 s). Here one answer serves every diagnosis that asks
within `ttl_seconds` (one request in flight at a time per read: the others wait for its answer).

The agents (`list_agents`) and a DAG's definition (`get_dag`) are shared the same way: the same for
every run of a burst (issue 11: with `get_logs` below, a diagnosis sends 6 requests of its own
instead of 9).

What a run's own reads return (`get_execution`, its trace, logs, checkpoints) is never reused once
answered. Only the same read of a run made twice at once (steps 7 and 8 both read its last 500 log
lines, concurrently) is sent once, both steps getting its answer. The figures a diagnosis shows may
thus be up to `ttl_seconds` old, which is well inside what a step reads them for (is the
orchestrator at its limits, do checkpoint saves fail, is the agent known, the node's timeout).
Answers are shared objects: steps read them and never change them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, TypeVar

from watchdog_sdk.clients.orchestrator import (
    AgentInfo,
    ExecutionPage,
    ExecutionQuery,
    LogLine,
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
        # key -> (asked at, seconds its answer is shared after, the answer)
        self._answers: dict[Hashable, tuple[float, float, asyncio.Future[Any]]] = {}

    async def get_metrics(self) -> OrchestratorMetrics:
        return await self._shared("metrics", super().get_metrics)

    async def list_executions_page(
        self, query: ExecutionQuery, *, limit: int | None = None, cursor: str | None = None
    ) -> ExecutionPage:
        key = ("page", tuple(sorted((k, str(v)) for k, v in query.params().items())), limit, cursor)
        return await self._shared(
            key, lambda: super(SharedReads, self).list_executions_page(query, limit=limit, cursor=cursor)
        )

    async def list_agents(self) -> list[AgentInfo]:
        return await self._shared("agents", super().list_agents)

    async def get_dag(self, dag_id: str) -> dict[str, Any]:
        return await self._shared(("dag", dag_id), lambda: super(SharedReads, self).get_dag(dag_id))

    async def get_logs(
        self, execution_id: str, node_id: str | None = None, limit: int = 200
    ) -> list[LogLine]:
        return await self._shared(
            ("logs", execution_id, node_id, limit),
            lambda: super(SharedReads, self).get_logs(execution_id, node_id, limit),
            ttl=0.0,  # a run's own read: shared only while in flight
        )

    async def _shared(
        self, key: Hashable, read: Callable[[], Awaitable[T]], *, ttl: float | None = None
    ) -> T:
        """`read()`'s answer, or the answer of the same read asked less than `ttl` (default
        `ttl_seconds`) ago or still in flight."""
        ttl = self.ttl_seconds if ttl is None else ttl
        while True:
            now = self._now()
            held = self._answers.get(key)
            if held is None or not _usable(held, now):
                return await self._read(key, read, now, ttl)
            try:
                answer: T = await asyncio.shield(held[2])
            except _Abandoned:  # its reader was cancelled (its step timed out): read again
                continue
            return answer

    async def _read(self, key: Hashable, read: Callable[[], Awaitable[T]], now: float, ttl: float) -> T:
        """Read, and hand the answer (or the failure) to whoever asks meanwhile."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers = {k: v for k, v in self._answers.items() if _usable(v, now)}
        self._answers[key] = (now, ttl, future)
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


def _usable(held: tuple[float, float, asyncio.Future[Any]], now: float) -> bool:
    """A read still in flight, or answered (not failed: the next diagnosis asks again) within its ttl
    (none when 0: shared only while in flight)."""
    at, ttl, future = held
    if not future.done():
        return True
    return ttl > 0 and now - at <= ttl and future.exception() is None
