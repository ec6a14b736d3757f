"""The orchestrator's durable store: DAG versions, live limits, executions and their run data.

Where it sits: `engine.Engine` opens one `Store` (`await Store.open(url, ...)`, which runs the
migrations) and is its main user; the executor's `checkpoints.RunWriter` and final write go through
`store.executions`; the service reads the live limits. Underneath, one `gl_common.db.Database` (engine,
pool, SQLite WAL, bounded transactions, error mapping to `errors.StoreError` / `StoreUnavailable`) and
one repository per responsibility:

    store.dags        DagRepository        DAG versions (immutable once stored, parsed ones cached)
    store.limits      LimitRepository      live limits every replica applies
    store.executions  ExecutionRepository  the lifecycle: create, claim, fenced writes, finish, status
    store.listing     ExecutionListing     filtered keyset pages of executions, exact counts
    store.runs        RunDataRepository    reads of traces, checkpoints and the provenance chain
    store.commits     BatchCommits         a run's hot writes: create and claim, batches, finish (on
                                           a SQLite file: one call on a connection of their own)
    store.signals     SignalRepository     stuck-run signals: node-duration sketches, running nodes

Modules: `schema` (the tables, as the migrations declare them), `database` (the foundation set up with
the orchestrator's errors), `dags`, `executions`, `listing`, `rundata` (run data in both layouts: rows
or one run document), `bulk` (the raw executemany path, and why), `commits` (the checkpointed hot
path). SQLAlchemy Core (async) with one code path for SQLite and PostgreSQL; dialect-specific SQL only
in the upsert, the migration lock, and the SQLite connection of `commits`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from gl_common.clock import Clock, SystemClock
from gl_common.db import Database, PoolSettings, PoolStats
from orchestrator_core.migrations import SCHEMA
from orchestrator_core.store.commits import BatchCommits, SqliteCommitter, sqlite_file
from orchestrator_core.store.dags import DagRepository, LimitRepository
from orchestrator_core.store.database import open_database
from orchestrator_core.store.executions import ClaimedRun, ExecutionRepository
from orchestrator_core.store.listing import ExecutionListing
from orchestrator_core.store.rundata import RunData, RunDataRepository, TraceFields, WriteBatch
from orchestrator_core.store.signals import SignalRepository

__all__ = ["ClaimedRun", "RunData", "Store", "TraceFields", "WriteBatch"]


class Store:
    """The orchestrator's repositories over one database. Build with `await Store.open(database_url)`."""

    def __init__(self, db: Database, *, clock: Clock | None = None, pool: PoolSettings | None = None) -> None:
        """`pool`: the settings `db` was opened with (its SQLite `synchronous` applies to `commits`)."""
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self.dags = DagRepository(db, self.clock)
        self.limits = LimitRepository(db, self.clock)
        self.executions = ExecutionRepository(db, self.clock, self.dags)
        self.listing = ExecutionListing(db, self.clock)
        self.runs = RunDataRepository(db)
        self.signals = SignalRepository(db, self.clock)
        path = sqlite_file(db.engine.url)
        sqlite = None
        if path is not None:
            sqlite = SqliteCommitter(
                path,
                dialect=db.engine.dialect,
                clock=self.clock,
                timeout_seconds=db.timeout_seconds,
                synchronous=(pool or PoolSettings()).sqlite_synchronous,
            )
        self.commits = BatchCommits(self.executions, self.dags, sqlite)

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout_seconds: float = 10.0,
        clock: Clock | None = None,
        schema_version: int | None = None,
    ) -> Store:
        """Connect, configure (SQLite: WAL), and upgrade the schema to the latest version (or to
        `schema_version`, for tests of upgrades)."""
        pool = PoolSettings(timeout_seconds=timeout_seconds, pool_size=pool_size, max_overflow=max_overflow)
        db = open_database(database_url, pool)
        store = cls(db, clock=clock, pool=pool)
        try:
            await store.migrate(target=schema_version)
            db.require_returning()
        except BaseException:
            await store.commits.close()
            await db.engine.dispose()
            raise
        return store

    @property
    def timeout_seconds(self) -> float:
        return self.db.timeout_seconds

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def engine(self) -> AsyncEngine:
        return self.db.engine

    async def close(self) -> None:
        """Let transactions under way end (each is bounded by the timeout), then close the pool."""
        await self.commits.close()
        await self.db.close()

    async def migrate(self, *, target: int | None = None) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        return await self.db.migrate(SCHEMA, self.clock.now(), target=target)

    async def schema_version(self) -> int:
        return await self.db.schema_version(SCHEMA)

    async def ping(self) -> None:
        """Raise `StoreError` unless the database answers (readiness)."""
        await self.db.ping()

    def pool_stats(self) -> PoolStats:
        return self.db.pool_stats()
