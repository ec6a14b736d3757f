"""Crash safety: a process running a DAG is SIGKILLed mid-run; a new process on the same store (SQLite
file, PostgreSQL) resumes it. No node whose checkpoint was saved runs again, and the chain verifies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from orchestrator_core.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _effects(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_sigkill_mid_run_then_resume_in_a_new_process(database_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    execution_id = "crash-1"
    cmd = [sys.executable, "-m", "tests.orchestrator.engine_worker"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = await asyncio.create_subprocess_exec(
        *cmd,
        "run",
        database_url,
        execution_id,
        str(effects),
        "--hang",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    store = await Store.open(database_url)
    try:
        deadline = time.monotonic() + 60
        while True:  # poll (bounded) until the run is stuck at `stuck` with 5 checkpoints committed
            if first.returncode is not None:
                stderr = await first.stderr.read() if first.stderr else b""
                raise AssertionError(f"worker exited early: {stderr.decode()}")
            checkpoints = await store.runs.checkpoints(execution_id) if "stuck" in _effects(effects) else []
            if len(checkpoints) == 5:
                break
            assert time.monotonic() < deadline, f"worker did not reach the stuck node: {_effects(effects)}"
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await first.wait()
        assert first.returncode == -signal.SIGKILL
        stored = await store.executions.get(execution_id)
        assert stored.status == "running"  # nobody recorded an end: the owner just died
    finally:
        await store.close()
        if first.returncode is None:
            first.kill()
            await first.wait()

    second = await asyncio.create_subprocess_exec(
        *cmd,
        "resume",
        database_url,
        execution_id,
        str(effects),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["nodes_skipped"] == ["a", "b1", "b2", "b3", "b4"]
    assert summary["nodes_remaining"] == ["stuck", "c"]
    assert summary["final_status"] == "completed"
    assert summary["chain_valid"], summary["problems"]
    assert summary["chain_nodes"] == ["a", "b1", "b2", "b3", "b4", "stuck", "c"]
    counts = {node: _effects(effects).count(node) for node in ("a", "b1", "b2", "b3", "b4", "stuck", "c")}
    # every node that had completed ran exactly once; only the interrupted node ran again
    assert counts == {"a": 1, "b1": 1, "b2": 1, "b3": 1, "b4": 1, "stuck": 2, "c": 1}
