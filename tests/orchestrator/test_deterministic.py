"""deterministic_mode: the same DAG and input give the same node order, hashes and provenance chain,
byte for byte, in two separate processes (different hash seeds, different execution ids)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _replay(database_url: str, execution_id: str, hash_seed: str) -> tuple[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-m", "tests.orchestrator.engine_worker", "replay", database_url, execution_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    return line, json.loads(line)


def test_two_processes_produce_identical_order_hashes_and_chain(database_url: str) -> None:
    first_text, first = _replay(database_url, "replay-a", "1")
    second_text, _ = _replay(database_url, "replay-b", "2")
    assert first["status"] == "completed" and first["chain_valid"]
    assert first["node_start_order"] == ["intake", "left", "middle", "right", "join"]
    assert first["attempts"]["right"] == 3
    assert len(first["chain"]) == 5
    assert first_text == second_text
