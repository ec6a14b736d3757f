"""`gl-watchdog`: help, diagnose against the real orchestrator service, incidents, sweep, serve."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from tests.watchdog.conftest import FakeClock, make_plan
from tests.watchdog.orchestrators import OrchestratorProcess, use_orchestrator
from watchdog.cli import main
from watchdog.cli.incidents import shorten
from watchdog.cli.local import setup_logging
from watchdog.diagnostics.render import to_table
from watchdog.diagnostics.runner import diagnose
from watchdog.plugins import installed_plugins
from watchdog.store import WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosticContext

GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("GL_WATCHDOG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GL_WATCHDOG_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}")


@pytest.mark.parametrize("argv", [[], ["serve"], ["diagnose"], ["incidents", "list"], ["sweep"], ["tokens"]])
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    assert "Usage: gl-watchdog" in capsys.readouterr().out


def test_diagnose_prints_the_hung_node_and_its_agent(
    orchestrator_service: OrchestratorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_orchestrator(monkeypatch, orchestrator_service)
    execution_id = orchestrator_service.start_hung_run()
    orchestrator_service.wait_over_timeout(execution_id)

    assert main(["diagnose", "--local", execution_id]) == 0
    table = capsys.readouterr().out
    assert execution_id in table and "wedged" in table and "builtin.hang" in table

    assert main(["diagnose", "--local", execution_id, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["execution_id"] == execution_id
    assert document["stuck_node_id"] == "wedged" and document["agent_id"] == "builtin.hang"
    # Steps 1-8, then the installed plugins' (the example plugin's step 20 under `make install`).
    plugin_steps = [step.number for step in installed_plugins().steps if step.number > 8]
    assert [f["step"] for f in document["findings"]] == [1, 2, 3, 4, 5, 6, 7, 8, *plugin_steps]

    assert main(["diagnose", "--local", execution_id, "--format", "markdown"]) == 0
    assert "wedged" in capsys.readouterr().out


def test_diagnose_unknown_execution_exits_3(
    orchestrator_service: OrchestratorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_orchestrator(monkeypatch, orchestrator_service)
    assert main(["diagnose", "--local", "no-such-run"]) == 3
    captured = capsys.readouterr()
    assert "no execution 'no-such-run'" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_diagnose_with_orchestrator_down_exits_5(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TIMEOUT_SECONDS", "2")
    assert main(["diagnose", "--local", "exec-1"]) == 5
    err = capsys.readouterr().err
    assert "unreachable" in err and "Traceback" not in err


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("port: not-a-port\n")
    assert main(["incidents", "list", "--local", "--settings", str(config)]) == 2
    assert "port" in capsys.readouterr().err


async def _create_store(url: str) -> None:
    store = await WatchdogStore.open(url)
    await store.close()


def test_incidents_table_json_and_status_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_create_store(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"))  # as `serve` would have
    assert main(["incidents", "list", "--local", "-o", "table"]) == 0
    assert capsys.readouterr().out == "no incidents\n"

    async def seed() -> None:
        store = await WatchdogStore.open(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}")
        try:
            async with store.transaction() as tx:
                await tx.insert_incident(
                    execution_id="e-open", dag_id="d", source="alert", detection_source="prometheus"
                )
                done = await tx.insert_incident(
                    execution_id="e-done", dag_id="d", source="sweep", detection_source="api"
                )
                assert done is not None
                await tx.update_incident(done.id, status="closed")
        finally:
            await store.close()

    asyncio.run(seed())
    assert main(["incidents", "list", "--local", "-o", "table"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["ID", "STATUS", "EXECUTION"]
    assert "e-open" in table and "e-done" in table
    assert main(["incidents", "list", "--local", "--status", "open", "--format", "json"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [i["execution_id"] for i in items] == ["e-open"]
    assert main(["incidents", "list", "--local", "--status", "stuck"]) == 2
    assert "unknown status stuck" in capsys.readouterr().err


def test_incidents_list_held_and_not_held_filter_and_mark_what_holds_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the table fits on one line whatever the terminal
    url = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    window = {"kind": "maintenance", "name": "nightly", "ends_at": "2026-12-06T10:00:00+00:00"}

    async def seed() -> None:
        store = await WatchdogStore.open(url)
        try:
            async with store.transaction() as tx:
                for execution_id in ("e-held", "e-free"):
                    await tx.insert_incident(
                        execution_id=execution_id, dag_id="d", source="sweep", detection_source="api"
                    )
                [held] = await tx.list_incidents(execution_id="e-held")
                await tx.hold_incident(held.id, "maintenance", [window])
        finally:
            await store.close()

    asyncio.run(seed())
    assert main(["incidents", "list", "--local", "--held", "-o", "json"]) == 0
    [item] = json.loads(capsys.readouterr().out)["items"]
    assert item["execution_id"] == "e-held" and item["held"] is True and item["suppressed_by"] == [window]
    assert main(["incidents", "list", "--local", "--not-held", "-o", "json"]) == 0
    assert [i["execution_id"] for i in json.loads(capsys.readouterr().out)["items"]] == ["e-free"]
    assert main(["incidents", "list", "--local", "-o", "table"]) == 0
    assert "open (held: maintenance nightly)" in capsys.readouterr().out


def test_sweep_opens_an_incident_for_the_stuck_run(
    orchestrator_service: OrchestratorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_orchestrator(monkeypatch, orchestrator_service)
    monkeypatch.setenv("GL_WATCHDOG_FOR_DURATION_SECONDS", "0")
    execution_id = orchestrator_service.start_hung_run()
    orchestrator_service.wait_over_timeout(execution_id)
    assert main(["sweep", "--local"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "ok" and report["source"] == "api"
    assert [o["execution_id"] for o in report["opened"]] == [execution_id]
    assert main(["incidents", "list", "--local", "--format", "json"]) == 0
    [incident] = json.loads(capsys.readouterr().out)["items"]
    assert incident["source"] == "sweep" and incident["summary"].startswith(
        "agent_unresponsive at node wedged"
    )


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GL_WATCHDOG_")}
    env.update(
        {
            "GL_WATCHDOG_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
            "GL_WATCHDOG_API_TOKENS": '["serve-token"]',
            "GL_WATCHDOG_ORCHESTRATOR_URL": f"http://127.0.0.1:{free_port()}",
            "GL_WATCHDOG_SWEEP_INTERVAL_SECONDS": "3600",
        }
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [GL_WATCHDOG, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        assert wait_for_port(port, timeout=30), log_path.read_text()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
            assert http.get("/api/v1/incidents").status_code == 401
            listed = http.get("/api/v1/incidents", headers={"Authorization": "Bearer serve-token"})
            assert listed.status_code == 200
            assert listed.json() == {"items": [], "next_cursor": None, "total": 0}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        output = log_path.read_text()
        assert "listening on http://127.0.0.1" in output
        assert "Traceback" not in output and "serve-token" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_refuses_a_public_address_without_tokens(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no local token of an earlier `serve` in the working directory
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "without API tokens" in capsys.readouterr().err


def test_incidents_show_the_pending_approval_to_answer_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"

    async def seed() -> None:
        store = await WatchdogStore.open(url)
        try:
            async with store.transaction() as tx:
                waiting = await tx.insert_incident(
                    execution_id="e-wait", dag_id="d", source="alert", detection_source="api"
                )
                await tx.insert_incident(
                    execution_id="e-other", dag_id="d", source="alert", detection_source="api"
                )
                assert waiting is not None
                await tx.insert_approval(
                    approval_id="apr_pending1",
                    incident_id=waiting.id,
                    plan=make_plan("e-wait"),
                    summary="s",
                    token_nonce="n",
                    expires_at=datetime.now(UTC) + timedelta(minutes=15),
                )
        finally:
            await store.close()

    asyncio.run(seed())
    assert main(["incidents", "list", "--local", "-o", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "APPROVAL" in lines[0]
    assert any("e-wait" in line and "apr_pending1" in line for line in lines)
    assert any("e-other" in line and "apr_pending1" not in line for line in lines)
    assert main(["incidents", "list", "--local", "--format", "json"]) == 0
    items = {i["execution_id"]: i for i in json.loads(capsys.readouterr().out)["items"]}
    assert items["e-wait"]["pending_approval"] == "apr_pending1"
    assert items["e-other"]["pending_approval"] is None


# -- cli render ------------------------------------------------------------------------------------------
# What the on-call engineer reads: the cause evidence when the diagnosis could not see the run, the
# table's evidence lines, `diagnose` with an empty id, and a service log without per-request noise.


MakeCtx = Callable[..., DiagnosticContext]


@pytest.fixture
def in_an_empty_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GL_WATCHDOG_* setting at all (the store's default path too), in an empty working directory."""
    for name in list(os.environ):
        if name.startswith("GL_WATCHDOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("in_an_empty_directory")
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


@pytest.mark.usefixtures("in_an_empty_directory")
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


@pytest.mark.usefixtures("in_an_empty_directory")
def test_diagnose_with_an_empty_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "--local", " "]) == 2
    err = capsys.readouterr().err
    assert err == "gl-watchdog: error: EXECUTION_ID must not be empty\n"


@pytest.mark.usefixtures("in_an_empty_directory")
def test_service_log_leaves_out_httpx_request_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    loggers = [logging.getLogger(name) for name in ("", "httpx", "apscheduler")]
    saved = [log.level for log in loggers]
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    try:
        for log, level in zip(loggers, (logging.WARNING, logging.NOTSET, logging.NOTSET), strict=True):
            log.setLevel(level)
        setup_logging("INFO")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.INFO)
        assert logging.getLogger("apscheduler").isEnabledFor(logging.WARNING)
        assert logging.getLogger("watchdog").isEnabledFor(logging.INFO)
    finally:
        for log, level in zip(loggers, saved, strict=True):
            log.setLevel(level)  # setLevel, not attribute writes: it clears the loggers' level caches


@pytest.mark.usefixtures("in_an_empty_directory")
def test_incidents_in_a_directory_without_the_store_does_not_invent_an_empty_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["incidents", "list", "--local"]) == 5
    )  # the default sqlite+aiosqlite:///gl-watchdog.db, relative to cwd
    err = capsys.readouterr().err
    assert err.startswith(f"gl-watchdog: error: no watchdog database at {tmp_path / 'gl-watchdog.db'}")
    assert not (tmp_path / "gl-watchdog.db").exists()


@pytest.mark.usefixtures("in_an_empty_directory")
def test_incidents_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incidents", "list", "--local", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_incident_table_shortens_a_long_summary_at_a_word() -> None:
    summary = "agent_unresponsive at node wedged (agent builtin.hang): step 4 (agent): node wedged logs"
    short = shorten(summary, 70)
    assert short.endswith("(agent builtin.hang): step 4 …") and len(short) <= 70
    assert shorten("fits   as is", 70) == "fits as is"


@pytest.mark.usefixtures("in_an_empty_directory")
def test_diagnose_with_a_refused_token_says_which_setting(
    orchestrator_service: OrchestratorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_URL", orchestrator_service.url)
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TOKEN", "not-the-token")
    assert main(["diagnose", "--local", "exec-1"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("gl-watchdog: error: orchestrator answered 401")
    assert f"(at {orchestrator_service.url}): check GL_WATCHDOG_ORCHESTRATOR_TOKEN" in err


def test_incidents_say_when_the_limit_leaves_some_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        store = await WatchdogStore.open(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}")
        try:
            async with store.transaction() as tx:
                for n in range(3):
                    await tx.insert_incident(
                        execution_id=f"e-{n}", dag_id="d", source="sweep", detection_source="api"
                    )
        finally:
            await store.close()

    asyncio.run(seed())
    assert main(["incidents", "list", "--local", "--limit", "2", "-o", "table"]) == 0
    captured = capsys.readouterr()
    assert "e-2" in captured.out and "e-1" in captured.out and "e-0" not in captured.out
    assert "showing the newest 2 of 3 incidents (--limit N for more)" in captured.err
    assert main(["incidents", "list", "--local", "--limit", "3", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total"] == 3 and captured.err == ""
