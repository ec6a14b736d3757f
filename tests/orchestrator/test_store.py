"""The store on real SQLite and PostgreSQL: migrations, DAG versions, fencing, pool stats."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import (
    DagNotFound,
    ExecutionNotFound,
    InvalidState,
    StaleFencingToken,
    StoreError,
)
from orchestrator_core.migrations import SCHEMA
from orchestrator_core.records import ExecutionOptions, ExecutionRecord, NodeTrace
from orchestrator_core.store import Store, WriteBatch
from orchestrator_core.store.schema import metadata
from tests.conftest import close_during_a_transaction


def _dag(timeout: float = 10) -> DagDefinition:
    return DagDefinition.from_document(
        {
            "dag_id": "d",
            "nodes": {"a": {"agent_id": "builtin.echo", "timeout_policy": {"timeout_seconds": timeout}}},
        }
    )


def _record(execution_id: str = "e1") -> ExecutionRecord:
    return ExecutionRecord(execution_id, "d", 1, "queued", {"x": 1}, ExecutionOptions(), datetime.now(UTC))


async def test_a_closed_store_refuses_work_instead_of_opening_a_new_pool(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.close()
    with pytest.raises(StoreError, match="list executions: the store is closed"):
        await store.executions.list()
    # dispose() swaps in a fresh pool; a connection opened there would never be closed (it leaked an
    # aiosqlite connection that the garbage collector reported in some later test)
    assert store.engine.sync_engine.pool.checkedin() == 0


async def test_close_lets_a_transaction_under_way_end_first(database_url: str) -> None:
    """A transaction under way when the store closes (a request, a supervisor) commits first; its
    connection would otherwise go back into a disposed pool and stay open (the conftest check)."""
    store = await Store.open(database_url)

    async def transaction(inside: asyncio.Event, finish: asyncio.Event) -> None:
        async with store.db.transaction("held") as conn:
            inside.set()
            await finish.wait()
            await conn.execute(sa.text("SELECT 1"))

    assert await close_during_a_transaction(store.close, transaction) == ["committed", "closed"]


async def test_migrations_create_the_current_schema_once(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        assert await store.schema_version() == SCHEMA.head
        assert await store.migrate() == []  # idempotent
        async with store.engine.connect() as conn:

            def columns(sync_conn: sa.Connection) -> dict[str, set[str]]:
                inspector = sa.inspect(sync_conn)
                return {t: {c["name"] for c in inspector.get_columns(t)} for t in metadata.tables}

            actual = await conn.run_sync(columns)
        expected = {name: {c.name for c in table.columns} for name, table in metadata.tables.items()}
        assert actual == expected
    finally:
        await store.close()


async def test_concurrent_start_ups_migrate_exactly_once(database_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(database_url) for _ in range(3)))
    try:
        async with stores[0].engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT version FROM gl_schema_migrations"))).all()
        assert [r.version for r in rows] == [m.version for m in SCHEMA.migrations]
    finally:
        for store in stores:
            await store.close()


async def test_dag_versions(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        first = await store.dags.save(_dag())
        assert first.version == 1
        assert (await store.dags.save(_dag())).version == 1  # unchanged: same version
        second = await store.dags.save(_dag(timeout=20))
        assert second.version == 2
        assert (await store.dags.get("d")).nodes["a"].timeout_policy.timeout_seconds == 20
        assert (await store.dags.get("d", 1)).nodes["a"].timeout_policy.timeout_seconds == 10
        with pytest.raises(DagNotFound):
            await store.dags.get("missing")
        assert [d.version for d in await store.dags.latest()] == [2]
    finally:
        await store.close()


async def test_writes_with_a_stale_fencing_token_are_refused(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        await store.dags.save(_dag())
        await store.executions.create(_record())
        first = await store.executions.claim("e1", owner="r1", token=5, allowed_statuses={"queued"})
        assert first.fencing_token == 5 and first.owner == "r1"
        trace = NodeTrace("a", "builtin.echo", "running")
        await store.executions.write_batch("e1", 5, WriteBatch(traces=[trace]))
        # another replica takes over with a higher token
        second = await store.executions.claim("e1", owner="r2", token=6, allowed_statuses={"running"})
        assert second.owner == "r2"
        with pytest.raises(StaleFencingToken):
            await store.executions.write_batch("e1", 5, WriteBatch(traces=[trace]))
        with pytest.raises(StaleFencingToken):
            await store.executions.finish("e1", 5, status="completed", error=None)
        with pytest.raises(StaleFencingToken):  # an older token cannot claim either
            await store.executions.claim("e1", owner="r1", token=6, allowed_statuses={"running"})
        await store.executions.write_batch("e1", 6, WriteBatch(traces=[trace]))
        # without an external counter the store issues the next token itself
        await store.executions.set_status("e1", status="interrupted", expected={"running"})
        third = await store.executions.claim("e1", owner="r3", token=None, allowed_statuses={"interrupted"})
        assert third.fencing_token == 7
    finally:
        await store.close()


async def test_writes_to_a_run_cancelled_elsewhere_are_refused(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        await store.dags.save(_dag())
        await store.executions.create(_record())
        claimed = await store.executions.claim("e1", owner="r1", token=None, allowed_statuses={"queued"})
        await store.executions.set_status("e1", status="cancelled", expected={"running"})
        with pytest.raises(InvalidState):
            await store.executions.write_batch(
                "e1", claimed.fencing_token, WriteBatch(traces=[NodeTrace("a", "x")])
            )
        with pytest.raises(InvalidState):
            await store.executions.set_status("e1", status="cancelled", expected={"running", "queued"})
        with pytest.raises(ExecutionNotFound):
            await store.executions.get("nope")
    finally:
        await store.close()


async def test_pool_stats_come_from_the_real_pool(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        assert store.pool_stats().checked_out == 0
        async with store.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            assert store.pool_stats().checked_out == 1
        assert store.pool_stats().checked_out == 0
    finally:
        await store.close()


async def test_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        await Store.open("postgresql+asyncpg://nobody@127.0.0.1:1/none", timeout_seconds=2)
    with pytest.raises(StoreError):
        await Store.open("mysql+aiomysql://x@127.0.0.1/none")


async def test_a_database_newer_than_the_code_is_refused(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO gl_schema_migrations (component, version, description, applied_at) "
                    "VALUES ('orchestrator', 99, 'future', :at)"
                ),
                {
                    "at": datetime.now(UTC).replace(tzinfo=None)
                    if store.dialect == "sqlite"
                    else datetime.now(UTC)
                },
            )
    finally:
        await store.close()
    with pytest.raises(StoreError, match="newer than this code"):
        await Store.open(database_url)
