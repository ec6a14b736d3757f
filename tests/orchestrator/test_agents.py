"""Agent registry (entry points, restart), built-in agents, and the emissions demo DAG end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator_core.agents import AgentContext, AgentRegistry, make_error
from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from orchestrator_core.engine import Engine
from orchestrator_core.errors import AgentError, AgentNotFound, ConfigError, RetryableAgentError
from orchestrator_core.events import EngineObserver, LogEvent, RecordingObserver
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.settings import OrchestratorSettings
from tests.orchestrator.conftest import wait_until


def _ctx(agent_id: str, params: dict[str, Any] | None = None, attempt: int = 1) -> AgentContext:
    return AgentContext(
        execution_id="e",
        dag_id="d",
        node_id="n",
        agent_id=agent_id,
        attempt=attempt,
        params=params or {},
        input_data={"in": 1},
        upstream={"up": 2},
        deadline=None,
        observer=EngineObserver(),
        now=lambda: None,  # type: ignore[arg-type,return-value]
    )


def test_entry_points_provide_builtin_and_emissions_agents() -> None:
    ids = AgentRegistry.from_entry_points().ids()
    for agent_id in ("builtin.echo", "builtin.sleep", "builtin.hang", "builtin.fail", "builtin.flaky"):
        assert agent_id in ids
    for name in ("intake", "validation", "scope1", "scope2", "aggregation", "report"):
        assert f"emissions.{name}" in ids


def test_registries_are_independent_instances() -> None:
    one, two = AgentRegistry.from_entry_points(), AgentRegistry.from_entry_points()

    async def custom(ctx: AgentContext) -> Any:
        return 1

    one.register("custom.x", custom)
    assert "custom.x" in one and "custom.x" not in two
    with pytest.raises(ConfigError):
        one.register("custom.x", custom)
    with pytest.raises(AgentNotFound):
        two.restart("custom.x")


async def test_builtin_echo_and_flaky() -> None:
    registry = AgentRegistry.from_entry_points()
    echoed = await registry.invoke(_ctx("builtin.echo", {"p": 1}))
    assert echoed == {"params": {"p": 1}, "input_data": {"in": 1}, "upstream": {"up": 2}}
    with pytest.raises(RetryableAgentError):
        await registry.invoke(_ctx("builtin.flaky", {"failures": 2}, attempt=2))
    assert await registry.invoke(_ctx("builtin.flaky", {"failures": 2}, attempt=3)) == {"attempts": 3}


def test_builtin_fail_error_kinds() -> None:
    plain = make_error({"error": "nope"}, "default")
    assert type(plain) is AgentError and str(plain) == "nope"
    retryable = make_error({"error": "later", "retryable": True}, "default")
    assert isinstance(retryable, RetryableAgentError)
    typed = make_error({"error": "refused", "error_type": "ConnectionRefusedError", "retryable": True}, "d")
    assert isinstance(typed, ConnectionRefusedError) and isinstance(typed, RetryableAgentError)
    custom = make_error({"error_type": "ServiceUnavailable"}, "503")
    assert type(custom).__name__ == "ServiceUnavailable" and isinstance(custom, AgentError)


async def test_restart_resets_state_and_interrupts_running_attempts() -> None:
    registry = AgentRegistry()
    started = asyncio.Event()

    async def worker(ctx: AgentContext) -> Any:
        ctx.state["opened"] = ctx.state.get("opened", 0) + 1
        started.set()
        await asyncio.Event().wait()

    registry.register("w", worker)
    task = asyncio.create_task(registry.invoke(_ctx("w")))
    await started.wait()
    result = registry.restart("w")
    assert result.to_json()["interrupted_nodes"] == ["n"] and result.restarts == 1
    with pytest.raises(RetryableAgentError) as info:
        await task
    assert type(info.value).__name__ == "AgentRestarted"
    assert registry.describe() == [{"agent_id": "w", "kind": "inprocess", "restarts": 1, "running_nodes": []}]


async def test_cancelling_a_restarted_attempt_still_cancels() -> None:
    registry = AgentRegistry()
    started = asyncio.Event()

    async def worker(ctx: AgentContext) -> Any:
        started.set()
        await asyncio.Event().wait()

    registry.register("w", worker)
    task = asyncio.create_task(registry.invoke(_ctx("w")))
    await started.wait()
    task.cancel()
    registry.restart("w")
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture
async def emissions_engine(database_url: str) -> AsyncIterator[tuple[Engine, RecordingObserver]]:
    observer = RecordingObserver()
    engine = await Engine.open(OrchestratorSettings(database_url=database_url), observer=observer)
    try:
        yield engine, observer
    finally:
        await engine.close()


async def test_emissions_dag_computes_a_report(emissions_engine: tuple[Engine, RecordingObserver]) -> None:
    engine, _ = emissions_engine
    await engine.register_dag(emissions_dag(hang_scope2=False))
    record = await engine.execute("emissions-report", emissions_demo_input())
    async with asyncio.timeout(10):
        final = await engine.wait(record.execution_id)
    assert final.status == "completed", final.error
    assert final.timeout_seconds == 5.0
    trace = await engine.get_trace(record.execution_id)
    assert trace.topology_levels == [
        ["intake"],
        ["validation"],
        ["scope1", "scope2"],
        ["aggregation"],
        ["report"],
    ]
    report = next(c for c in await engine.list_checkpoints(record.execution_id) if c.node_id == "report")
    totals = report.output["totals"]
    # Berlin: 120000 m3 gas * 2.02 + 8000 l diesel * 2.68 = 263,840 kg; 2.4 GWh * 0.364 = 873,600 kg
    assert totals["by_facility"]["plant-berlin"] == {
        "scope1_t": 263.84,
        "scope2_t": 873.6,
        "total_t": 1137.44,
    }
    assert totals["total_t"] == round(totals["scope1_t"] + totals["scope2_t"], 3)
    assert "| plant-berlin |" in report.output["markdown"]


async def test_invalid_activity_data_fails_validation(
    emissions_engine: tuple[Engine, RecordingObserver],
) -> None:
    engine, _ = emissions_engine
    await engine.register_dag(emissions_dag(hang_scope2=False))
    data = emissions_demo_input()
    data["facilities"][0]["fuel"]["coal_t"] = 5
    record = await engine.execute("emissions-report", data)
    final = await engine.wait(record.execution_id)
    assert final.status == "failed"
    assert "unknown fuel 'coal_t'" in (final.error or "")


async def test_scope2_hangs_until_its_agent_worker_restarts(
    emissions_engine: tuple[Engine, RecordingObserver],
) -> None:
    engine, observer = emissions_engine
    await engine.register_dag(emissions_dag(hang_scope2=True, log_interval_seconds=0.02))
    record = await engine.execute("emissions-report", emissions_demo_input(), ExecutionOptions())
    executor = engine.executor(record.execution_id)
    assert executor is not None

    def waiting_lines() -> list[LogEvent]:
        return [
            e
            for e in observer.of_type(LogEvent)
            if e.node_id == "scope2"
            and "emission-factor-api GET /factors" in e.message
            and "still waiting" in e.message
        ]

    await wait_until(lambda: len(waiting_lines()) >= 2)
    # the run is stuck at the scope level: scope1 done, scope2 running, aggregation not started
    assert executor.states["scope1"].status == "completed"
    assert executor.states["scope2"].status == "running"
    assert executor.states["aggregation"].status == "pending"
    line = waiting_lines()[0]
    assert line.execution_id == record.execution_id and line.agent_id == "emissions.scope2"
    result = engine.registry.restart("emissions.scope2")
    assert result.interrupted_nodes == ["scope2"]
    async with asyncio.timeout(10):
        final = await engine.wait(record.execution_id)
    assert final.status == "completed"
    trace = await engine.get_trace(record.execution_id)
    assert trace.node_traces["scope2"].attempt_count == 2
    assert (await engine.get_provenance(record.execution_id)).chain_valid
