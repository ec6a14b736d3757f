"""Replay: a stored incident's diagnosis planned again under another policy, acting on nothing
(no orchestrator call, no audit entry, no rate event), from the API of `watchdog.replay` and from
`gl-watchdog replay`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import respx

from tests.watchdog.conftest import FakeClock
from tests.watchdog.recording_playbook import POLICY, RecordingNotifier, RecordingPlaybook
from watchdog.approvals import ApprovalService
from watchdog.assembly import build_responder
from watchdog.cli import main
from watchdog.exit_codes import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.policy import parse_policy
from watchdog.replay import replay_incident, replay_window
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosticContext
from watchdog_sdk.registry import Registry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ESCALATE = {
    "rules": [{"name": "humans-only", "when": {"likely_cause": ["agent_unresponsive"]}, "playbook": None}]
}


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    opened = await WatchdogStore.open(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}", clock=clock)
    yield opened
    await opened.close()


async def planned_incident(
    store: WatchdogStore, clock: FakeClock, ctx: DiagnosticContext, playbook: RecordingPlaybook
) -> int:
    """An incident diagnosed `agent_unresponsive` and planned (restart_agent, awaiting approval)."""
    incidents = IncidentService(store)
    responder = build_responder(
        store=store,
        incidents=incidents,
        approvals=ApprovalService(store, b"s" * 32, ttl_seconds=600, public_url="http://wd", clock=clock),
        notifier=RecordingNotifier(),
        policy=parse_policy(POLICY),
        registry=Registry([playbook]),
        clients=ctx.clients,
        mode=Mode.RECOMMEND,
        clock=clock,
        jobs=JobTracker(),
    )
    opened = await incidents.open_or_join("e1", dag_id="d", source="sweep", detection_source="api")
    diagnosis = Diagnosis(
        execution_id="e1",
        started_at=T0,
        completed_at=T0,
        findings=[Finding(step=4, name="agent", status=StepStatus.PROBLEM, summary="agent hung")],
        likely_cause="agent_unresponsive",
        cause_evidence=["agent calc answers nothing"],
        agent_id="calc",
    )
    await incidents.update(
        opened.incident.id, kind="diagnosis", actor="t", diagnosis=diagnosis.model_dump(mode="json")
    )
    assert (await responder.handle_diagnosed(opened.incident.id, diagnosis)).status == "awaiting_approval"
    return opened.incident.id


async def counts(store: WatchdogStore, incident_id: int) -> tuple[int, int]:
    async with store.transaction() as tx:
        audit = len(await tx.list_audit(incident_id))
        rate = await tx.count_rate_events("remediation", "*", datetime(2000, 1, 1, tzinfo=UTC))
    return audit, rate


async def test_two_policies_give_two_plans_and_nothing_acts(
    store: WatchdogStore, clock: FakeClock, make_ctx: Callable[..., DiagnosticContext], orch: respx.MockRouter
) -> None:
    playbook = RecordingPlaybook()
    incident_id = await planned_incident(store, clock, make_ctx(), playbook)
    before = await counts(store, incident_id)
    calls_before = len(orch.calls)
    registry = Registry([playbook])

    same = await replay_incident(
        store, incident_id, policy=parse_policy(POLICY), registry=registry, mode=Mode.RECOMMEND, clock=clock
    )
    assert same.replayed.playbook == "restart_agent" and same.replayed.requires_approval
    assert same.replayed.params["agent_id"] == "calc" and not same.changed and same.limits_refusal == ""

    other = await replay_incident(
        store, incident_id, policy=parse_policy(ESCALATE), registry=registry, mode=Mode.RECOMMEND, clock=clock
    )
    assert other.replayed.playbook is None and other.replayed.rule == "humans-only" and other.changed
    assert other.recorded is not None and other.recorded.playbook == "restart_agent"

    assert await counts(store, incident_id) == before  # no audit entry, no budget used
    assert len(orch.calls) == calls_before and playbook.applied == 0 and playbook.side_effects == 0
    assert (await IncidentService(store).get(incident_id)).status == "awaiting_approval"


async def test_replay_reports_what_the_budgets_would_refuse(
    store: WatchdogStore, clock: FakeClock, make_ctx: Callable[..., DiagnosticContext]
) -> None:
    playbook = RecordingPlaybook()
    incident_id = await planned_incident(store, clock, make_ctx(), playbook)
    async with store.transaction() as tx:
        await tx.add_rate_event("remediation", "*", clock.now())
    no_budget = {**POLICY, "limits": {"remediations_per_hour": 1}}
    result = await replay_incident(
        store,
        incident_id,
        policy=parse_policy(no_budget),
        registry=Registry([playbook]),
        mode=Mode.AUTO,
        clock=clock,
    )
    assert result.limits_refusal == "rate limit reached: 1 remediations in the last hour (budget 1)"


async def test_gl_watchdog_replay_prints_both_plans_and_exits_by_kind(
    tmp_path: Path,
    store: WatchdogStore,
    clock: FakeClock,
    make_ctx: Callable[..., DiagnosticContext],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    incident_id = await planned_incident(store, clock, make_ctx(), RecordingPlaybook())
    monkeypatch.setenv("GL_WATCHDOG_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}")
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "escalate.yaml"
    policy.write_text(json.dumps(ESCALATE))
    assert (
        await asyncio.to_thread(
            main, ["replay", str(incident_id), "--policy", str(policy), "--format", "json"]
        )
        == EXIT_OK
    )
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert document["recorded"]["playbook"] == "restart_agent" and document["replayed"]["playbook"] is None
    assert document["changed"] is True
    monkeypatch.setenv("COLUMNS", "200")  # a table wraps its cells at the terminal's width (80 in a pipe)
    argv = ["replay", str(incident_id), "--policy", str(policy), "-o", "table"]
    assert await asyncio.to_thread(main, argv) == EXIT_OK
    out = capsys.readouterr().out
    assert 'restart_agent {"agent_id": "calc"' in out and "escalate (rule humans-only)" in out
    assert out.endswith("1 incident(s) replayed, 1 would change\n")
    assert await asyncio.to_thread(main, ["replay", "999", "--policy", str(policy)]) == EXIT_NOT_FOUND
    opened = await IncidentService(store).open_or_join(
        "e2", dag_id="d", source="sweep", detection_source="api"
    )
    assert (
        await asyncio.to_thread(main, ["replay", str(opened.incident.id), "--policy", str(policy)])
        == EXIT_FAILED
    )
    assert "has no diagnosis to replay" in capsys.readouterr().err
    # The window: the diagnosed incident is replayed, the undiagnosed one left out.
    # (opened at the fake clock's 2026-03-01; the command reads the real clock)
    argv = ["replay", "--all", "--since", "3650d", "--policy", str(policy), "--format", "json"]
    assert await asyncio.to_thread(main, argv) == EXIT_OK
    window = json.loads(capsys.readouterr().out)
    assert [item["incident_id"] for item in window] == [incident_id]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--policy", "p.yaml"], "give either INCIDENT_ID or --all --since DURATION"),
        (["replay", "1", "--all", "--since", "7d", "--policy", "p.yaml"], "give either INCIDENT_ID or --all"),
        (["replay", "--all", "--policy", "p.yaml"], "--all needs --since DURATION"),
    ],
)
def test_replay_needs_one_incident_or_a_window(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_bad_window_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--all", "--since", "7 days", "--policy", "p.yaml"]) == EXIT_USAGE
    assert "'7 days' is not a duration like 7d, 12h or 30m" in capsys.readouterr().err


async def test_a_window_replays_the_diagnosed_incidents_opened_in_it(
    store: WatchdogStore, clock: FakeClock, make_ctx: Callable[..., DiagnosticContext]
) -> None:
    playbook = RecordingPlaybook()
    incident_id = await planned_incident(store, clock, make_ctx(), playbook)
    await IncidentService(store).open_or_join("e2", dag_id="d", source="sweep", detection_source="api")
    kwargs: dict[str, Any] = {
        "policy": parse_policy(ESCALATE),
        "registry": Registry([playbook]),
        "mode": Mode.AUTO,
    }
    day = timedelta(days=1)
    [only] = await replay_window(store, day, clock=clock, **kwargs)  # e2 has no diagnosis
    assert only.incident_id == incident_id and only.replayed.playbook is None and only.changed
    clock.advance(2 * day.total_seconds())
    assert await replay_window(store, day, clock=clock, **kwargs) == []
