"""Runs left `interrupted` (a replica shut down mid-run, e.g. the runbook's Option 4 rollout restart)
are not forgotten: once interrupted for the `for` duration, a sweep opens an incident, the diagnosis
names the cause `interrupted`, and the shipped policy plans the runbook's Option 2, resume."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from playbooks.registry import default_registry
from tests.watchdog.conftest import OrchestratorProcess
from tests.watchdog.test_cli import use_orchestrator
from tests.watchdog.test_sweeps import FOR, Harness, open_harness
from watchdog.cli import main
from watchdog.diagnostics.runner import likely_cause
from watchdog.planner import make_plan
from watchdog.policy import load_policy
from watchdog.settings import Mode
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

PAUSE_DAG: dict[str, Any] = {
    "dag_id": "pausing",
    "nodes": {
        "load": {"agent_id": "builtin.echo"},
        "pause": {"agent_id": "builtin.sleep", "depends_on": ["load"], "params": {"seconds": 60}},
        "report": {"agent_id": "builtin.echo", "depends_on": ["pause"]},
    },
}


# -- the sweep ---------------------------------------------------------------------------------------


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    async with open_harness(database_url) as h:
        yield h


async def test_sweep_opens_an_incident_for_a_run_interrupted_longer_than_for(harness: Harness) -> None:
    harness.fake.interrupt("exec-int", "dag-1", interrupted_at=harness.clock.now())
    sweeper = harness.sweeper()
    early = await sweeper.sweep_once()
    assert early.result == "ok" and early.opened == []  # on-call or a replica may still resume it
    harness.clock.advance(FOR.total_seconds())
    late = await sweeper.sweep_once()
    assert [i.execution_id for i in late.opened] == ["exec-int"]
    [incident] = await harness.store.list_incidents()
    assert incident.source == "sweep" and incident.detection_source == "api"
    again = await sweeper.sweep_once()
    assert again.opened == [] and again.joined == [incident.id]


# -- the diagnosis and the plan ------------------------------------------------------------------------


def _finding(step: int, outcome: StepStatus, summary: str, **evidence: Any) -> Finding:
    return Finding(step=step, name=f"s{step}", status=outcome, summary=summary, evidence=evidence)


def test_an_interrupted_run_is_diagnosed_interrupted_not_self_resolved() -> None:
    findings = [
        _finding(1, StepStatus.PROBLEM, "run is interrupted", status="interrupted"),
        _finding(8, StepStatus.OK, "3 checkpoints, chain valid"),
    ]
    cause, evidence = likely_cause(findings)
    assert cause == "interrupted" and evidence == ["step 1 (s1): run is interrupted"]
    finished = [_finding(1, StepStatus.OK, "run is completed", status="completed")]
    assert likely_cause(finished)[0] == "not_stuck"


# -- end to end against the real orchestrator ----------------------------------------------------------


def _wait(orch: OrchestratorProcess, execution_id: str, node: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded poll of a real process
        trace = orch.http.get(f"/executions/{execution_id}/trace").json()
        if trace["node_traces"].get(node, {}).get("status") == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} never became {status}:\n{orch.log()}")


def test_a_run_interrupted_by_a_shutdown_gets_an_incident_and_a_resume_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "orchestrator"
    workdir.mkdir()
    first = OrchestratorProcess(workdir)
    first.start()
    try:
        assert first.http.post("/dags", json=PAUSE_DAG).status_code == 201
        started = first.http.post(
            "/dags/pausing/execute", json={"execution_options": {"checkpoint_enabled": True}}
        )
        execution_id = started.json()["execution_id"]
        _wait(first, execution_id, "pause", "running")
    finally:
        first.stop()  # SIGTERM: the 60 s node outlives the 2 s grace, so the run ends interrupted
    second = OrchestratorProcess(workdir)  # the replacement replica, same store
    second.start()
    try:
        record = second.http.get(f"/executions/{execution_id}").json()
        assert record["status"] == "interrupted"
        use_orchestrator(monkeypatch, second)
        monkeypatch.setenv("GL_WATCHDOG_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}")
        monkeypatch.setenv("GL_WATCHDOG_FOR_DURATION_SECONDS", "0")
        assert main(["sweep"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [o["execution_id"] for o in report["opened"]] == [execution_id]
        assert main(["diagnose", execution_id, "--format", "json"]) == 0
        diagnosis = json.loads(capsys.readouterr().out)
        assert diagnosis["likely_cause"] == "interrupted"
    finally:
        second.stop()

    plan = make_plan(Diagnosis.model_validate(diagnosis), load_policy(), Mode.RECOMMEND, default_registry())
    assert plan.playbook == "resume" and plan.requires_approval
    assert datetime.now(UTC) - timedelta(minutes=5) < datetime.fromisoformat(
        diagnosis["completed_at"].replace("Z", "+00:00")
    )


async def test_a_sweep_cut_short_by_shutdown_is_not_logged_as_a_failed_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    entered = asyncio.Event()

    async def hanging(request: httpx.Request) -> httpx.Response:
        entered.set()
        await asyncio.Event().wait()  # the orchestrator never answers
        raise AssertionError("unreachable")

    harness.client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(hanging))
    sweeper = harness.sweeper(interval=3600)
    sweeper.start()
    await asyncio.wait_for(entered.wait(), timeout=10)
    with caplog.at_level(logging.INFO):
        await sweeper.shutdown(grace_seconds=0.05)
    assert "in-flight sweep cancelled by shutdown" in caplog.text
    assert "Traceback" not in caplog.text and "raised an exception" not in caplog.text
