"""Engine benchmark (not a test): nodes per second for three workloads, three ways, in one run.

  .venv/bin/python bench/engine.py [--repeat 3] [--json]

Workloads (every node is a no-op async agent):
  wide     1 -> 2,000 -> 1
  chain    500 nodes in a line
  layered  20 levels x 100 nodes, each node with 3 random parents in the previous level (seed 42)

Ways:
  baseline        bare asyncio: graphlib levels + asyncio.gather per level, nothing else
  engine          the orchestrator engine, checkpoint_enabled=false (SQLite store for the run record)
  engine+sqlite   the engine with checkpoints on a SQLite file (WAL), every completion durable
                  before its level advances

Each figure is the best of --repeat runs; nodes/s = nodes / wall time from execute to the final record.
The engine runs with max_parallel_nodes = 10,000 so that, like the baseline, a level is not throttled.

Also printed: the fixed cost of one durable run record (a one-node DAG without checkpoints: create,
claim, finish — three SQLite transactions), and engine nodes/s with that fixed cost taken out, to
separate per-run bookkeeping from per-node overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import graphlib
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator_core.agents import AgentContext, AgentRegistry
from orchestrator_core.engine import Engine
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.settings import OrchestratorSettings


async def noop(ctx: AgentContext) -> Any:
    return None


def wide() -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {"root": []}
    for i in range(2000):
        graph[f"w{i:04d}"] = ["root"]
    graph["sink"] = [f"w{i:04d}" for i in range(2000)]
    return graph


def chain() -> dict[str, list[str]]:
    return {f"c{i:03d}": ([f"c{i - 1:03d}"] if i else []) for i in range(500)}


def layered() -> dict[str, list[str]]:
    rng = random.Random(42)
    graph: dict[str, list[str]] = {}
    previous: list[str] = []
    for level in range(20):
        current = [f"l{level:02d}n{i:03d}" for i in range(100)]
        for node in current:
            graph[node] = sorted(rng.sample(previous, 3)) if previous else []
        previous = current
    return graph


WORKLOADS = {"wide": wide, "chain": chain, "layered": layered}


async def baseline(graph: dict[str, list[str]]) -> float:
    async def agent(node: str) -> None:
        return None

    started = time.perf_counter()
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    while sorter.is_active():
        level = sorter.get_ready()
        await asyncio.gather(*(agent(node) for node in level))
        sorter.done(*level)
    return time.perf_counter() - started


async def engine_run(engine: Engine, dag_id: str, checkpoints: bool) -> float:
    options = ExecutionOptions(checkpoint_enabled=checkpoints)
    started = time.perf_counter()
    record = await engine.execute(dag_id, None, options)
    final = await engine.wait(record.execution_id)
    elapsed = time.perf_counter() - started
    if final.status != "completed":
        raise RuntimeError(f"benchmark run {dag_id} ended {final.status}: {final.error}")
    return elapsed


async def main(repeat: int) -> dict[str, dict[str, float]]:
    registry = AgentRegistry()
    registry.register("bench.noop", noop)
    results: dict[str, dict[str, float]] = {}
    fixed = 0.0
    with tempfile.TemporaryDirectory(prefix="gl-bench-") as tmp:
        settings = OrchestratorSettings(
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", max_parallel_nodes=10_000
        )
        engine = await Engine.open(settings, registry=registry)
        try:
            await engine.register_dag({"dag_id": "bench-one", "nodes": {"one": {"agent_id": "bench.noop"}}})
            fixed = min([await engine_run(engine, "bench-one", False) for _ in range(max(repeat, 5))])
            for name, build in WORKLOADS.items():
                graph = build()
                nodes = len(graph)
                dag = {
                    "dag_id": f"bench-{name}",
                    "nodes": {n: {"agent_id": "bench.noop", "depends_on": deps} for n, deps in graph.items()},
                }
                await engine.register_dag(dag)
                base = min([await baseline(graph) for _ in range(repeat)])
                plain = min([await engine_run(engine, dag["dag_id"], False) for _ in range(repeat)])
                durable = min([await engine_run(engine, dag["dag_id"], True) for _ in range(repeat)])
                results[name] = {
                    "nodes": nodes,
                    "baseline_nodes_per_s": nodes / base,
                    "engine_nodes_per_s": nodes / plain,
                    "engine_sqlite_nodes_per_s": nodes / durable,
                    "engine_vs_baseline": base / plain,
                    "run_record_seconds": fixed,
                    "engine_nodes_per_s_excl_run_record": nodes / max(plain - fixed, 1e-9),
                }
        finally:
            await engine.close()
    return results


def render(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| workload | nodes | baseline nodes/s | engine nodes/s | engine / baseline "
        "| engine + SQLite checkpoints nodes/s | engine nodes/s excl. run record |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {int(r['nodes'])} | {r['baseline_nodes_per_s']:,.0f} "
            f"| {r['engine_nodes_per_s']:,.0f} | {r['engine_vs_baseline']:.0%} "
            f"| {r['engine_sqlite_nodes_per_s']:,.0f} | {r['engine_nodes_per_s_excl_run_record']:,.0f} |"
        )
    fixed_ms = next(iter(results.values()))["run_record_seconds"] * 1000 if results else 0.0
    lines.append("")
    lines.append(f"Fixed cost of one durable run record (1-node DAG, no checkpoints): {fixed_ms:.1f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args()
    outcome = asyncio.run(main(max(1, args.repeat)))
    print(json.dumps(outcome, indent=2) if args.json else render(outcome))
