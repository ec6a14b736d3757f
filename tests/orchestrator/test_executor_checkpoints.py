"""A checkpoint save that fails is retried with backoff, counted, and blocks progress until it lands.

The failure is real: another connection holds the database's write lock (SQLite `BEGIN EXCLUSIVE`) or
an exclusive lock on the checkpoints table (PostgreSQL `LOCK TABLE`), so the store's writes time out.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from orchestrator_core.engine import Engine
from orchestrator_core.events import CheckpointEvent, LogEvent, RecordingObserver
from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.store import Store
from tests.orchestrator.conftest import Calls, FakeClock, make_registry, wait_until


@asynccontextmanager
async def database_write_lock(database_url: str) -> AsyncIterator[None]:
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        conn = sqlite3.connect(path, timeout=5, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn, timeout=5)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()
            await conn.close()


async def test_failed_checkpoint_save_is_retried_counted_and_blocks_progress(database_url: str) -> None:
    calls = Calls()
    observer = RecordingObserver()
    # Migrate first: on a loaded machine the migrations alone can take longer than the 0.3 s below.
    await (await Store.open(database_url)).close()
    settings = OrchestratorSettings(
        database_url=database_url,
        db_timeout_seconds=0.3,  # a blocked write gives up quickly (and is retried)
        checkpoint_retry_base_delay=0.01,
        checkpoint_retry_max_delay=0.02,
    )
    engine = await Engine.open(settings, registry=make_registry(calls), observer=observer, clock=FakeClock())
    try:
        await engine.register_dag(
            {
                "dag_id": "cp",
                "nodes": {
                    "a": {"agent_id": "test.gate"},
                    "b": {"agent_id": "test.record", "depends_on": ["a"]},
                },
            }
        )
        record = await engine.execute("cp")
        executor = engine.executor(record.execution_id)
        assert executor is not None
        await wait_until(lambda: calls.count("a") == 1)
        await executor.writer.flush()

        def errors() -> list[CheckpointEvent]:
            return [e for e in observer.of_type(CheckpointEvent) if e.status == "error"]

        release: Callable[[], None] = calls.contexts[-1].state["release"].set
        async with database_write_lock(database_url):
            release()
            await wait_until(lambda: len(errors()) >= 2, within=20)
            # a's result is not durable yet, so the run has not advanced
            assert calls.count("b") == 0
            assert executor.states["b"].status == "pending"
        async with asyncio.timeout(20):
            final = await engine.wait(record.execution_id)
        assert final.status == "completed"
        assert calls.count("a") == 1 and calls.count("b") == 1
        assert [c.node_id for c in await engine.list_checkpoints(record.execution_id)] == ["a", "b"]
        assert errors()[0].operation == "save" and errors()[0].execution_id == record.execution_id
        assert any(e.status == "ok" for e in observer.of_type(CheckpointEvent))
        assert any("checkpoint save failed" in e.message for e in observer.of_type(LogEvent))
    finally:
        await engine.close()
