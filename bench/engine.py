"""Engine benchmark (not a test): nodes per second for three workloads, four ways, in one run.

  .venv/bin/python bench/engine.py [--repeat 3] [--json] [--floor] [--freeze-gc]

Prints the machine's load average (`/proc/loadavg`) before and after, next to the figures, and the same
figures per CPU-second of this process (`time.process_time`), which another process's load disturbs
less than wall time. `--freeze-gc` calls `gc.freeze()` once everything is set up, so that the cyclic
collector's full collections (which the engine's per-node objects trigger every few runs, and which
then traverse every object of the process) only traverse what the runs allocated.

Workloads (every node is a no-op async agent):
  wide     1 -> 2,000 -> 1
  chain    500 nodes in a line
  layered  20 levels x 100 nodes, each node with 3 random parents in the previous level (seed 42)

Ways:
  baseline        bare asyncio: graphlib levels + asyncio.gather per level, nothing else
  baseline+commit the same loop committing one SQLite row per node (sqlite3 in WAL mode, synchronous=NORMAL
                  like the engine's connections, one autocommit INSERT per completed node): the reference
                  for the checkpointed engine ("engine+sqlite / baseline+commit")
  engine          the orchestrator engine, checkpoint_enabled=false (SQLite store for the run record)
  engine+sqlite   the engine with checkpoints on a SQLite file (WAL), every completion durable
                  before its level advances

Each figure is the best of --repeat runs, the ways taking turns within each repeat; nodes/s = nodes /
wall time from execute to the final record.
The engine runs with max_parallel_nodes = 10,000 so that, like the baseline, a level is not throttled.

Also printed: the fixed cost of one durable run record (a one-node DAG without checkpoints: reading the
DAG's latest version, creating and claiming the run in one transaction, finishing it in another), and
engine nodes/s with that fixed cost taken out, to separate per-run bookkeeping from per-node overhead.

--floor adds two columns that are not the engine: the baseline plus only the per-node work the
engine's contract requires without checkpoints — two clock readings, the input hash and the provenance
record hash per node ("+ hashes"), then also every node's trace and chain record encoded as one JSON
run document and inserted with sqlite3 into the engine's `run_documents` table in one transaction
("+ document"). No run record, fencing, SQLAlchemy, agent context or parallelism slots: an upper bound
for any engine that keeps the contract, measured on the same machine in the same run; with --json,
`engine_vs_floor_document` is the engine's share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import graphlib
import json
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from orchestrator_core.agents import AgentContext, AgentRegistry
from orchestrator_core.engine import Engine
from orchestrator_core.hashing import NO_OUTPUT_HASH, InputHasher, canonical_json, record_hash, sha256_hex
from orchestrator_core.provenance import genesis_hash
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.store import Store


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
LOAD: dict[str, str] = {"before": "?", "after": "?"}
Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def start() -> Timing:
    return time.perf_counter(), time.process_time()


def since(started: Timing) -> Timing:
    """Wall and process CPU time since `started`: on a machine shared with other work, the CPU time
    is what this process spent, the wall time also what it waited for a core."""
    return time.perf_counter() - started[0], time.process_time() - started[1]


# Nodes per CPU-second of this process, per way (JSON keys).
CPU_KEYS = {
    "base": "cpu_baseline_nodes_per_s",
    "committed": "cpu_baseline_commit_nodes_per_s",
    "plain": "cpu_engine_nodes_per_s",
    "durable": "cpu_engine_sqlite_nodes_per_s",
    "document": "cpu_floor_document_nodes_per_s",
}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (`/proc/loadavg`), or "?" where there is none."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


async def baseline(graph: dict[str, list[str]], db: sqlite3.Connection | None = None) -> Timing:
    """Levels + gather; with `db` (baseline+commit) each node also commits one row (its id and a stamp)
    before its level may advance."""

    async def agent(node: str) -> None:
        return None

    run_id = os.urandom(8).hex()

    async def committed(node: str) -> None:
        await agent(node)
        assert db is not None
        db.execute("INSERT INTO node_commits VALUES (?, ?, ?)", (run_id, node, time.time()))

    step = agent if db is None else committed
    started = start()
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    while sorter.is_active():
        level = sorter.get_ready()
        await asyncio.gather(*(step(node) for node in level))
        sorter.done(*level)
    return since(started)


def reference_db(path: Path) -> sqlite3.Connection:
    """The baseline+commit's own SQLite file: WAL, `synchronous=NORMAL`, autocommit (one commit per row)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE node_commits (run_id TEXT, node_id TEXT, at REAL, PRIMARY KEY (run_id, node_id))"
    )
    return db


async def floor(graph: dict[str, list[str]], db: sqlite3.Connection | None) -> Timing:
    """The baseline plus the contract's per-node work (see --floor); the run document only with `db`."""

    async def agent(node: str) -> Any:
        return None

    # The input hash through the executor's `InputHasher`; its per-node parts belong to the DAG, which
    # the engine prepares once per DAG version (not timed here either).
    hashers = {node: InputHasher("bench.noop", {}, deps) for node, deps in graph.items()}
    started = start()
    run_input = sha256_hex(canonical_json(None))
    prev = genesis_hash("floor", None)
    output_hashes: dict[str, str] = {}
    done: dict[str, tuple[datetime, datetime, str]] = {}
    chain: list[tuple[int, str, str, str, str]] = []

    async def run(node: str) -> None:
        at = datetime.now(UTC)
        digest = hashers[node](run_input, output_hashes)
        value = await agent(node)
        output_hashes[node] = NO_OUTPUT_HASH if value is None else sha256_hex(canonical_json(value))
        done[node] = (at, datetime.now(UTC), digest)

    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    while sorter.is_active():
        level = sorted(sorter.get_ready())
        await asyncio.gather(*(run(node) for node in level))
        sorter.done(*level)
        for node in level:
            seq, digest = len(chain) + 1, done[node][2]
            record = record_hash(seq, node, digest, NO_OUTPUT_HASH, "completed", prev)
            chain.append((seq, node, digest, record, prev))
            prev = record
    if db is not None:

        def stamp(moment: datetime) -> int:
            return round(moment.timestamp() * 1_000_000)

        traces = [
            (n, "bench.noop", "completed", 0, stamp(a), stamp(b), 0, 1, None, h, None)
            for n, (a, b, h) in done.items()
        ]
        records = [(q, n, h, NO_OUTPUT_HASH, "completed", p, r) for q, n, h, r, p in chain]
        encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO run_documents VALUES (?,?,?,?)",
            (
                os.urandom(16).hex(),
                encode({"rows": traces}),
                encode({"rows": records}),
                "2026-01-01 00:00:00",
            ),
        )
        db.execute("COMMIT")
    return since(started)


async def engine_run(engine: Engine, dag_id: str, checkpoints: bool) -> Timing:
    options = ExecutionOptions(checkpoint_enabled=checkpoints)
    started = start()
    record = await engine.execute(dag_id, None, options)
    final = await engine.wait(record.execution_id)
    elapsed = since(started)
    if final.status != "completed":
        raise RuntimeError(f"benchmark run {dag_id} ended {final.status}: {final.error}")
    return elapsed


async def main(repeat: int, with_floor: bool = False, freeze_gc: bool = False) -> dict[str, dict[str, float]]:
    registry = AgentRegistry()
    registry.register("bench.noop", noop)
    results: dict[str, dict[str, float]] = {}
    fixed = 0.0
    with tempfile.TemporaryDirectory(prefix="gl-bench-") as tmp:
        settings = OrchestratorSettings(
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", max_parallel_nodes=10_000
        )
        engine = await Engine.open(settings, registry=registry)
        if freeze_gc:  # set-up's objects out of the cyclic collector, as a service might after start-up
            gc.freeze()
        commits = reference_db(Path(tmp) / "reference.db")
        db = None
        if with_floor:  # the engine's schema in a file of its own (not to slow down the engine's file)
            await (await Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'floor.db'}")).close()
            db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
            db.execute("PRAGMA foreign_keys=OFF")  # the floor's document has no execution row
            db.execute("PRAGMA synchronous=NORMAL")  # as the engine's connections
        try:
            await engine.register_dag({"dag_id": "bench-one", "nodes": {"one": {"agent_id": "bench.noop"}}})
            fixed_runs = [await engine_run(engine, "bench-one", False) for _ in range(max(repeat, 5))]
            fixed, fixed_cpu = min(t[0] for t in fixed_runs), min(t[1] for t in fixed_runs)
            for name, build in WORKLOADS.items():
                graph = build()
                nodes = len(graph)
                dag: dict[str, Any] = {
                    "dag_id": f"bench-{name}",
                    "nodes": {n: {"agent_id": "bench.noop", "depends_on": deps} for n, deps in graph.items()},
                }
                await engine.register_dag(dag)
                # The ways take turns within each repeat (not all repeats of one way, then the next), so
                # that a change in the machine's load between them weighs on every way alike.
                ways: dict[str, Callable[[], Awaitable[Timing]]] = {
                    "base": partial(baseline, graph),
                    "committed": partial(baseline, graph, commits),
                    "plain": partial(engine_run, engine, dag["dag_id"], False),
                    "durable": partial(engine_run, engine, dag["dag_id"], True),
                }
                if db is not None:
                    ways["hashes"] = partial(floor, graph, None)
                    ways["document"] = partial(floor, graph, db)
                wall = dict.fromkeys(ways, float("inf"))
                cpu = dict.fromkeys(ways, float("inf"))
                for _ in range(repeat):
                    for way, run in ways.items():
                        took = await run()
                        wall[way], cpu[way] = min(wall[way], took[0]), min(cpu[way], took[1])
                results[name] = {
                    "nodes": nodes,
                    "baseline_nodes_per_s": nodes / wall["base"],
                    "engine_nodes_per_s": nodes / wall["plain"],
                    "engine_sqlite_nodes_per_s": nodes / wall["durable"],
                    "baseline_commit_nodes_per_s": nodes / wall["committed"],
                    "engine_sqlite_vs_baseline_commit": wall["committed"] / wall["durable"],
                    "engine_vs_baseline": wall["base"] / wall["plain"],
                    "run_record_seconds": fixed,
                    "engine_nodes_per_s_excl_run_record": nodes / max(wall["plain"] - fixed, 1e-9),
                    "cpu_run_record_seconds": fixed_cpu,
                }
                for way, key in CPU_KEYS.items():
                    if way in cpu:
                        results[name][key] = nodes / max(cpu[way], 1e-9)
                if db is not None:
                    results[name]["floor_hashes_nodes_per_s"] = nodes / wall["hashes"]
                    results[name]["floor_hashes_vs_baseline"] = wall["base"] / wall["hashes"]
                    results[name]["floor_document_nodes_per_s"] = nodes / wall["document"]
                    results[name]["floor_document_vs_baseline"] = wall["base"] / wall["document"]
                    results[name]["engine_vs_floor_document"] = wall["document"] / wall["plain"]
        finally:
            commits.close()
            if db is not None:
                db.close()
            await engine.close()
    return results


def render(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| workload | nodes | baseline nodes/s | engine nodes/s | engine / baseline "
        "| engine + SQLite checkpoints nodes/s | baseline + one commit per node nodes/s "
        "| engine + checkpoints / baseline + commit | engine nodes/s excl. run record |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor_shown = all("floor_document_nodes_per_s" in r for r in results.values())
    if floor_shown:
        lines[0] += " floor + hashes nodes/s | floor + document nodes/s | engine / floor + document |"
        lines[1] += " ---: | ---: | ---: |"
    for name, r in results.items():
        line = (
            f"| {name} | {int(r['nodes'])} | {r['baseline_nodes_per_s']:,.0f} "
            f"| {r['engine_nodes_per_s']:,.0f} | {r['engine_vs_baseline']:.0%} "
            f"| {r['engine_sqlite_nodes_per_s']:,.0f} | {r['baseline_commit_nodes_per_s']:,.0f} "
            f"| {r['engine_sqlite_vs_baseline_commit']:.0%} "
            f"| {r['engine_nodes_per_s_excl_run_record']:,.0f} |"
        )
        if floor_shown:
            line += (
                f" {r['floor_hashes_nodes_per_s']:,.0f} ({r['floor_hashes_vs_baseline']:.0%}) "
                f"| {r['floor_document_nodes_per_s']:,.0f} ({r['floor_document_vs_baseline']:.0%}) "
                f"| {r['engine_vs_floor_document']:.0%} |"
            )
        lines.append(line)
    fixed_ms = next(iter(results.values()))["run_record_seconds"] * 1000 if results else 0.0
    lines.append("")
    lines.append(f"Fixed cost of one durable run record (1-node DAG, no checkpoints): {fixed_ms:.1f} ms")
    lines.append(f"Load average ({os.cpu_count()} CPUs) before / after: {LOAD['before']} / {LOAD['after']}")
    lines += ["", "Per CPU-second of this process (`time.process_time`, best of the repeats):", ""]
    lines += [
        "| workload | baseline | engine | engine / baseline | engine + checkpoints | baseline + commit "
        "| engine + checkpoints / baseline + commit |"
        + (" floor + document | engine / floor + document |" if floor_shown else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if floor_shown else ""),
    ]
    for name, r in results.items():
        base, plain = r["cpu_baseline_nodes_per_s"], r["cpu_engine_nodes_per_s"]
        durable, committed = r["cpu_engine_sqlite_nodes_per_s"], r["cpu_baseline_commit_nodes_per_s"]
        line = (
            f"| {name} | {base:,.0f} | {plain:,.0f} | {plain / base:.0%} | {durable:,.0f} | {committed:,.0f} "
            f"| {durable / committed:.0%} |"
        )
        if floor_shown:
            document = r["cpu_floor_document_nodes_per_s"]
            line += f" {document:,.0f} | {plain / document:.0%} |"
        lines.append(line)
    fixed_cpu_ms = next(iter(results.values()))["cpu_run_record_seconds"] * 1000 if results else 0.0
    lines += ["", f"CPU time of one durable run record: {fixed_cpu_ms:.2f} ms"]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument(
        "--floor", action="store_true", help="also measure the contract's bare per-node cost (see above)"
    )
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="gc.freeze() after set-up: full collections then traverse only what the runs allocate",
    )
    args = parser.parse_args()
    LOAD["before"] = load_average()
    outcome = asyncio.run(main(max(1, args.repeat), args.floor, args.freeze_gc))
    LOAD["after"] = load_average()
    if args.json:
        print(json.dumps({"results": outcome, "cpus": os.cpu_count(), "load_average": LOAD}, indent=2))
    else:
        print(render(outcome))
