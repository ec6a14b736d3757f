"""`gl-watchdog playbook run --local` (a subprocess) and the remediation loop's refusals with the real
playbooks against the real orchestrator service: rate limit reached, circuit open, expired approval."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from tests.orchestrator.service_harness import TOKEN
from tests.playbooks.conftest import Env, gate_dag
from tests.watchdog.conftest import FakeClock
from watchdog.approvals import Decision
from watchdog.incidents import IncidentService
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))


async def cli(env: Env, *args: str, database_url: str) -> tuple[int, str]:
    environment = {
        **os.environ,
        "GL_WATCHDOG_ORCHESTRATOR_URL": env.orch.base_url,
        "GL_WATCHDOG_ORCHESTRATOR_TOKEN": TOKEN,
        "GL_WATCHDOG_DATABASE_URL": database_url,
    }
    proc = await asyncio.create_subprocess_exec(
        GL_WATCHDOG, *args, env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode()


async def test_playbook_run_dry_run_changes_nothing(env: Env, tmp_path: Path) -> None:
    execution_id = await env.run(gate_dag("cli-dry"))
    await env.wait_running_node(execution_id, "stuck")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    code, out = await cli(
        env, "playbook", "run", "cancel", "--local", "--execution", execution_id, "--dry-run", database_url=db
    )
    assert code == 0, out
    assert "preconditions: ok" in out and f"cancel: cancel execution {execution_id}" in out
    assert "dry run: nothing was changed" in out
    assert (await env.client.get_execution(execution_id)).status == "running"
    env.gates.open("cli-dry")


async def test_playbook_run_applies_and_verifies(env: Env, tmp_path: Path) -> None:
    execution_id = await env.run(
        emissions_dag(dag_id="cli-run", log_interval_seconds=0.2), emissions_demo_input()
    )
    await env.wait_running_node(execution_id, "scope2")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    args = [
        "playbook",
        "run",
        "restart_agent",
        "--local",
        "--execution",
        execution_id,
        "--param",
        "agent_id=emissions.scope2",
    ]
    code, out = await cli(env, *args, "--param", "verify_timeout_seconds=20", database_url=db)
    assert code == 0, out
    assert "restart_worker: done" in out and "verified: yes" in out
    # Run again: the same manual incident's step is already done, so nothing is repeated.
    code, out = await cli(env, *args, database_url=db)
    assert code == 1 and "run already finished (status completed)" in out
    agents = await env.client.list_agents()
    assert next(a.restarts for a in agents if a.agent_id == "emissions.scope2") == 1


async def test_playbook_run_refusal_and_bad_params_exit_non_zero(env: Env, tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    execution_id = await env.run(gate_dag("cli-done"))
    env.gates.open("cli-done")
    await env.orch.wait_status(execution_id, "completed")
    code, out = await cli(
        env, "playbook", "run", "cancel", "--local", "--execution", execution_id, database_url=db
    )
    assert code == 1 and "REFUSED: run already finished" in out
    code, out = await cli(
        env, "playbook", "run", "restart_agent", "--local", "--execution", execution_id, database_url=db
    )
    assert code == 2 and "invalid params for restart_agent: agent_id: Field required" in out  # bad input
    assert "Traceback" not in out
    code, out = await cli(env, "playbook", "run", "reboot", "--local", "--execution", "x", database_url=db)
    assert code == 2 and "unknown playbook 'reboot'" in out


async def test_playbook_run_is_refused_while_the_circuit_breaker_is_open(env: Env, tmp_path: Path) -> None:
    execution_id = await env.run(
        emissions_dag(dag_id="cli-breaker", log_interval_seconds=0.2), emissions_demo_input()
    )
    await env.wait_running_node(execution_id, "scope2")
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    store = await WatchdogStore.open(db)
    try:  # three failed remediations in the last hour: the default policy's breaker is open
        async with store.transaction() as tx:
            for _ in range(3):
                await tx.add_rate_event("remediation_failed", "*")
    finally:
        await store.close()
    code, out = await cli(
        env, "playbook", "run", "restart_agent", "--local", "--execution", execution_id, database_url=db
    )
    assert code == 1, out
    assert "preconditions: ok" in out and "refused: circuit open: 3 failed remediations" in out
    assert all(a.restarts == 0 for a in await env.client.list_agents())
    assert (await env.client.get_execution(execution_id)).status == "running"
    await env.client.cancel(execution_id)


# -- the loop's refusals with the real playbooks --------------------------------------------------------

POLICY = {
    "playbooks": {"restart_agent": {"requires_approval": False, "params": {"verify_timeout_seconds": 20}}},
    "rules": [{"name": "ext", "when": {"likely_cause": ["external_api_slow"]}, "playbook": "restart_agent"}],
    "limits": {
        "agent_restarts_per_agent_per_hour": 1,
        "circuit_breaker": {"failures": 2, "window_seconds": 600},
    },
}


@pytest.fixture
def loop(env: Env) -> Responder:
    return env.responder(POLICY, Mode.AUTO)


async def stuck(env: Env, dag_id: str) -> tuple[int, Diagnosis]:
    execution_id = await env.run(
        emissions_dag(dag_id=dag_id, log_interval_seconds=0.2), emissions_demo_input()
    )
    await env.wait_running_node(execution_id, "scope2")
    opened = await env.incidents.open_or_join(
        execution_id, dag_id=dag_id, source="sweep", detection_source="api"
    )
    now = datetime.now(UTC)
    diagnosis = Diagnosis(
        execution_id=execution_id,
        started_at=now,
        completed_at=now,
        findings=[
            Finding(step=7, name="external", status=StepStatus.PROBLEM, summary="waiting on external call")
        ],
        likely_cause="external_api_slow",
        cause_evidence=["node scope2 waits on emission-factor-api"],
        agent_id="emissions.scope2",
        stuck_node_id="scope2",
        dag_id=dag_id,
    )
    return opened.incident.id, diagnosis


async def test_real_restart_then_rate_limit_refuses_the_next(env: Env, loop: Responder) -> None:
    first_id, first = await stuck(env, "rl-1")
    assert (await loop.handle_diagnosed(first_id, first)).status == "resolved"
    # The restart left the worker a healthy connection, so a second run would finish within ~50 ms and
    # the precondition (a node running on the agent) would race it. Wedge the emission-factor API again
    # (drop the worker's connection without a restart, which would count against the limit).
    env.orch.service.registry._workers["emissions.scope2"].state.clear()
    second_id, second = await stuck(env, "rl-2")
    outcome = await loop.handle_diagnosed(second_id, second)
    assert outcome.status == "escalated"
    assert "rate limit reached: agent emissions.scope2 restarted 1 times in the last hour" in outcome.detail
    agents = await env.client.list_agents()
    assert next(a.restarts for a in agents if a.agent_id == "emissions.scope2") == 1
    assert (await env.client.get_execution(second.execution_id)).status == "running"
    await env.client.cancel(second.execution_id)


async def test_circuit_open_refuses_with_the_real_playbook(env: Env, loop: Responder) -> None:
    async with env.store.transaction() as tx:
        for _ in range(2):
            await tx.add_rate_event("remediation_failed", "*")
    incident_id, diagnosis = await stuck(env, "circuit")
    outcome = await loop.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated" and outcome.detail.startswith("circuit open")
    assert (await env.client.list_agents()) and all(a.restarts == 0 for a in await env.client.list_agents())
    await env.client.cancel(diagnosis.execution_id)


async def test_expired_approval_never_acts_with_the_real_playbook(env: Env) -> None:
    clock = FakeClock(datetime.now(UTC))
    responder = env.responder(POLICY, Mode.RECOMMEND, redis=False, clock=clock, approval_ttl_seconds=60)
    incident_id, diagnosis = await stuck(env, "expiry")
    assert (await responder.handle_diagnosed(incident_id, diagnosis)).status == "awaiting_approval"
    clock.advance(61)
    [outcome] = await responder.expire_approvals()
    assert outcome.status == "escalated" and "expired" in outcome.detail
    assert all(a.restarts == 0 for a in await env.client.list_agents())
    assert (await env.client.get_execution(diagnosis.execution_id)).status == "running"
    await env.client.cancel(diagnosis.execution_id)


# -- remediation cli -------------------------------------------------------------------------------------
# `gl-watchdog playbook run` by hand, as the on-call uses it mid-incident (a subprocess, real services).
#
# The by-hand run records its work on the execution's incident like the loop does: it does not start
# while the watchdog is already acting on that incident, and it leaves the incident resolved or
# escalated (not open for ever). Parameters the run itself names (the stuck node's agent, its DAG and
# node) need not be typed.


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
        "--local",
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
    code, out = await cli(
        env, "playbook", "run", "cancel", "--local", "--execution", execution_id, database_url=db
    )
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
        env, "playbook", "run", "release_lock", "--local", "--execution", execution_id, database_url=db
    )
    assert code == 1, out
    assert "preconditions: REFUSED" in out and "plan, were the preconditions met" in out
    assert [status for status, _ in await _incident_of(db, execution_id)] == ["closed"]
    env.gates.open("rv-cli-refused")


async def test_missing_params_say_how_to_give_them(env: Env, tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}"
    code, out = await cli(
        env,
        "playbook",
        "run",
        "increase_node_timeout",
        "--local",
        "--execution",
        "no-such-run",
        database_url=db,
    )
    assert code == 2, out  # bad input, before the execution is looked up
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
        *("playbook", "run", "restart_agent", "--local", "--execution", execution_id),
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


# -- remediation loop ------------------------------------------------------------------------------------
# The remediation loop with the real playbooks and the real orchestrator: a run that finishes on its
# own while on-call is still reading the prompt must not page them as a failed remediation.


APPROVAL_POLICY = {
    "playbooks": {"restart_agent": {"requires_approval": True, "params": {"verify_timeout_seconds": 10}}},
    "rules": [
        {"name": "agent", "when": {"likely_cause": ["agent_unresponsive"]}, "playbook": "restart_agent"}
    ],
}


async def test_a_run_that_completes_before_the_approval_is_resolved_and_nothing_acts(env: Env) -> None:
    execution_id = await env.run(gate_dag("rv-self-heal"))
    await env.wait_running_node(execution_id, "stuck")
    loop = env.responder(APPROVAL_POLICY, Mode.RECOMMEND)
    approvals = loop.approvals
    opened = await env.incidents.open_or_join(
        execution_id, dag_id="rv-self-heal", source="sweep", detection_source="api"
    )
    now = datetime.now(UTC)
    diagnosis = Diagnosis(
        execution_id=execution_id,
        started_at=now,
        completed_at=now,
        findings=[Finding(step=4, name="agent", status=StepStatus.PROBLEM, summary="agent hung")],
        likely_cause="agent_unresponsive",
        cause_evidence=["agent test.gate answers nothing"],
        agent_id="test.gate",
        stuck_node_id="stuck",
        dag_id="rv-self-heal",
    )
    outcome = await loop.handle_diagnosed(opened.incident.id, diagnosis)
    assert outcome.status == "awaiting_approval", outcome
    [pending] = await _approvals(env, opened.incident.id)
    # The agent answers after all and the run completes while the prompt is open.
    env.gates.open("rv-self-heal")
    assert await _wait_finished(env, execution_id) == "completed"
    approval = await approvals.decide(pending, Decision.APPROVE, actor="alice", authenticated=True)
    outcome = await loop.on_decision(approval)
    assert outcome.status == "resolved", outcome
    assert "completed by itself" in outcome.detail and "nothing was done" in outcome.detail
    detail = await env.incidents.detail(opened.incident.id)
    assert detail.incident.status == "resolved"
    assert detail.actions == []
    agents = await env.client.list_agents()
    assert next(a.restarts for a in agents if a.agent_id == "test.gate") == 0


async def _approvals(env: Env, incident_id: int) -> list[str]:
    async with env.store.transaction() as tx:
        return [a.id for a in await tx.list_approvals(incident_id=incident_id)]


async def _wait_finished(env: Env, execution_id: str) -> str:
    async with asyncio.timeout(10):  # bounded poll of the real service
        while True:
            status = (await env.client.get_execution(execution_id)).status
            if status in ("completed", "failed", "cancelled"):
                return status
            await asyncio.sleep(0.05)
