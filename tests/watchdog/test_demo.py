"""`gl-watchdog demo --yes` as users run it (a subprocess), and the terminal-approval path in-process."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from watchdog.demo import run_demo

pytestmark = pytest.mark.slow
GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))


def test_demo_yes_detects_diagnoses_remediates_and_verifies_within_a_minute(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [GL_WATCHDOG, "demo", "--yes"], capture_output=True, text=True, timeout=90, cwd=tmp_path, check=False
    )
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert elapsed < 60
    for expected in (
        "detected: run over its timeout",
        "diagnosed: external_api_slow at node scope2 (agent emissions.scope2)",
        "STEP  NAME",  # the diagnosis table
        "approval needed",
        "plan: run restart_agent(agent_id=emissions.scope2",
        "approved (--yes)",
        "incident resolved",
        "run completed; report node completed; provenance chain valid",
        "what was done      restart_agent.restart_worker (succeeded)",
        "result             OK",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    order = [
        out.index(s) for s in ("detected:", "diagnosed:", "approval needed", "verifying", "incident resolved")
    ]
    assert order == sorted(order)
    for label in ("time to detect", "time to diagnose", "time to remediate"):
        assert re.search(rf"{label}\s+\d+\.\ds", out), label
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory


async def test_denied_at_the_terminal_escalates_and_fails() -> None:
    asked: list[str] = []

    async def say_no(question: str) -> bool:
        asked.append(question)
        return False

    out = io.StringIO()
    result = await run_demo(out, ask=say_no, deadline_seconds=50)
    assert asked == ["          Approve? [y/N] "]
    assert not result.ok and result.approved is False
    assert result.incident_status == "escalated"
    assert result.actions == []  # nothing was done
    assert "denied by terminal" in out.getvalue()
    assert "result             FAILED" in out.getvalue()
    assert "time to remediate  -" in out.getvalue()
