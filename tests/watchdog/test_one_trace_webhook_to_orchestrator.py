"""One trace from the Alertmanager webhook through the orchestrator's resume (issue 14, "Logs and traces").

Both services run in this process on loopback: the real orchestrator service (its API, store and
in-memory span exporter, `tests.orchestrator.service_harness`) with a run whose node failed once,
and the real watchdog (its HTTP app, intake, diagnosis jobs, responder with the shipped policy,
`auto` mode, resume allowed without approval) exporting to its own in-memory exporter. One webhook
delivery for the run opens the incident; the diagnosis finds the run failed, the shipped
`interrupted-run` rule resumes it, the resume playbook POSTs to the orchestrator and the run completes.
The spans of both exporters must form one trace:

    watchdog.intake
    ├── watchdog.diagnosis
    ├── watchdog.plan
    └── watchdog.remediation
        └── watchdog.action (resume / resume)
            └── POST /api/v1/orchestrator/executions/{execution_id}/resume   (orchestrator-service)
                └── dag.execution (the resumed run)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_core.agents import AgentContext
from orchestrator_core.tracing import EXECUTION_SPAN
from tests.orchestrator.service_harness import TOKEN, Harness, make_registry, make_settings, running_service
from tests.watchdog.conftest import WATCHDOG_TOKEN, make_diagnosis
from tests.watchdog.webhook import alert, payload
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.policy import DEFAULT_POLICY_FILE
from watchdog.settings import Mode, WatchdogSettings
from watchdog.tracing import DIAGNOSIS_SPAN, INTAKE_SPAN, PLAN_SPAN, REMEDIATION_SPAN
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.playbook import ACTION_SPAN

RESUME_ROUTE = "POST /api/v1/orchestrator/executions/{execution_id}/resume"
WITHIN = 30.0


class FailsOnce:
    """An in-process agent `test.fails_once`: its first attempt fails (the run stops `failed`), the
    next ones succeed."""

    def __init__(self) -> None:
        self.attempts = 0

    async def agent(self, ctx: AgentContext) -> Any:
        self.attempts += 1
        if self.attempts == 1:
            raise RuntimeError("the first attempt fails")
        return {"attempt": self.attempts}


def policy_resuming_alone(tmp_path: Path) -> Path:
    """The shipped policy, with `resume` allowed without an approval (so `auto` acts at once)."""
    shipped = DEFAULT_POLICY_FILE.read_text(encoding="utf-8")
    resume = "  resume:\n    risk: medium\n    requires_approval: true\n"
    assert resume in shipped, "the shipped policy's resume entry changed: adapt this test"
    path = tmp_path / "policy.yaml"
    path.write_text(shipped.replace(resume, resume.replace("true", "false")), encoding="utf-8")
    return path


async def diagnose_failed_run(execution_id: str) -> Diagnosis:
    """What step 1 says of a run that stopped `failed`: the shipped `interrupted-run` rule resumes it."""
    made = make_diagnosis(execution_id, node="work", agent="test.fails_once", cause="unknown")
    step1 = Finding(
        step=1, name="execution", status=StepStatus.PROBLEM, summary="failed", evidence={"status": "failed"}
    )
    return made.model_copy(update={"findings": [step1, *made.findings[1:]]})


@pytest.fixture
async def orchestrator(_no_pending_tasks: None, database_url: str) -> AsyncIterator[Harness]:
    """Depends on `_no_pending_tasks` so that the leftover-task check runs after this teardown."""
    registry = make_registry(extra={"test.fails_once": FailsOnce().agent})
    async with running_service(make_settings(database_url), registry=registry, start_loop=True) as orch:
        yield orch


@pytest.fixture
async def watchdog(
    tmp_path: Path, orchestrator: Harness
) -> AsyncIterator[tuple[Watchdog, InMemorySpanExporter]]:
    settings = WatchdogSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}",
        orchestrator_url=orchestrator.base_url,
        orchestrator_token=TOKEN,
        api_tokens=[WATCHDOG_TOKEN],
        mode=Mode.AUTO,
        policy_file=policy_resuming_alone(tmp_path),
        max_run_age_seconds=None,
        step_timeout_seconds=5,
    )
    exporter = InMemorySpanExporter()
    wd = await build_watchdog(
        settings, diagnose=diagnose_failed_run, poll_interval_seconds=0.05, span_exporter=exporter
    )
    try:
        yield wd, exporter
    finally:
        await wd.aclose()


def _one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name}: {[s.name for s in spans]}"
    return found[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _trace(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def test_a_webhook_delivery_and_the_resume_it_leads_to_are_one_trace(
    orchestrator: Harness, watchdog: tuple[Watchdog, InMemorySpanExporter]
) -> None:
    wd, exporter = watchdog
    await orchestrator.register({"dag_id": "traced", "nodes": {"work": {"agent_id": "test.fails_once"}}})
    execution_id = (await orchestrator.execute("traced"))["execution_id"]
    await orchestrator.wait_status(execution_id, "failed")

    async with TestClient(TestServer(create_app(wd))) as http:
        response = await http.post(
            "/api/v1/alerts",
            json=payload(alert(execution_id, fingerprint=f"fp-{execution_id}", dag_id="traced")),
            headers={"Authorization": f"Bearer {WATCHDOG_TOKEN}"},
        )
        assert response.status == 200, await response.text()
        [outcome] = (await response.json())["alerts"]
    assert outcome["outcome"] == "opened"
    async with asyncio.timeout(WITHIN):
        await wd.jobs.wait_idle()
    incident = await wd.incidents.get(outcome["incident_id"])
    assert incident.status == "resolved", incident
    assert (await orchestrator.service.engine.get_execution(execution_id)).status == "completed"

    ours = exporter.get_finished_spans()
    intake = _one(ours, INTAKE_SPAN)
    diagnosis = _one(ours, DIAGNOSIS_SPAN)
    plan = _one(ours, PLAN_SPAN)
    remediation = _one(ours, REMEDIATION_SPAN)
    action = _one(ours, ACTION_SPAN)
    theirs = orchestrator.spans.get_finished_spans()
    resume = _one(theirs, RESUME_ROUTE)
    # the resumed run (the failed one's span, ended before, started a trace of its own)
    run = _one(
        [span for span in theirs if (span.start_time or 0) >= (resume.start_time or 0)], EXECUTION_SPAN
    )

    assert intake.parent is None
    traced = (intake, diagnosis, plan, remediation, action, resume, run)
    assert {_trace(span) for span in traced} == {_trace(intake)}
    assert _parent_of(diagnosis) == _parent_of(plan) == _parent_of(remediation) == _id(intake)
    assert _parent_of(action) == _id(remediation)
    assert _parent_of(resume) == _id(action)
    assert _parent_of(run) == _id(resume)
    assert dict(action.attributes or {}) == {
        "playbook": "resume",
        "action": "resume",
        "incident_id": incident.id,
        "status": "done",
    }
    assert (plan.attributes or {})["playbook"] == "resume"
    assert resume.resource.attributes["service.name"] == "orchestrator-service"
    assert (resume.attributes or {})["execution_id"] == execution_id
    assert (resume.attributes or {})["http.response.status_code"] == 200
