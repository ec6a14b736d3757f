"""A separate engine process for the crash-safety and deterministic-replay tests.

Usage (from the repository root):
  python -m tests.orchestrator.engine_worker run DATABASE_URL EXECUTION_ID EFFECTS_FILE [--hang]
      runs the "crashy" DAG; with --hang the node `stuck` never returns (the test SIGKILLs us)
  python -m tests.orchestrator.engine_worker resume DATABASE_URL EXECUTION_ID EFFECTS_FILE
      takes the orphaned run over, resumes it, prints a JSON summary
  python -m tests.orchestrator.engine_worker replay DATABASE_URL EXECUTION_ID
      runs the "replay" DAG in deterministic mode, prints node order, hashes and provenance as JSON

Side effects (one line per agent call) are appended with fsync, so a SIGKILL cannot lose them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from orchestrator_core.agents import AgentContext, AgentRegistry
from orchestrator_core.engine import Engine
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.settings import OrchestratorSettings

CRASHY = {
    "dag_id": "crashy",
    "nodes": {
        "a": {"agent_id": "test.effect"},
        **{f"b{i}": {"agent_id": "test.effect", "depends_on": ["a"]} for i in range(1, 5)},
        "stuck": {"agent_id": "test.maybe_hang", "depends_on": ["b1", "b2", "b3", "b4"]},
        "c": {"agent_id": "test.effect", "depends_on": ["stuck"]},
    },
}

REPLAY = {
    "dag_id": "replay",
    "max_parallel_nodes": 2,
    "nodes": {
        "intake": {"agent_id": "builtin.echo", "params": {"source": "erp", "tags": ["b", "a"]}},
        "left": {"agent_id": "test.compute", "depends_on": ["intake"], "params": {"factor": 3}},
        "middle": {"agent_id": "test.compute", "depends_on": ["intake"], "params": {"factor": 5}},
        "right": {
            "agent_id": "builtin.flaky",
            "depends_on": ["intake"],
            "params": {"failures": 2},
            "retry_policy": {"max_retries": 2, "base_delay": 0.001, "max_delay": 0.01, "jitter": True},
        },
        "join": {"agent_id": "builtin.echo", "depends_on": ["left", "middle", "right"]},
    },
}


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _registry(effects: str | None, hang: bool) -> AgentRegistry:
    registry = AgentRegistry.from_entry_points()

    async def effect(ctx: AgentContext) -> Any:
        assert effects is not None
        _append(effects, ctx.node_id)
        return {"node": ctx.node_id, "pid_independent": True}

    async def maybe_hang(ctx: AgentContext) -> Any:
        assert effects is not None
        _append(effects, ctx.node_id)
        if hang:
            await asyncio.Event().wait()
        return {"node": ctx.node_id}

    async def compute(ctx: AgentContext) -> Any:
        values = {name: len(json.dumps(out, sort_keys=True)) for name, out in ctx.upstream.items()}
        return {"score": sum(values.values()) * int(ctx.params["factor"]), "seen": sorted(values)}

    registry.register("test.effect", effect)
    registry.register("test.maybe_hang", maybe_hang)
    registry.register("test.compute", compute)
    return registry


async def _engine(url: str, effects: str | None, hang: bool) -> Engine:
    settings = OrchestratorSettings(database_url=url, replica_id=f"worker-{os.getpid()}")
    return await Engine.open(settings, registry=_registry(effects, hang))


async def run(url: str, execution_id: str, effects: str, hang: bool) -> None:
    engine = await _engine(url, effects, hang)
    await engine.register_dag(CRASHY)
    await engine.execute("crashy", {"batch": 7}, execution_id=execution_id)
    await engine.wait(execution_id)
    await engine.close()


async def resume(url: str, execution_id: str, effects: str) -> None:
    engine = await _engine(url, effects, False)
    try:
        result = await engine.resume(execution_id, takeover=True)
        async with asyncio.timeout(60):
            final = await engine.wait(execution_id)
        report = await engine.get_provenance(execution_id)
        summary = {
            **result.to_json(),
            "final_status": final.status,
            "chain_valid": report.chain_valid,
            "problems": report.problems,
            "chain_nodes": [entry.node_id for entry in report.chain],
        }
        print(json.dumps(summary))
    finally:
        await engine.close()


async def replay(url: str, execution_id: str) -> None:
    engine = await _engine(url, None, False)
    try:
        await engine.register_dag(REPLAY)
        options = ExecutionOptions(deterministic_mode=True, checkpoint_enabled=True)
        await engine.execute(
            "replay", {"year": 2025, "sites": {"z": 1, "a": 2}}, options, execution_id=execution_id
        )
        executor = engine.executor(execution_id)
        assert executor is not None
        async with asyncio.timeout(60):
            final = await engine.wait(execution_id)
        trace = await engine.get_trace(execution_id)
        checkpoints = await engine.list_checkpoints(execution_id)
        report = await engine.get_provenance(execution_id)
        print(
            json.dumps(
                {
                    "status": final.status,
                    "node_start_order": executor.node_start_order,
                    "topology_levels": trace.topology_levels,
                    "input_hashes": {n: t.input_hash for n, t in sorted(trace.node_traces.items())},
                    "attempts": {n: t.attempt_count for n, t in sorted(trace.node_traces.items())},
                    "output_hashes": {
                        c.node_id: c.output_hash for c in sorted(checkpoints, key=lambda c: c.node_id)
                    },
                    "chain_valid": report.chain_valid,
                    "chain": [entry.to_json() for entry in report.chain],
                },
                sort_keys=True,
            )
        )
    finally:
        await engine.close()


def main(argv: list[str]) -> None:
    command, url, execution_id, *rest = argv
    if command == "run":
        asyncio.run(run(url, execution_id, rest[0], "--hang" in rest))
    elif command == "resume":
        asyncio.run(resume(url, execution_id, rest[0]))
    elif command == "replay":
        asyncio.run(replay(url, execution_id))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
