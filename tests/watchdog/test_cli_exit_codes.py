"""`gl-watchdog`'s exit codes: the same code for the same kind of failure in every command.

Each pair of a command and a kind of failure is its own test case, against the real services on loopback (an
in-process orchestrator, the watchdog's app with a pending prompt, SQLite); the CLI runs in a
thread (`main()` runs its own event loop). The table is `watchdog.exit_codes`': 1 refused by the
state (409) or not resolved, 2 bad input, 3 not found (404), 4 our credential refused (401/403), 5
unreachable. The commands that ask the service go through its API (`--server`, `GL_WATCHDOG_TOKEN`);
the `--local` ones use the orchestrator and the store directly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.orchestrator.service_harness import TOKEN, Harness, chain_dag, make_settings, running_service
from tests.watchdog.conftest import ScriptedDiagnose, make_plan
from watchdog.approvals import Decision
from watchdog.assembly import build_watchdog, create_app
from watchdog.cli import main
from watchdog.settings import WatchdogSettings

UNREACHABLE, UNAUTHORIZED, NOT_FOUND, CONFLICT, BAD_INPUT = "unreachable", "401", "404", "409", "bad-input"
EXPECTED = {UNREACHABLE: 5, UNAUTHORIZED: 4, NOT_FOUND: 3, CONFLICT: 1, BAD_INPUT: 2}
WATCHDOG_TOKEN = "cli-exit-codes-token-0123"


@dataclass
class World:
    orch: Harness
    watchdog_url: str
    approval_id: str
    decided_id: str
    finished_run: str
    running_run: str


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("GL_WATCHDOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GL_WATCHDOG_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("GL_WATCHDOG_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
async def world(_no_pending_tasks: None, tmp_path: Path) -> AsyncIterator[World]:
    orch_settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'orch.db'}", max_body_bytes=1 << 20)
    async with running_service(orch_settings, start_loop=True) as orch:
        await orch.register(chain_dag("quick", "builtin.echo"))
        finished = (await orch.execute("quick", {"x": 1}))["execution_id"]
        await orch.wait_status(finished, "completed")
        await orch.register(chain_dag("wedged", "builtin.hang"))
        running = (await orch.execute("wedged"))["execution_id"]
        await orch.wait_status(running, "running")
        settings = WatchdogSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'wd-server.db'}",
            api_tokens=[WATCHDOG_TOKEN],
            orchestrator_url=f"http://127.0.0.1:{free_port()}",
            approval_signing_key="k" * 32,
        )
        wd = await build_watchdog(settings, diagnose=ScriptedDiagnose(), respond=False)
        runner = web.AppRunner(create_app(wd), shutdown_timeout=0.5)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            prompts = []
            for execution_id in ("exec-a", "exec-b"):
                opened = await wd.incidents.open_or_join(
                    execution_id, dag_id=None, source="manual", detection_source="api"
                )
                async with wd.store.transaction() as tx:
                    prompts.append(
                        await wd.approvals.create_in(
                            tx, incident_id=opened.incident.id, plan=make_plan(execution_id), summary="s"
                        )
                    )
            await wd.approvals.decide(prompts[1].id, Decision.DENY, actor="t", authenticated=True)
            yield World(orch, f"http://127.0.0.1:{port}", prompts[0].id, prompts[1].id, finished, running)
        finally:
            await runner.cleanup()
            await wd.aclose(grace_seconds=1)


def _use(monkeypatch: pytest.MonkeyPatch, world: World, failure: str) -> None:
    """Point the CLI's settings at the services, broken as `failure` says."""
    orchestrator = world.orch.base_url if failure != UNREACHABLE else f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_URL", orchestrator)
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TOKEN", "wrong-token" if failure == UNAUTHORIZED else TOKEN)
    token = "wrong-token" if failure == UNAUTHORIZED else WATCHDOG_TOKEN
    monkeypatch.setenv("GL_WATCHDOG_TOKEN", token)
    url = world.watchdog_url if failure != UNREACHABLE else f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("GL_WATCHDOG_SERVER", url)


async def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


DIAGNOSE = [UNREACHABLE, UNAUTHORIZED, NOT_FOUND, BAD_INPUT]


@pytest.mark.parametrize("failure", DIAGNOSE)
async def test_diagnose(
    world: World, failure: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, world, failure)
    execution_id = {NOT_FOUND: "no-such-run", BAD_INPUT: "../etc/passwd"}.get(failure, world.running_run)
    code, err = await _run(["diagnose", "--local", execution_id], capsys)
    assert code == EXPECTED[failure], err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("failure", [UNREACHABLE, UNAUTHORIZED, NOT_FOUND, CONFLICT, BAD_INPUT])
async def test_playbook_run(
    world: World,
    failure: str,
    dry_run: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use(monkeypatch, world, failure)
    execution_id = {NOT_FOUND: "no-such-run", CONFLICT: world.finished_run}.get(failure, world.running_run)
    argv = ["playbook", "run", "cancel", "--local", "--execution", execution_id]
    if failure == BAD_INPUT:
        argv += ["--param", "no-equals-sign"]
    code, err = await _run([*argv, "--dry-run"] if dry_run else argv, capsys)
    assert code == EXPECTED[failure], err
    if failure == CONFLICT:  # refused by its state: cancelling a finished run
        status = (await world.orch.api("GET", f"/executions/{world.finished_run}")).json()["status"]
        assert status == "completed"


@pytest.mark.parametrize("command", ["approve", "deny"])
@pytest.mark.parametrize("failure", [UNREACHABLE, UNAUTHORIZED, NOT_FOUND, CONFLICT, BAD_INPUT])
async def test_approve_and_deny(
    world: World,
    command: str,
    failure: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use(monkeypatch, world, failure)
    approval_id = {NOT_FOUND: "apr_doesnotexist0", CONFLICT: world.decided_id, BAD_INPUT: "../x"}.get(
        failure, world.approval_id
    )
    code, err = await _run([command, approval_id], capsys)
    assert code == EXPECTED[failure], err


@pytest.mark.parametrize("failure", [UNREACHABLE, UNAUTHORIZED])
async def test_sweep(
    world: World, failure: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, world, failure)
    code, err = await _run(["sweep", "--local"], capsys)
    assert code == EXPECTED[failure], err


@pytest.mark.parametrize("failure", [UNREACHABLE, BAD_INPUT])
async def test_incidents(
    failure: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if failure == UNREACHABLE:
        monkeypatch.setenv(
            "GL_WATCHDOG_DATABASE_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/watchdog"
        )
    argv = ["incidents", "list", "--local"] + (["--status", "stuck"] if failure == BAD_INPUT else [])
    code, err = await _run(argv, capsys)
    assert code == EXPECTED[failure], err


@pytest.mark.parametrize("failure", [UNREACHABLE, UNAUTHORIZED, NOT_FOUND, BAD_INPUT])
async def test_incidents_through_the_api(
    world: World, failure: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, world, failure)
    incident = {NOT_FOUND: "2147483647", BAD_INPUT: "-1"}.get(failure, "1")
    code, err = await _run(["incidents", "show", incident], capsys)
    assert code == EXPECTED[failure], err
    if failure != NOT_FOUND:
        argv = ["incidents", "list"] + (["--since", "yesterday"] if failure == BAD_INPUT else [])
        code, err = await _run(argv, capsys)
        assert code == EXPECTED[failure], err
