"""The remediation loop on the real store (SQLite and PostgreSQL), with a recording playbook.

The playbook here is a test double of our own `Playbook` interface (registered in an explicit
`Registry` under the name `restart_agent`), so these tests pin the loop's rules — approvals, limits,
circuit breaker, one in flight, audit before/after, resume after a crash — without an orchestrator.
The real playbooks against the real orchestrator are in tests/playbooks/.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.watchdog.conftest import FakeClock
from tests.watchdog.recording_playbook import POLICY, RecordingNotifier, RecordingPlaybook
from watchdog.approvals import ApprovalService, Decision
from watchdog.assembly import build_responder
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.policy import parse_policy
from watchdog.remediation_setup import ManualRun
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.ledger import idempotency_key
from watchdog_sdk.registry import Registry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Harness:
    def __init__(self, store: WatchdogStore, clock: FakeClock, mode: Mode, policy: dict[str, Any]) -> None:
        self.store = store
        self.clock = clock
        self.playbook = RecordingPlaybook()
        self.notifier = RecordingNotifier()
        self.metrics = WatchdogMetrics()
        self.incidents = IncidentService(store, self.metrics)
        self.approvals = ApprovalService(
            store, b"s" * 32, ttl_seconds=600, public_url="http://wd", clock=clock
        )
        self.orchestrator = OrchestratorClient("http://127.0.0.1:9", timeout=0.5)
        self.responder = build_responder(
            store=store,
            incidents=self.incidents,
            approvals=self.approvals,
            notifier=self.notifier,
            policy=parse_policy(policy),
            registry=Registry([self.playbook]),
            clients=Clients(orchestrator=self.orchestrator),
            mode=mode,
            clock=clock,
            jobs=JobTracker(),
            metrics=self.metrics,
        )
        self.remediation = self.responder.remediation

    async def incident(self, execution_id: str = "e1", agent: str = "calc") -> tuple[int, Diagnosis]:
        opened = await self.incidents.open_or_join(
            execution_id, dag_id="d", source="sweep", detection_source="api"
        )
        diagnosis = Diagnosis(
            execution_id=execution_id,
            started_at=T0,
            completed_at=T0,
            findings=[Finding(step=4, name="agent", status=StepStatus.PROBLEM, summary="agent hung")],
            likely_cause="agent_unresponsive",
            cause_evidence=[f"agent {agent} answers nothing for 12 min"],
            agent_id=agent,
        )
        return opened.incident.id, diagnosis

    async def kinds(self, incident_id: int) -> list[tuple[str, str]]:
        async with self.store.transaction() as tx:
            return [(a.kind, a.phase) for a in await tx.list_audit(incident_id)]


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    s = await WatchdogStore.open(database_url, clock=clock)
    yield s
    await s.close()


@pytest.fixture
async def auto(store: WatchdogStore, clock: FakeClock) -> AsyncIterator[Harness]:
    h = Harness(store, clock, Mode.AUTO, POLICY)
    yield h
    await h.orchestrator.aclose()


@pytest.fixture
async def recommend(store: WatchdogStore, clock: FakeClock) -> AsyncIterator[Harness]:
    h = Harness(store, clock, Mode.RECOMMEND, POLICY)
    yield h
    await h.orchestrator.aclose()


async def test_auto_mode_applies_verifies_and_resolves_with_full_audit(auto: Harness) -> None:
    incident_id, diagnosis = await auto.incident()
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "resolved"
    assert auto.playbook.side_effects == 1
    incident = await auto.incidents.get(incident_id)
    assert incident.status == "resolved"
    assert incident.plan is not None and incident.plan.playbook == "restart_agent"
    assert incident.plan.rationale.startswith("agent calc answers nothing for 12 min → restart_agent")
    assert incident.verification is not None and incident.verification["ok"]
    kinds = await auto.kinds(incident_id)
    for kind in ("preconditions", "apply", "verify"):
        assert (kind, "before") in kinds and (kind, "after") in kinds
        assert kinds.index((kind, "before")) < kinds.index((kind, "after"))
    assert kinds.count(("action", "before")) == 2 and kinds.count(("action", "after")) == 2
    assert auto.metrics.remediations.labels(playbook="restart_agent", outcome="resolved")._value.get() == 1


async def test_recommend_mode_asks_and_acts_only_after_approval(recommend: Harness) -> None:
    incident_id, diagnosis = await recommend.incident()
    outcome = await recommend.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "awaiting_approval"
    assert recommend.playbook.applied == 0
    [prompt] = recommend.notifier.prompts
    assert prompt.actions == ["restart calc"] and "decision=approve" in prompt.approve_url
    approval = await recommend.approvals.decide(
        prompt.approval_id, Decision.APPROVE, actor="alice", authenticated=True
    )
    outcome = await recommend.responder.on_decision(approval)
    assert outcome.status == "resolved" and recommend.playbook.side_effects == 1
    assert (await recommend.approvals.get(prompt.approval_id)).state == "used"
    # The same approval cannot drive a second remediation.
    again = await recommend.responder.on_decision(approval)
    assert again.status == "unchanged" and recommend.playbook.side_effects == 1


async def test_denied_approval_escalates_and_nothing_acts(recommend: Harness) -> None:
    incident_id, diagnosis = await recommend.incident()
    await recommend.responder.handle_diagnosed(incident_id, diagnosis)
    [prompt] = recommend.notifier.prompts
    approval = await recommend.approvals.decide(
        prompt.approval_id, Decision.DENY, actor="bob", authenticated=True
    )
    outcome = await recommend.responder.on_decision(approval)
    assert outcome.status == "escalated" and "denied by bob" in outcome.detail
    assert recommend.playbook.applied == 0
    assert (await recommend.incidents.get(incident_id)).status == "escalated"
    assert len(recommend.notifier.escalations) == 1


async def test_expired_approval_escalates_and_nothing_acts(recommend: Harness, clock: FakeClock) -> None:
    incident_id, diagnosis = await recommend.incident()
    await recommend.responder.handle_diagnosed(incident_id, diagnosis)
    [prompt] = recommend.notifier.prompts
    assert await recommend.responder.expire_approvals() == []  # not yet due
    clock.advance(601)
    [outcome] = await recommend.responder.expire_approvals()
    assert outcome.status == "escalated" and "expired" in outcome.detail
    assert recommend.playbook.applied == 0
    [escalation] = recommend.notifier.escalations
    assert escalation.incident_id == incident_id
    # A late approve cannot resurrect it.
    with pytest.raises(Exception, match="already expired"):
        await recommend.approvals.decide(
            prompt.approval_id, Decision.APPROVE, actor="late", authenticated=True
        )


async def test_execute_without_approval_is_refused_when_plan_needs_one(recommend: Harness) -> None:
    incident_id, diagnosis = await recommend.incident()
    await recommend.responder.handle_diagnosed(incident_id, diagnosis)
    outcome = await recommend.remediation.execute(incident_id)
    assert outcome.status == "unchanged" and "needs an approval" in outcome.detail
    assert recommend.playbook.applied == 0


async def test_agent_restart_rate_limit_holds_in_the_store(
    auto: Harness, store: WatchdogStore, clock: FakeClock
) -> None:
    for i in range(2):
        incident_id, diagnosis = await auto.incident(f"run-{i}")
        assert (await auto.responder.handle_diagnosed(incident_id, diagnosis)).status == "resolved"
    # A new Remediator (a restarted watchdog, or another replica) sees the same counts.
    fresh = Harness(store, clock, Mode.AUTO, POLICY)
    try:
        incident_id, diagnosis = await fresh.incident("run-3")
        outcome = await fresh.responder.handle_diagnosed(incident_id, diagnosis)
        assert outcome.status == "escalated"
        assert "rate limit reached: agent calc restarted 2 times in the last hour" in outcome.detail
        assert fresh.playbook.applied == 0
        # Another agent is not limited, and an hour later calc is allowed again.
        other_id, other = await fresh.incident("run-4", agent="intake")
        assert (await fresh.responder.handle_diagnosed(other_id, other)).status == "resolved"
        clock.advance(3601)
        later_id, later = await fresh.incident("run-5")
        assert (await fresh.responder.handle_diagnosed(later_id, later)).status == "resolved"
    finally:
        await fresh.orchestrator.aclose()


async def test_global_budget(store: WatchdogStore, clock: FakeClock) -> None:
    policy = {**POLICY, "limits": {**POLICY["limits"], "remediations_per_hour": 1}}
    h = Harness(store, clock, Mode.AUTO, policy)
    try:
        first_id, first = await h.incident("a", agent="a1")
        assert (await h.responder.handle_diagnosed(first_id, first)).status == "resolved"
        second_id, second = await h.incident("b", agent="a2")
        outcome = await h.responder.handle_diagnosed(second_id, second)
        assert "rate limit reached: 1 remediations in the last hour" in outcome.detail
        assert h.playbook.applied == 1
    finally:
        await h.orchestrator.aclose()


async def test_circuit_breaker_opens_after_repeated_failures(auto: Harness, clock: FakeClock) -> None:
    auto.playbook.fail_apply = True
    for i in range(2):
        incident_id, diagnosis = await auto.incident(f"f{i}", agent=f"agent{i}")
        outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
        assert outcome.status == "escalated" and "agent API exploded" in outcome.detail
    auto.playbook.fail_apply = False
    incident_id, diagnosis = await auto.incident("f3", agent="agent3")
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated" and outcome.detail.startswith("circuit open: 2 failed remediations")
    assert auto.playbook.applied == 2
    clock.advance(3601)  # the window passes: the breaker closes
    incident_id, diagnosis = await auto.incident("f4", agent="agent4")
    assert (await auto.responder.handle_diagnosed(incident_id, diagnosis)).status == "resolved"


async def test_failed_verification_escalates_and_counts_toward_the_breaker(
    auto: Harness, store: WatchdogStore
) -> None:
    auto.playbook.verify_ok = False
    incident_id, diagnosis = await auto.incident()
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated" and "verification failed" in outcome.detail
    async with store.transaction() as tx:
        assert await tx.count_rate_events("remediation_failed", "*", T0) == 1


async def test_refused_preconditions_escalate_without_acting(auto: Harness) -> None:
    auto.playbook.refuse = "run already finished (status completed)"
    incident_id, diagnosis = await auto.incident()
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated"
    assert "restart_agent refused: run already finished" in outcome.detail
    assert auto.playbook.applied == 0


async def test_observe_mode_reports_the_plan_and_never_acts(store: WatchdogStore, clock: FakeClock) -> None:
    h = Harness(store, clock, Mode.OBSERVE, POLICY)
    try:
        incident_id, diagnosis = await h.incident()
        outcome = await h.responder.handle_diagnosed(incident_id, diagnosis)
        assert outcome.status == "escalated" and "observe mode" in outcome.detail
        assert h.playbook.applied == 0
        incident = await h.incidents.get(incident_id)
        assert incident.plan is not None and incident.plan.playbook == "restart_agent"
    finally:
        await h.orchestrator.aclose()


async def test_one_action_in_flight_per_execution(auto: Harness) -> None:
    incident_id, diagnosis = await auto.incident()
    auto.playbook.block_second_step = asyncio.Event()
    first = asyncio.create_task(auto.responder.handle_diagnosed(incident_id, diagnosis))
    # Wait (bounded) until the first has the incident in `remediating`.
    for _ in range(500):
        if (await auto.incidents.get(incident_id)).status == "remediating":
            break
        await asyncio.sleep(0.01)
    second = await auto.remediation.execute(incident_id)
    assert second.status == "unchanged" and "remediating" in second.detail
    auto.playbook.block_second_step.set()
    assert (await first).status == "resolved"
    assert auto.playbook.side_effects == 1


async def test_resume_after_crash_never_repeats_a_non_idempotent_step(
    auto: Harness, store: WatchdogStore
) -> None:
    incident_id, diagnosis = await auto.incident()
    auto.playbook.block_second_step = asyncio.Event()
    task = asyncio.create_task(auto.responder.handle_diagnosed(incident_id, diagnosis))
    key = idempotency_key(incident_id, "restart_agent", "check")
    for _ in range(500):
        async with store.transaction() as tx:
            if await tx.get_action(key) is not None:
                break
        await asyncio.sleep(0.01)
    task.cancel()  # the watchdog "dies" while step 2 is started but unfinished
    with pytest.raises(asyncio.CancelledError):
        await task
    assert auto.playbook.side_effects == 1
    auto.playbook.block_second_step = None
    [outcome] = await auto.remediation.resume_interrupted()
    # Step 1 (non-idempotent, finished) is skipped; step 2 (idempotent, half-done) is re-run.
    assert outcome.status == "resolved"
    assert auto.playbook.side_effects == 1
    kinds = await auto.kinds(incident_id)
    assert ("remediation_resumed", "after") in kinds


async def test_resume_marks_a_half_done_non_idempotent_step_interrupted(
    auto: Harness, store: WatchdogStore
) -> None:
    incident_id, diagnosis = await auto.incident()
    # Simulate the state a SIGKILL leaves: remediating, step 1 recorded as started, never finished.
    await auto.responder.handle_diagnosed(incident_id, diagnosis)  # resolves; use a second incident instead
    second_id, second = await auto.incident("e2")
    plan = (await auto.incidents.get(incident_id)).plan
    async with store.transaction() as tx:
        await tx.update_incident(second_id, status="remediating", plan=plan)
        await tx.insert_action(
            incident_id=second_id,
            playbook="restart_agent",
            step="restart_worker",
            idempotency_key=idempotency_key(second_id, "restart_agent", "restart_worker"),
            params={"agent": "calc"},
        )
    effects = auto.playbook.side_effects
    [outcome] = await auto.remediation.resume_interrupted()
    assert (
        outcome.status == "escalated" and "interrupted before it finished and not repeated" in outcome.detail
    )
    assert auto.playbook.side_effects == effects
    async with store.transaction() as tx:
        action = await tx.get_action(idempotency_key(second_id, "restart_agent", "restart_worker"))
    assert action is not None and action.state == "interrupted"
    assert second.execution_id == "e2"


async def test_notifier_failure_is_audited(recommend: Harness) -> None:
    recommend.notifier.fail = True
    incident_id, diagnosis = await recommend.incident()
    await recommend.responder.handle_diagnosed(incident_id, diagnosis)
    async with recommend.store.transaction() as tx:
        entries = [
            a
            for a in await tx.list_audit(incident_id)
            if a.kind == "approval_notified" and a.phase == "after"
        ]
    assert entries[0].data["ok"] is False and entries[0].data["detail"] == "webhook down"


async def test_a_run_that_ended_by_itself_resolves_without_acting(auto: Harness) -> None:
    incident_id, diagnosis = await auto.incident()
    ended = diagnosis.model_copy(update={"likely_cause": "not_stuck", "cause_evidence": ["run is completed"]})
    outcome = await auto.responder.handle_diagnosed(incident_id, ended)
    assert outcome.status == "resolved" and "nothing to do: not_stuck (run is completed)" in outcome.detail
    assert auto.playbook.applied == 0 and auto.notifier.escalations == []


async def test_resume_before_any_step_rechecks_preconditions(auto: Harness, store: WatchdogStore) -> None:
    incident_id, diagnosis = await auto.incident()
    auto.playbook.refuse = "stop"
    await auto.responder.handle_diagnosed(incident_id, diagnosis)  # escalates; reuse its plan below
    second_id, _ = await auto.incident("e2")
    plan = (await auto.incidents.get(incident_id)).plan
    async with store.transaction() as tx:  # died right after taking the incident, before any step
        await tx.update_incident(second_id, status="remediating", plan=plan)
    auto.playbook.refuse = "run already finished (status completed)"
    [outcome] = await auto.remediation.resume_interrupted()
    assert outcome.status == "escalated" and "refused: run already finished" in outcome.detail
    assert auto.playbook.applied == 0


async def test_agent_limit_holds_when_two_replicas_race(database_url: str, clock: FakeClock) -> None:
    policy = {**POLICY, "limits": {**POLICY["limits"], "agent_restarts_per_agent_per_hour": 1}}
    stores = [await WatchdogStore.open(database_url, clock=clock) for _ in range(2)]
    replicas = [Harness(s, clock, Mode.AUTO, policy) for s in stores]
    try:
        cases = [await replicas[0].incident(f"race-{i}") for i in range(2)]
        outcomes = await asyncio.gather(
            *(
                replica.responder.handle_diagnosed(*case)
                for replica, case in zip(replicas, cases, strict=True)
            )
        )
        assert sorted(o.status for o in outcomes) == ["escalated", "resolved"]
        assert sum(r.playbook.side_effects for r in replicas) == 1
    finally:
        for replica in replicas:
            await replica.orchestrator.aclose()
        for s in stores:
            await s.close()


# -- runs by hand take the same path ---------------------------------------------------------------------


def by_hand(execution_id: str, agent: str = "calc") -> ManualRun:
    return ManualRun(playbook="restart_agent", execution_id=execution_id, params={"agent_id": agent})


async def test_a_run_by_hand_is_counted_against_the_agent_restart_budget(auto: Harness) -> None:
    for i in range(2):  # the policy allows two restarts of an agent per hour
        assert (await auto.remediation.run_manual(by_hand(f"hand-{i}"))).status == "resolved"
    # The loop now finds the budget used up by the runs by hand...
    incident_id, diagnosis = await auto.incident("loop-1")
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated"
    assert "rate limit reached: agent calc restarted 2 times in the last hour" in outcome.detail
    # ...and so does a third run by hand: refused before it acts.
    refused = await auto.remediation.run_manual(by_hand("hand-3"))
    assert refused.status == "escalated" and "rate limit reached: agent calc" in refused.detail
    assert auto.playbook.side_effects == 2
    kinds = await auto.kinds(refused.incident_id)
    assert ("limits", "after") in kinds and ("apply", "before") not in kinds


async def test_a_run_by_hand_is_refused_while_the_circuit_breaker_is_open(auto: Harness) -> None:
    auto.playbook.fail_apply = True
    for i in range(2):  # two failed remediations open the breaker (policy: 2 in an hour)
        incident_id, diagnosis = await auto.incident(f"f{i}", agent=f"agent{i}")
        assert (await auto.responder.handle_diagnosed(incident_id, diagnosis)).status == "escalated"
    auto.playbook.fail_apply = False
    outcome = await auto.remediation.run_manual(by_hand("hand-1", agent="agent9"))
    assert outcome.status == "escalated" and outcome.detail.startswith("circuit open: 2 failed remediations")
    assert auto.playbook.applied == 2  # only the two failed ones: the run by hand did not act
    incident = await auto.incidents.get(outcome.incident_id)
    assert incident.status == "escalated" and incident.plan is not None and incident.plan.rule == "manual"


async def test_a_failed_run_by_hand_counts_toward_the_circuit_breaker(auto: Harness) -> None:
    auto.playbook.fail_apply = True
    for i in range(2):
        outcome = await auto.remediation.run_manual(by_hand(f"hand-{i}", agent=f"agent{i}"))
        assert outcome.status == "escalated" and "restart_agent by hand failed" in outcome.detail
    auto.playbook.fail_apply = False
    incident_id, diagnosis = await auto.incident("loop-1", agent="agent3")
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated" and outcome.detail.startswith("circuit open: 2 failed remediations")


# -- remediation limits ----------------------------------------------------------------------------------
# Limits count what acts: a remediation refused by its preconditions uses up neither the agent's
# restarts nor the global budget (the limits are for harm done, not for attempts that did nothing).


async def test_refused_attempts_do_not_use_up_the_agents_restarts(auto: Harness) -> None:
    limits = POLICY["limits"]
    assert isinstance(limits, dict)
    limit = int(limits["agent_restarts_per_agent_per_hour"])
    auto.playbook.refuse = "no node of the run is running on agent calc"
    for i in range(limit + 1):
        incident_id, diagnosis = await auto.incident(f"refused-{i}")
        outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
        assert outcome.status == "escalated" and "refused" in outcome.detail
    auto.playbook.refuse = None
    incident_id, diagnosis = await auto.incident("real")
    outcome = await auto.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "resolved", outcome
    assert auto.playbook.applied == 1
    assert auto.responder.mode is Mode.AUTO


# -- observe kill switch ---------------------------------------------------------------------------------
# `GL_WATCHDOG_MODE=observe` is a kill switch: after the switch (a restart with the new mode), nothing
# acts — not a prompt approved after the switch, not a remediation a dead watchdog left half-done.


async def restarted_in(mode: Mode, store: WatchdogStore, clock: FakeClock) -> Harness:
    return Harness(store, clock, mode, POLICY)


async def test_a_prompt_approved_after_the_switch_to_observe_does_nothing(
    store: WatchdogStore, clock: FakeClock
) -> None:
    before = Harness(store, clock, Mode.RECOMMEND, POLICY)
    incident_id, diagnosis = await before.incident()
    assert (await before.responder.handle_diagnosed(incident_id, diagnosis)).status == "awaiting_approval"
    [prompt] = before.notifier.prompts
    await before.orchestrator.aclose()

    after = await restarted_in(Mode.OBSERVE, store, clock)
    try:
        approval = await after.approvals.decide(
            prompt.approval_id, Decision.APPROVE, actor="alice", authenticated=True
        )
        outcome = await after.responder.on_decision(approval)
        assert outcome.status == "escalated" and "observe mode" in outcome.detail
        assert after.playbook.applied == 0 and after.playbook.side_effects == 0
        assert (await after.incidents.get(incident_id)).status == "escalated"
    finally:
        await after.orchestrator.aclose()


async def test_an_interrupted_remediation_is_not_resumed_in_observe_mode(
    store: WatchdogStore, clock: FakeClock
) -> None:
    before = Harness(store, clock, Mode.AUTO, POLICY)
    incident_id, diagnosis = await before.incident()
    before.playbook.block_second_step = asyncio.Event()
    task = asyncio.create_task(before.responder.handle_diagnosed(incident_id, diagnosis))
    key = idempotency_key(incident_id, "restart_agent", "check")
    for _ in range(500):  # bounded: until the first step is recorded as started
        async with store.transaction() as tx:
            if await tx.get_action(key) is not None:
                break
        await asyncio.sleep(0.01)
    task.cancel()  # the watchdog dies mid-remediation
    with pytest.raises(asyncio.CancelledError):
        await task
    effects_before = before.playbook.side_effects
    await before.orchestrator.aclose()

    after = await restarted_in(Mode.OBSERVE, store, clock)
    try:
        [outcome] = await after.remediation.resume_interrupted()
        assert outcome.status == "escalated" and "observe mode" in outcome.detail
        assert after.playbook.side_effects == 0 and effects_before == 1
        assert (await after.incidents.get(incident_id)).status == "escalated"
    finally:
        await after.orchestrator.aclose()
