"""`gl-watchdog playbook run` by hand, as the on-call uses it mid-incident (a subprocess, real services).

The by-hand run records its work on the execution's incident like the loop does: it does not start
while the watchdog is already acting on that incident, and it leaves the incident resolved or
escalated (not open for ever). Parameters the run itself names (the stuck node's agent, its DAG and
node) need not be typed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from tests.orchestrator.test_service_harness import TOKEN
from tests.playbooks.conftest import Env, gate_dag
from tests.playbooks.test_cli_and_loop import GL_WATCHDOG, cli
from watchdog.incidents import IncidentService
from watchdog.store import WatchdogStore


async def _incident_of(db: str, execution_id: str) -> list[tuple[str, str | None]]:
    store = await WatchdogStore.open(db)
    try:
        return [(i.status, i.summary) for i in await store.list_incidents() if i.execution_id == execution_id]
    finally:
        await store.close()


async def test_a_verified_run_by_hand_resolves_its_incident_and_names_the_agent_itself(
    env: Env, tmp_path: Path
) -> None:
    execution_id = await env.run(
        emissions_dag(dag_id="rv-cli-run", log_interval_seconds=0.2), emissions_demo_input()
    )
    await env.wait_running_node(execution_id, "scope2")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    code, out = await cli(
        env,
        "playbook",
        "run",
        "restart_agent",
        "--execution",
        execution_id,
        "--param",
        "verify_timeout_seconds=20",
        database_url=db,
    )
    assert code == 0, out
    assert "params from the run: agent_id=emissions.scope2" in out
    assert "restart_worker: done\n" in out  # not "done done"
    [(status, summary)] = await _incident_of(db, execution_id)
    assert status == "resolved"
    assert summary is not None and summary.startswith("resolved by restart_agent (by hand)")


async def test_a_run_by_hand_does_not_start_while_the_watchdog_acts_on_the_incident(
    env: Env, tmp_path: Path
) -> None:
    execution_id = await env.run(gate_dag("rv-cli-busy"))
    await env.wait_running_node(execution_id, "stuck")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    store = await WatchdogStore.open(db)
    try:
        incidents = IncidentService(store)
        opened = await incidents.open_or_join(
            execution_id, dag_id="rv-cli-busy", source="sweep", detection_source="api"
        )
        await incidents.transition(opened.incident.id, "remediating", actor="watchdog", reason="acting")
    finally:
        await store.close()
    code, out = await cli(env, "playbook", "run", "cancel", "--execution", execution_id, database_url=db)
    assert code == 1, out
    assert "already acting on it" in out
    assert (await env.client.get_execution(execution_id)).status == "running"
    env.gates.open("rv-cli-busy")


async def test_a_refused_run_by_hand_leaves_no_open_incident_behind(env: Env, tmp_path: Path) -> None:
    execution_id = await env.run(gate_dag("rv-cli-refused"))
    await env.wait_running_node(execution_id, "stuck")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    # No Redis configured for the CLI: release_lock refuses, with the reason.
    code, out = await cli(
        env, "playbook", "run", "release_lock", "--execution", execution_id, database_url=db
    )
    assert code == 1, out
    assert "preconditions: REFUSED" in out and "plan, were the preconditions met" in out
    assert [status for status, _ in await _incident_of(db, execution_id)] == ["closed"]
    env.gates.open("rv-cli-refused")


async def test_missing_params_say_how_to_give_them(env: Env, tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    code, out = await cli(
        env, "playbook", "run", "increase_node_timeout", "--execution", "no-such-run", database_url=db
    )
    assert code == 1, out
    assert "dag_id: Field required" in out and "--param KEY=VALUE" in out


async def test_ctrl_c_during_a_run_by_hand_escalates_instead_of_leaving_it_remediating(
    env: Env, tmp_path: Path
) -> None:
    execution_id = await env.run(gate_dag("rv-cli-ctrl-c"))
    await env.wait_running_node(execution_id, "stuck")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    environment = {
        **os.environ,
        "GL_WATCHDOG_ORCHESTRATOR_URL": env.orch.base_url,
        "GL_WATCHDOG_ORCHESTRATOR_TOKEN": TOKEN,
        "GL_WATCHDOG_DATABASE_URL": db,
    }
    proc = await asyncio.create_subprocess_exec(
        GL_WATCHDOG,
        *("playbook", "run", "restart_agent", "--execution", execution_id),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = b""
    async with asyncio.timeout(30):  # bounded: a real process
        while b"verifying" not in seen:  # the agent was restarted; the run is stuck on the gate again
            line = await proc.stdout.readline()
            assert line, seen.decode()
            seen += line
        proc.send_signal(signal.SIGINT)
        rest, _ = await proc.communicate()
    text = (seen + rest).decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "interrupted" in text
    [(status, summary)] = await _incident_of(db, execution_id)
    assert status == "escalated", summary
    assert summary is not None and "interrupted (Ctrl-C)" in summary
    env.gates.open("rv-cli-ctrl-c")
