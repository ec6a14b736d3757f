"""What the on-call engineer reads: the cause evidence when the diagnosis could not see the run, the
table's evidence lines, `diagnose` with an empty id, and a service log without per-request noise."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import free_port
from watchdog.cli import _setup_logging, main
from watchdog.clients.orchestrator import OrchestratorClient
from watchdog.diagnostics.context import DiagnosticContext
from watchdog.diagnostics.models import Diagnosis, Finding, StepStatus
from watchdog.diagnostics.render import to_table
from watchdog.diagnostics.runner import diagnose
from watchdog.settings import WatchdogSettings

MakeCtx = Callable[..., DiagnosticContext]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("GL_WATCHDOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


async def test_unreachable_orchestrator_is_named_in_the_cause_evidence(_no_pending_tasks: None) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    ctx = DiagnosticContext(
        orchestrator=OrchestratorClient(url, "t", timeout=2.0),
        settings=WatchdogSettings(orchestrator_url=url),
        clock=lambda: datetime(2026, 3, 1, 12, tzinfo=UTC),
    )
    try:
        diagnosis = await diagnose(ctx, "ex-1")
    finally:
        await ctx.aclose()
    assert diagnosis.likely_cause == "unknown"
    [evidence] = diagnosis.cause_evidence  # only the root: steps 2 and 3 fail because step 1 did
    assert evidence.startswith("step 1 (execution) could not look: cannot read the execution")
    assert "unreachable" in evidence and url in evidence


def test_long_cause_evidence_is_wrapped_in_the_table() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    long = "step 4 (agent): " + " ".join(["word"] * 60)
    diagnosis = Diagnosis(
        execution_id="ex-1",
        started_at=now,
        completed_at=now,
        findings=[Finding(step=1, name="execution", status=StepStatus.PROBLEM, summary="over")],
        likely_cause="agent_unresponsive",
        cause_evidence=[long],
    )
    lines = to_table(diagnosis).splitlines()
    evidence = [line for line in lines if line.startswith("evidence") or line.startswith(" " * 14 + "word")]
    assert len(evidence) > 1 and all(len(line) <= 14 + 110 for line in evidence)
    assert " ".join(line[14:] for line in evidence).split() == long.split()


def test_diagnose_with_an_empty_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", " "]) == 2
    err = capsys.readouterr().err
    assert err == "gl-watchdog: error: EXECUTION_ID must not be empty\n"


def test_service_log_leaves_out_httpx_request_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    _setup_logging("INFO")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("watchdog").isEnabledFor(logging.INFO)
