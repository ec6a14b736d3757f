"""Where the engine's time goes without checkpoints (a benchmark, not a test): the same three workloads
as bench/engine.py, with parts of the per-node contract switched off inside this process only.

  .venv/bin/python bench/ablation.py [--repeat 3] [--json]

Variants (each cumulative on the one before; the engine code on disk is never changed):
  contract       the engine as shipped (checkpoint_enabled=false)
  - node rows    the final transaction writes no run document (no traces, no chain: the run record only;
                 on a SQLite file an empty document row, written with the run's end by `store.commits`)
  - hashes       no input hash per node, no provenance record hash (constant strings instead)
  - chain        no provenance entries at all (levels are not sealed)

What is left in the last variant is the engine's own bookkeeping: the durable run record, admission
of the run, one task per node, the agent context, the parallelism slots, per-node timeouts and
retries, state, traces in memory. Comparing it with the baseline separates what the engine costs from
what the contract (durable, hashed per-node records) costs. Switched-off parts break the contract:
these numbers describe costs, not a mode anyone can run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine as bench

from orchestrator_core import hashing as hashing_module
from orchestrator_core import levels as levels_module
from orchestrator_core import provenance as provenance_module
from orchestrator_core.store import commits as commits_module
from orchestrator_core.store import rundata as rundata_module

CONSTANT_HASH = "0" * 64


def _no_hashes() -> None:
    hashing_module.InputHasher.with_encoded_input = lambda self, *args: CONSTANT_HASH  # type: ignore[method-assign]
    provenance_module.record_hash = lambda *args: CONSTANT_HASH  # type: ignore[assignment]


def _no_node_rows() -> None:
    async def write_nothing(conn: Any, execution_id: str, batch: Any, clock: Any) -> None:
        return None

    def empty_document(execution_id: str, batch: Any, written_at: Any) -> tuple[Any, ...]:
        return execution_id, "{}", "{}", written_at

    rundata_module.write = write_nothing  # type: ignore[assignment]
    # On a SQLite file a run's end is written by `store.commits` (one row, nothing encoded)
    commits_module.document_row = empty_document  # type: ignore[assignment]


def _no_chain() -> None:
    levels_module.LevelRunner.seal = lambda self, level: None  # type: ignore[method-assign]


VARIANTS: list[tuple[str, Callable[[], None] | None]] = [
    ("contract", None),
    ("- node rows", _no_node_rows),
    ("- hashes", _no_hashes),
    ("- chain", _no_chain),
]


async def measure(repeat: int) -> dict[str, dict[str, float]]:
    """engine / baseline per workload and variant, each variant applied on top of the ones before."""
    results: dict[str, dict[str, float]] = {}
    for name, switch_off in VARIANTS:
        if switch_off is not None:
            switch_off()
        figures = await bench.main(repeat)
        results[name] = {workload: r["engine_vs_baseline"] for workload, r in figures.items()}
    return results


def render(results: dict[str, dict[str, float]]) -> str:
    workloads = list(next(iter(results.values())))
    lines = [
        "| variant | " + " | ".join(f"{w}: engine / baseline" for w in workloads) + " |",
        "| --- | " + " | ".join("---:" for _ in workloads) + " |",
    ]
    for name, ratios in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{ratios[w]:.0%}" for w in workloads) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args()
    outcome = asyncio.run(measure(max(1, args.repeat)))
    print(json.dumps(outcome, indent=2) if args.json else render(outcome))
