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
from tests.watchdog.conftest import FakeClock, OrchestratorProcess
from watchdog.cli import _setup_logging, main
from watchdog.diagnostics.render import to_table
from watchdog.diagnostics.runner import diagnose
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosticContext

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
        clients=Clients(orchestrator=OrchestratorClient(url, "t", timeout=2.0)),
        clock=FakeClock(datetime(2026, 3, 1, 12, tzinfo=UTC)),
    )
    try:
        diagnosis = await diagnose(ctx, "ex-1")
    finally:
        await ctx.clients.aclose()
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
    loggers = [logging.getLogger(name) for name in ("", "httpx", "apscheduler")]
    saved = [log.level for log in loggers]
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    try:
        for log, level in zip(loggers, (logging.WARNING, logging.NOTSET, logging.NOTSET), strict=True):
            log.setLevel(level)
        _setup_logging("INFO")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.INFO)
        assert logging.getLogger("apscheduler").isEnabledFor(logging.WARNING)
        assert logging.getLogger("watchdog").isEnabledFor(logging.INFO)
    finally:
        for log, level in zip(loggers, saved, strict=True):
            log.setLevel(level)  # setLevel, not attribute writes: it clears the loggers' level caches


def test_incidents_in_a_directory_without_the_store_does_not_invent_an_empty_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["incidents"]) == 4  # the default sqlite+aiosqlite:///gl-watchdog.db, relative to cwd
    err = capsys.readouterr().err
    assert err.startswith(f"gl-watchdog: error: no watchdog database at {tmp_path / 'gl-watchdog.db'}")
    assert not (tmp_path / "gl-watchdog.db").exists()


def test_incidents_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incidents", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_incident_table_shortens_a_long_summary_at_a_word(tmp_path: Path) -> None:
    import io

    from watchdog.cli import write_incident_table
    from watchdog.store import Incident

    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    summary = "agent_unresponsive at node wedged (agent builtin.hang): step 4 (agent): node wedged logs"
    incident = Incident.model_validate(
        {
            "id": 1,
            "execution_id": "e-1",
            "dag_id": None,
            "status": "open",
            "source": "alert",
            "detection_source": "prometheus",
            "opened_at": now,
            "updated_at": now,
            "closed_at": None,
            "diagnosis": None,
            "plan": None,
            "verification": None,
            "summary": summary,
        }
    )
    out = io.StringIO()
    write_incident_table([incident], out)
    row = out.getvalue().splitlines()[1]
    assert row.endswith("(agent builtin.hang): step 4 …") and len(row.split("  ")[-1]) <= 70


def test_diagnose_with_a_refused_token_says_which_setting(
    orchestrator_service: OrchestratorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_URL", orchestrator_service.url)
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TOKEN", "not-the-token")
    assert main(["diagnose", "exec-1"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("gl-watchdog: error: orchestrator answered 401")
    assert f"(at {orchestrator_service.url}): check GL_WATCHDOG_ORCHESTRATOR_TOKEN" in err
