"""The process' writers take turns at the store (SQLite): the intake first, the others not starved."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tests.watchdog.conftest import FakeClock
from watchdog.errors import StoreUnavailable
from watchdog.store import WatchdogStore
from watchdog.write_turns import NoTurn, WriteTurns

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def _queue(
    turns: WriteTurns, order: list[str], writers: list[tuple[str, bool]]
) -> list[asyncio.Task[None]]:
    """Start `writers` (name, urgent) while the turn is held; each records its name when it gets it."""

    async def write(name: str, urgent: bool) -> None:
        await turns.acquire(urgent=urgent, wait_seconds=10)
        order.append(name)
        turns.release()

    tasks = []
    for name, urgent in writers:
        tasks.append(asyncio.create_task(write(name, urgent)))
        await asyncio.sleep(0)  # queued in this order
    return tasks


async def test_waiting_deliveries_write_before_waiting_diagnoses() -> None:
    turns, order = WriteTurns(serialize=True), []
    await turns.acquire(wait_seconds=1)
    tasks = await _queue(turns, order, [("diagnosis-1", False), ("delivery-1", True), ("delivery-2", True)])
    assert turns.waiting(urgent=True) == 2 and turns.waiting(urgent=False) == 1
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["delivery-1", "delivery-2", "diagnosis-1"]


async def test_a_stream_of_deliveries_lets_a_waiting_diagnosis_through_after_a_few() -> None:
    turns, order = WriteTurns(serialize=True, urgent_streak=2), []
    await turns.acquire(wait_seconds=1)
    writers = [("diagnosis", False)] + [(f"delivery-{i}", True) for i in range(1, 6)]
    tasks = await _queue(turns, order, writers)
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["delivery-1", "delivery-2", "diagnosis", "delivery-3", "delivery-4", "delivery-5"]


async def test_a_writer_that_gives_up_waiting_does_not_hold_up_the_next() -> None:
    turns, order = WriteTurns(serialize=True), []
    await turns.acquire(wait_seconds=1)
    impatient = asyncio.create_task(turns.acquire(urgent=True, wait_seconds=10))
    await asyncio.sleep(0)
    tasks = await _queue(turns, order, [("diagnosis", False)])
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["diagnosis"]
    await turns.acquire(wait_seconds=0.01)  # and the turn is free again afterwards
    turns.release()


async def test_no_turn_within_the_wait_is_an_error_naming_it() -> None:
    turns = WriteTurns(serialize=True)
    await turns.acquire(wait_seconds=1)
    with pytest.raises(NoTurn, match=r"no write turn within 0\.01s"):
        await turns.acquire(urgent=True, wait_seconds=0.01)
    turns.release()
    assert turns.waiting(urgent=True) == 0


async def test_without_serialising_writers_never_wait() -> None:
    turns = WriteTurns(serialize=False)
    await turns.acquire(wait_seconds=0.01)
    await turns.acquire(wait_seconds=0.01)
    turns.release()
    turns.release()


async def test_on_sqlite_the_intake_writes_before_the_writers_queued_ahead_of_it(sqlite_url: str) -> None:
    store = await WatchdogStore.open(sqlite_url, clock=FakeClock(START))
    order: list[str] = []
    holding, finish = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.transaction("holder"):
            holding.set()
            await finish.wait()

    async def writer(name: str, urgent: bool) -> None:
        async with store.transaction(name, urgent=urgent) as tx:
            await tx.insert_incident(execution_id=name, dag_id="d", source="alert", detection_source="api")
            order.append(name)

    try:
        first = asyncio.create_task(holder())
        await holding.wait()
        tasks = [asyncio.create_task(writer("diagnosis", False))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(writer("delivery", True)))
        await asyncio.sleep(0)
        finish.set()
        await asyncio.gather(first, *tasks)
        assert order == ["delivery", "diagnosis"]
    finally:
        await store.close()


async def test_on_sqlite_a_writer_with_no_turn_in_time_gets_store_unavailable(sqlite_url: str) -> None:
    store = await WatchdogStore.open(sqlite_url, clock=FakeClock(START))
    try:
        await store.turns.acquire(wait_seconds=1)  # another writer of this process holds the store
        store.database.timeout_seconds = 0.01
        with pytest.raises(StoreUnavailable, match=r"alert intake: no write turn within 0\.01s"):
            async with store.transaction("alert intake", urgent=True):
                pass
        store.turns.release()
    finally:
        await store.close()
