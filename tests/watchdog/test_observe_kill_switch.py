"""`GL_WATCHDOG_MODE=observe` is a kill switch: after the switch (a restart with the new mode), nothing
acts — not a prompt approved after the switch, not a remediation a dead watchdog left half-done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.watchdog.conftest import FakeClock
from tests.watchdog.test_remediation import POLICY, Harness
from watchdog.approvals import Decision
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.ledger import idempotency_key


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    s = await WatchdogStore.open(database_url, clock=clock)
    yield s
    await s.close()


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
