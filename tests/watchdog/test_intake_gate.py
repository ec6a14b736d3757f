"""Background work (diagnoses) yields to alert deliveries until the intake has settled."""

from __future__ import annotations

import asyncio

from watchdog.episodes import IntakeGate


async def _deliver(gate: IntakeGate) -> None:
    """One delivery through the gate: in, at the store, out."""
    async with gate.admitted() as admitted:
        assert admitted


async def _turns(count: int) -> None:
    """Let the other tasks run `count` times."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_background_work_does_not_start_the_instant_the_last_delivery_leaves() -> None:
    gate = IntakeGate(4, wait_seconds=1, settle_seconds=60)
    await _deliver(gate)
    waiting = asyncio.create_task(gate.quiet(max_seconds=120))
    await _turns(10)
    assert not waiting.done()  # the gate is empty, but only just
    waiting.cancel()


async def test_background_work_starts_once_no_delivery_came_for_the_settle_time() -> None:
    gate = IntakeGate(4, wait_seconds=1, settle_seconds=0.01)
    await _deliver(gate)
    assert await gate.quiet(max_seconds=10)


async def test_a_steady_stream_of_deliveries_keeps_background_work_waiting() -> None:
    gate = IntakeGate(4, wait_seconds=1, settle_seconds=0.5)
    waiting = asyncio.create_task(gate.quiet(max_seconds=30))
    for _ in range(30):  # the gate empties between deliveries, never for the settle time
        await _deliver(gate)
        await asyncio.sleep(0.01)
        assert not waiting.done()
    assert await waiting  # then the stream stops


async def test_background_work_goes_on_after_its_wait_while_deliveries_are_at_the_store() -> None:
    gate = IntakeGate(4, wait_seconds=1, settle_seconds=0.01)
    async with gate.admitted():
        assert not await gate.quiet(max_seconds=0.05)
