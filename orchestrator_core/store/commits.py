"""Fenced commits of a running execution's batches: on SQLite, one call into one connection's thread.

Where it sits: `checkpoints.RunWriter` sends every commit of a running execution (checkpoints, traces,
provenance records of the nodes that finished together) through `Store.commits.write_batch`.

On a SQLite file a `SqliteCommitter` owns one `sqlite3` connection of its own, used by one worker
thread. A batch is one call into that thread, which runs the whole transaction there: `BEGIN
IMMEDIATE`, the fencing `UPDATE` (which also sets the chain's head), one upsert statement per table
(`rundata.batch_rows`, `bulk.upsert_sql`: the same rows and statements the SQLAlchemy path writes),
`COMMIT`. Through SQLAlchemy and aiosqlite the same transaction is about nine hops to aiosqlite's thread
and back (checkout, each statement, commit), which bounded a chain with checkpoints to ~300 nodes/s.
The connection is set up like the pool's (busy timeout = the store's timeout, WAL, `synchronous`,
foreign keys) and contends for SQLite's write lock like any other connection: the fencing and the
error mapping are those of `store.executions` (`StaleFencingToken`, `InvalidState`, `ExecutionNotFound`;
`StoreUnavailable` for a locked or unreachable database, `StoreError` for anything else the driver
refuses). Every call is bounded by the store's timeout (SQLite's busy handler inside, `asyncio.timeout`
outside); a call that times out may still commit afterwards, which is harmless: the batch is retried
and writes are idempotent.

Elsewhere (PostgreSQL; SQLite in memory, where a second connection would see another database) the
batch goes through `ExecutionRepository.write_batch` (one SQLAlchemy transaction).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from gl_common.clock import Clock
from orchestrator_core.errors import (
    ExecutionNotFound,
    InvalidState,
    StaleFencingToken,
    StoreError,
    StoreUnavailable,
)
from orchestrator_core.store.bulk import sqlite_stamp, upsert_sql
from orchestrator_core.store.executions import ExecutionRepository
from orchestrator_core.store.rundata import WriteBatch, batch_rows
from orchestrator_core.store.schema import executions

T = TypeVar("T")


class BatchCommits:
    """Where a running execution's batches are committed: see the module docstring."""

    def __init__(self, repository: ExecutionRepository, sqlite: SqliteCommitter | None) -> None:
        self.repository = repository
        self.sqlite = sqlite

    async def write_batch(self, execution_id: str, token: int, batch: WriteBatch) -> None:
        """Fenced write of the batch's traces, checkpoints and provenance records in one transaction."""
        if self.sqlite is None:
            await self.repository.write_batch(execution_id, token, batch)
        else:
            await self.sqlite.write_batch(execution_id, token, batch)

    async def close(self) -> None:
        if self.sqlite is not None:
            await self.sqlite.close()


def sqlite_file(url: sa.URL) -> str | None:
    """The file of a `sqlite+aiosqlite:///PATH` URL; None for anything else (memory, URI options)."""
    if url.get_backend_name() != "sqlite" or url.query:
        return None
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


class SqliteCommitter:
    """One SQLite connection and the one thread that uses it; each batch is one call into the thread."""

    def __init__(
        self, path: str, *, dialect: Dialect, clock: Clock, timeout_seconds: float, synchronous: str
    ) -> None:
        self.path = path
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gl-sqlite-commits")
        self._closed = False
        quote = dialect.identifier_preparer.quote
        table = quote(executions.name)
        self._fence = (
            f"UPDATE {table} SET updated_at = ?, provenance_head = coalesce(?, provenance_head), "
            "provenance_length = coalesce(?, provenance_length) "
            "WHERE execution_id = ? AND fencing_token = ? AND status = 'running'"
        )
        self._current = f"SELECT fencing_token, status FROM {table} WHERE execution_id = ?"
        self._dialect = dialect
        self._statements: dict[str, str] = {}

    async def write_batch(self, execution_id: str, token: int, batch: WriteBatch) -> None:
        now = self.clock.now()
        head = batch.head()
        fence = (
            sqlite_stamp(now),
            head.get("provenance_head"),
            head.get("provenance_length"),
            execution_id,
            token,
        )
        statements = []
        for table, names, rows in batch_rows(execution_id, batch, sqlite_stamp, now):
            sql = self._statements.get(table.name)
            if sql is None:
                sql = self._statements[table.name] = upsert_sql(self._dialect, table, names) or ""
            statements.append((sql, rows))
        refused = await self._call(lambda conn: self._commit(conn, fence, statements))
        if refused is None:
            return
        if refused == ():
            raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
        current_token, status = refused
        if int(current_token) != token:
            raise StaleFencingToken(
                f"execution {execution_id} is now owned with fencing token {current_token}, not {token}"
            )
        raise InvalidState(f"execution {execution_id} is {status}")

    def _commit(
        self,
        conn: sqlite3.Connection,
        fence: tuple[Any, ...],
        statements: list[tuple[str, list[tuple[Any, ...]]]],
    ) -> tuple[Any, ...] | None:
        """In the thread: the whole transaction. None when committed; else the stored (token, status)
        that refused the fencing UPDATE, or () when the execution does not exist."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(self._fence, fence).rowcount != 1:
                row = conn.execute(self._current, (fence[3],)).fetchone()
                conn.execute("ROLLBACK")
                return tuple(row) if row is not None else ()
            for sql, rows in statements:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return None

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` with the connection in the thread, bounded by the timeout; errors mapped."""
        if self._closed:
            raise StoreUnavailable("write batch: the store is closed")

        def run() -> T:
            if self._conn is None:
                self._conn = self._connect()
            return work(self._conn)

        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await asyncio.wrap_future(self._thread.submit(run))
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"write batch: database did not answer within {self.timeout_seconds}s"
            ) from exc
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, I/O, cannot open
            raise StoreUnavailable(f"write batch: {type(exc).__name__}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"write batch: {type(exc).__name__}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        """Like the pool's connections (`gl_common.db`): busy timeout, WAL, `synchronous`, foreign keys;
        autocommit mode, so that the transactions are exactly the ones `_commit` begins."""
        conn = sqlite3.connect(
            self.path, timeout=self.timeout_seconds, isolation_level=None, check_same_thread=False
        )
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Let a commit under way end (bounded by the timeout), close the connection, stop the thread."""
        if self._closed:
            return
        self._closed = True

        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            async with asyncio.timeout(self.timeout_seconds):
                await asyncio.wrap_future(self._thread.submit(close_connection))
        except (TimeoutError, sqlite3.Error):
            pass  # the thread still ends once its call returns; the process keeps no lock after it
        self._thread.shutdown(wait=False)
