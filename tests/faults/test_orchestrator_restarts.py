"""The orchestrator killed and restarted mid-run and mid-resume (issue 10): SIGTERM and SIGKILL, in the
embedded mode (SQLite, in-process locks) and in production mode (PostgreSQL + Redis), with a real
watchdog (real diagnosis, the shipped `interrupted-run` rule, recommend mode) driven sweep by sweep.

- SIGTERM mid-run: the run is left `interrupted`; the README's flow — a sweep opens an incident, the
  diagnosis names it `interrupted`, the policy plans `resume`, on-call approves — resumes it on the first
  try (no `stale_fencing_token`), and the incident is resolved once the run completes.
- SIGKILL mid-run: the restarted replica takes the run over on the first try (no declined takeover)
  and the run completes; the sweeps open nothing.
- SIGTERM mid-resume (the orchestrator stops while the watchdog verifies its resume): the run is left
  interrupted again and the incident is escalated, clearly (verification failed), never left open.
- SIGKILL mid-resume: the restarted replica takes the resumed run over and the verification that was
  waiting for it resolves the incident.

In every case the resume is applied once (its action recorded once) and every incident ends final or
escalated.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres_database
from tests.faults.orchestrator_serve import TOKEN, OrchestratorServe
from watchdog.approvals import Decision
from watchdog.assembly import Watchdog, build_watchdog
from watchdog.policy import parse_policy
from watchdog.records import Incident
from watchdog.settings import Mode, WatchdogSettings

pytestmark = [pytest.mark.slow, pytest.mark.redis]

# The shipped interrupted-run rule, with a verification short enough for a test.
POLICY = {
    "playbooks": {
        "resume": {"risk": "medium", "requires_approval": True, "params": {"verify_timeout_seconds": 20}}
    },
    "rules": [
        {
            "name": "interrupted-run",
            "when": {"execution_status": ["interrupted", "failed"]},
            "playbook": "resume",
        }
    ],
}


@dataclass
class Stack:
    serve: OrchestratorServe
    wd: Watchdog

    async def settle(self) -> None:
        async with asyncio.timeout(90):
            await self.wd.jobs.wait_idle()

    async def incident(self, incident_id: int) -> Incident:
        return await self.wd.incidents.get(incident_id)

    async def approve_the_resume(self, execution_id: str) -> Incident:
        """The README's interrupted-run flow up to on-call's approval; the remediation then runs as a job."""
        report = await self.wd.sweeper.sweep_once()
        [incident] = [i for i in report.opened if i.execution_id == execution_id]
        await self.settle()
        waiting = await self.incident(incident.id)
        assert waiting.status == "awaiting_approval", waiting.summary
        assert waiting.plan is not None and waiting.plan.playbook == "resume"
        [prompt] = (await self.wd.incidents.detail(incident.id)).approvals
        decided = await self.wd.approvals.decide(
            prompt.id, Decision.APPROVE, actor="on-call", authenticated=True
        )
        self.wd.responder.start_decision(decided)
        return waiting


@contextlib.asynccontextmanager
async def databases(mode: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    if mode == "embedded":
        yield (
            f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}",
            f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}",
        )
        return
    async with fresh_postgres_database() as orchestrator_db, fresh_postgres_database() as watchdog_db:
        yield orchestrator_db, watchdog_db


@pytest.fixture(params=["embedded", "postgres+redis"])
async def stack(
    request: pytest.FixtureRequest, _no_pending_tasks: None, tmp_path: Path, redis_url: str
) -> AsyncIterator[Stack]:
    mode = request.param
    redis = None if mode == "embedded" else redis_url
    async with databases(mode, tmp_path) as (orchestrator_db, watchdog_db):
        serve = OrchestratorServe(tmp_path, orchestrator_db, redis)
        serve.start()
        settings = WatchdogSettings(
            database_url=watchdog_db,
            redis_url=redis,
            orchestrator_url=serve.url,
            orchestrator_token=TOKEN,
            orchestrator_timeout_seconds=5,
            mode=Mode.RECOMMEND,
            for_duration_seconds=0,
            step_timeout_seconds=5,
            api_tokens=["fault-watchdog-token-0123456789"],
            approval_signing_key="r" * 32,
        )
        wd = await build_watchdog(settings, policy=parse_policy(POLICY), poll_interval_seconds=0.2)
        try:
            yield Stack(serve, wd)
        finally:
            await wd.aclose(grace_seconds=5)
            await serve.close()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_run_killed_mid_run_resumes_on_the_first_try(stack: Stack, how: str) -> None:
    execution_id = await stack.serve.start_paused_run()
    stack.serve.stop(signal.Signals[how])
    stack.serve.start()
    if how == "SIGTERM":
        assert await stack.serve.status(execution_id) == "interrupted"
        incident = await stack.approve_the_resume(execution_id)
        await stack.settle()
        final = await stack.incident(incident.id)
        assert final.status == "resolved", final.summary
        actions = (await stack.wd.incidents.detail(incident.id)).actions
        assert [(a.step, a.state) for a in actions] == [("resume", "succeeded")]
        assert actions[0].result is not None and "load" in actions[0].result.get("nodes_skipped", [])
    else:  # the restarted replica takes it over by itself
        await stack.serve.wait_for(execution_id, lambda record, _: record["status"] == "completed")
        assert f"takeover of {execution_id} declined" not in stack.serve.log()
        report = await stack.wd.sweeper.sweep_once()
        assert report.opened == []
    assert await stack.serve.status(execution_id) == "completed"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_run_killed_mid_resume_ends_resolved_or_clearly_escalated(stack: Stack, how: str) -> None:
    execution_id = await stack.serve.start_paused_run()
    stack.serve.stop(signal.SIGTERM)
    stack.serve.start()
    incident = await stack.approve_the_resume(execution_id)
    # The watchdog resumed the run and waits for it in `verifying`: the orchestrator goes down again.
    await stack.serve.wait_for(
        execution_id,
        lambda record, trace: (
            record["status"] == "running" and trace["node_traces"]["pause"]["status"] == "running"
        ),
    )
    stack.serve.stop(signal.Signals[how])
    stack.serve.start()
    await stack.settle()
    final = await stack.incident(incident.id)
    actions = (await stack.wd.incidents.detail(incident.id)).actions
    assert [(a.step, a.state) for a in actions] == [("resume", "succeeded")]  # resumed once, never again
    if how == "SIGTERM":
        assert final.status == "escalated" and "verification failed" in (final.summary or "")
        assert await stack.serve.status(execution_id) == "interrupted"
        again = await stack.wd.sweeper.sweep_once()
        assert again.opened == [] and again.escalated == [execution_id]  # on-call owns it now
    else:
        assert final.status == "resolved", final.summary
        assert await stack.serve.status(execution_id) == "completed"
