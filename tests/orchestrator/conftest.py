"""Fixtures of the orchestrator tests: an engine on a real store, recording agents, a fake clock; and
the service behind its API on loopback.

`harness` gives an `Engine` on the parametrized `database_url` (SQLite file and PostgreSQL), with the
built-in agents plus the recording test agents below, and a `RecordingObserver`. Tests drive runs
with tiny real delays or the `FakeClock` (retry/backoff sleeps return at once and are recorded).

`h` gives the real `OrchestratorService` behind its real aiohttp app on loopback
(`tests.orchestrator.service_harness`), with the built-in agents and the `test.gate` agent of
`gates`; a module overrides `service_settings` to serve with other settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator_core.agents import AgentContext, AgentRegistry, builtin_agents
from orchestrator_core.engine import Engine
from orchestrator_core.events import RecordingObserver
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.settings import OrchestratorSettings
from tests.orchestrator import service_harness


class FakeClock:
    """Real-ish timestamps, but `sleep` only records the delay and yields once."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._base = datetime(2026, 1, 1, tzinfo=UTC)
        self._start = time.monotonic()

    def now(self) -> datetime:
        return self._base + timedelta(seconds=time.monotonic() - self._start)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@dataclass
class Calls:
    """What the test agents saw, in call order."""

    entries: list[tuple[str, str, int]] = field(default_factory=list)  # (agent_id, node_id, attempt)
    running: int = 0
    peak: int = 0
    contexts: list[AgentContext] = field(default_factory=list)

    def nodes(self, agent_id: str | None = None) -> list[str]:
        return [n for a, n, _ in self.entries if agent_id is None or a == agent_id]

    def count(self, node_id: str) -> int:
        return sum(1 for _, n, _ in self.entries if n == node_id)


def make_registry(calls: Calls) -> AgentRegistry:
    registry = AgentRegistry()
    for agent_id, fn in builtin_agents():
        registry.register(agent_id, fn)

    async def record(ctx: AgentContext) -> Any:
        calls.entries.append((ctx.agent_id, ctx.node_id, ctx.attempt))
        calls.contexts.append(ctx)
        calls.running += 1
        calls.peak = max(calls.peak, calls.running)
        try:
            seconds = float(ctx.params.get("seconds", 0))
            if seconds:
                await asyncio.sleep(seconds)
            else:
                await asyncio.sleep(0)
        finally:
            calls.running -= 1
        return {"node": ctx.node_id, "upstream": sorted(ctx.upstream), "value": ctx.params.get("value")}

    async def compensate(ctx: AgentContext) -> Any:
        calls.entries.append((ctx.agent_id, ctx.node_id, ctx.attempt))
        return {"compensated": ctx.node_id, "output": ctx.node_output}

    async def gate(ctx: AgentContext) -> Any:
        """Records, then (on the node's first `block_calls` calls, across runs) waits on
        `ctx.state['release']` (an Event) until released, cancelled or restarted."""
        calls.entries.append((ctx.agent_id, ctx.node_id, ctx.attempt))
        calls.contexts.append(ctx)
        if calls.count(ctx.node_id) <= ctx.params.get("block_calls", 1):
            event = ctx.state.setdefault("release", asyncio.Event())
            await event.wait()
        return {"node": ctx.node_id, "attempt": ctx.attempt}

    registry.register("test.record", record)
    registry.register("test.compensate", compensate)
    registry.register("test.gate", gate)
    return registry


@dataclass
class Harness:
    engine: Engine
    observer: RecordingObserver
    calls: Calls
    clock: FakeClock
    database_url: str

    async def run(self, dag: dict[str, Any], input_data: Any = None, **options: Any) -> Any:
        """Register `dag`, execute it, wait for the end (bounded), return the final record."""
        await self.engine.register_dag(dag)
        record = await self.engine.execute(dag["dag_id"], input_data, ExecutionOptions(**options))
        async with asyncio.timeout(20):
            return await self.engine.wait(record.execution_id)

    async def trace(self, execution_id: str) -> dict[str, Any]:
        return (await self.engine.get_trace(execution_id)).to_json()["node_traces"]  # type: ignore[no-any-return]


def node(agent: str = "test.record", deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A node of a DAG document."""
    return {"agent_id": agent, "depends_on": list(deps), **extra}


# a, then b and a gate (blocks on its first call ever) beside it, then c after both.
RESUMABLE_DAG = {
    "dag_id": "resumable",
    "nodes": {
        "a": node(params={"value": 1}),
        "b": node(deps=("a",), params={"value": 2}),
        "gate": node("test.gate", deps=("a",)),
        "c": node(deps=("b", "gate")),
    },
}


async def cancel_at_gate(harness: Harness) -> str:
    """Run `RESUMABLE_DAG` until b is done and the gate holds, cancel it; the execution id."""
    await harness.engine.register_dag(RESUMABLE_DAG)
    record = await harness.engine.execute("resumable", {"year": 2025})
    await wait_until(lambda: harness.calls.count("gate") == 1)
    executor = harness.engine.executor(record.execution_id)
    assert executor is not None
    await wait_until(lambda: executor.states["b"].status == "completed")
    await harness.engine.cancel(record.execution_id)
    return record.execution_id


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    """Poll `predicate()` (sync) each loop turn until true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    calls = Calls()
    clock = FakeClock()
    observer = RecordingObserver()
    settings = OrchestratorSettings(
        database_url=database_url,
        max_parallel_nodes=10,
        checkpoint_retry_base_delay=0.01,
        checkpoint_retry_max_delay=0.05,
        db_timeout_seconds=5,
    )
    engine = await Engine.open(settings, registry=make_registry(calls), observer=observer, clock=clock)
    try:
        yield Harness(engine, observer, calls, clock, database_url)
    finally:
        await engine.close()


# -- the service on loopback --------------------------------------------------------------------------


@pytest.fixture
def gates() -> service_harness.Gates:
    """The served `test.gate` agent: each attempt waits until the test opens its gate."""
    return service_harness.Gates()


@pytest.fixture
def service_settings(sqlite_url: str) -> OrchestratorSettings:
    """The settings `h` serves with (a module overrides this fixture for others)."""
    return service_harness.make_settings(sqlite_url)


@pytest.fixture
async def h(
    _no_pending_tasks: None, service_settings: OrchestratorSettings, gates: service_harness.Gates
) -> AsyncIterator[service_harness.Harness]:
    """The real service behind its real API on loopback, with the built-in agents and `test.gate`."""
    registry = service_harness.make_registry(gates)
    async with service_harness.running_service(service_settings, registry=registry) as harness:
        yield harness
