"""Round trips to the database to start and resume runs: counted at the SQLAlchemy engine (every
transaction begun and every statement sent), on SQLite and PostgreSQL, and on a SQLite file also on the
connections of `store.commits` (its statement trace)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from orchestrator_core.records import ExecutionOptions
from tests.orchestrator.conftest import RESUMABLE_DAG, Harness, cancel_at_gate, wait_until


class _RoundTrips:
    """Transactions begun and statements sent to the database while counting."""

    def __init__(self, harness: Harness) -> None:
        self.engine = harness.engine.store.engine.sync_engine
        self.commits = harness.engine.store.commits.sqlite
        self.transactions = 0
        self.statements = 0

    def _traced(self, statement: str) -> None:
        if statement.startswith("BEGIN"):
            self.transactions += 1
        elif statement not in ("COMMIT", "ROLLBACK"):
            self.statements += 1

    def _begin(self, *_: Any) -> None:
        self.transactions += 1

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def __enter__(self) -> _RoundTrips:
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "before_cursor_execute", self._statement)
        if self.commits is not None:
            self.commits.trace_statements(self._traced)
        return self

    def __exit__(self, *_: Any) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "before_cursor_execute", self._statement)
        if self.commits is not None:
            self.commits.trace_statements(None)


async def test_a_resume_claims_its_run_and_reads_what_it_continues_from_in_one_transaction(
    harness: Harness,
) -> None:
    execution_id = await cancel_at_gate(harness)
    with _RoundTrips(harness) as trips:
        result = await harness.engine.resume(execution_id)  # returns before the run takes a step
    assert result.nodes_skipped == ["a", "b"]
    # the row lock (which reads the row), the DAG's latest version, the run document, traces, chain,
    # checkpoints, the claim (seven transactions and thirteen statements before)
    assert (trips.transactions, trips.statements) == (1, 7)
    async with asyncio.timeout(10):
        assert (await harness.engine.wait(execution_id)).status == "completed"


async def test_starting_a_queued_run_is_one_transaction(harness: Harness) -> None:
    await harness.engine.register_dag(RESUMABLE_DAG)
    queued = await harness.engine.create_execution("resumable")
    with _RoundTrips(harness) as trips:
        await harness.engine.start_execution(queued.execution_id)
    assert (trips.transactions, trips.statements) == (1, 2)  # the row lock, the claim (the DAG is cached)
    await wait_until(lambda: harness.calls.count("gate") == 1)
    await harness.engine.cancel(queued.execution_id)


async def test_executing_a_dag_is_one_transaction_before_the_run_starts(harness: Harness) -> None:
    await harness.engine.register_dag(RESUMABLE_DAG)
    with _RoundTrips(harness) as trips:
        record = await harness.engine.execute("resumable")
    # the DAG's latest version (its definition is cached), the insert that claims (two transactions
    # before: the DAG was read in one of its own)
    assert (trips.transactions, trips.statements) == (1, 2)
    await wait_until(lambda: harness.calls.count("gate") == 1)
    await harness.engine.cancel(record.execution_id)


async def test_queueing_a_resume_is_one_transaction(harness: Harness) -> None:
    execution_id = await cancel_at_gate(harness)
    with _RoundTrips(harness) as trips:
        result = await harness.engine.queue_resume(execution_id)
    assert (result.status, result.nodes_skipped, result.nodes_remaining) == (
        "queued",
        ["a", "b"],
        ["gate", "c"],
    )
    # the row lock, the DAG's latest version, the checkpoints, the status (five transactions before)
    assert (trips.transactions, trips.statements) == (1, 4)


async def test_a_run_without_checkpoints_is_two_transactions_from_execute_to_its_end(
    harness: Harness,
) -> None:
    await harness.engine.register_dag({"dag_id": "one", "nodes": {"a": {"agent_id": "builtin.echo"}}})
    with _RoundTrips(harness) as trips:
        record = await harness.engine.execute("one", options=ExecutionOptions(checkpoint_enabled=False))
        async with asyncio.timeout(10):
            final = await harness.engine.wait(record.execution_id)
    assert final.status == "completed"
    # the DAG's latest version and the claiming insert; the fencing update that ends the run and the
    # run document
    assert (trips.transactions, trips.statements) == (2, 4)
