"""Fenced commits of a running execution's batches: on a SQLite file, one call on a connection of
their own, in the event loop when the write lock is free.

Where it sits: `checkpoints.RunWriter` sends every commit of a running execution (checkpoints, traces,
provenance records of the nodes that finished together) through `Store.commits.write_batch`.

On a SQLite file a `SqliteCommitter` runs the whole transaction as one call on a `sqlite3` connection
of its own: `BEGIN IMMEDIATE`, the fencing `UPDATE` (which also sets the chain's head), one upsert
statement per table (`rundata.batch_rows`, `bulk.upsert_sql`: the same rows and statements the
SQLAlchemy path writes), `COMMIT`. Through SQLAlchemy and aiosqlite the same transaction is about nine
hops to aiosqlite's thread and back (checkout, each statement, commit), which bounded a chain with
checkpoints to ~300 nodes/s; one hop to a thread still costs a context switch or two per commit, which
on a busy machine is most of a node's time.

So the call runs in the event loop itself when it cannot wait: that connection has no busy timeout
(`BEGIN IMMEDIATE` fails at once if another connection holds the write lock), no automatic WAL
checkpoint (which would `fsync` in the loop), and is used only with `synchronous=NORMAL` (a WAL commit
then writes to the WAL without `fsync`: tens of microseconds). When the write lock is taken, or with
`synchronous=FULL`, the same call runs in the committer's worker thread on a second connection set up
like the pool's (busy timeout = the store's timeout), bounded by `asyncio.timeout` as well; that thread
also runs a passive WAL checkpoint after every `CHECKPOINT_EVERY` commits in the loop. A call that
times out in the thread may still commit afterwards, which is harmless: the batch is retried and
writes are idempotent.

Fencing and errors are those of `store.executions`: `StaleFencingToken`, `InvalidState`,
`ExecutionNotFound`; `StoreUnavailable` for a locked or unreachable database, `StoreError` for
anything else the driver refuses. Elsewhere (PostgreSQL; SQLite in memory, where a second connection
would see another database) the batch goes through `ExecutionRepository.write_batch` (one SQLAlchemy
transaction).
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

CHECKPOINT_EVERY = 200  # commits in the event loop between two passive WAL checkpoints in the thread


_BUSY: tuple[Any, ...] = ("busy",)  # `_commit_in_loop`: not done here, go to the thread


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
        self._conn: sqlite3.Connection | None = None  # the thread's
        self._loop_conn: sqlite3.Connection | None = None  # the event loop's (never waits for a lock)
        self._in_loop = synchronous.upper() != "FULL"
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Future[None] | None = None
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
        refused = self._commit_in_loop(fence, statements)
        if refused is _BUSY:
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

    def _commit_in_loop(
        self, fence: tuple[Any, ...], statements: list[tuple[str, list[tuple[Any, ...]]]]
    ) -> tuple[Any, ...] | None:
        """`_commit` in the event loop if it can start at once; `_BUSY` when it must go to the thread
        (write lock taken, `synchronous=FULL`, or store closed: the thread says which)."""
        if not self._in_loop or self._closed:
            return _BUSY
        try:
            if self._loop_conn is None:
                self._loop_conn = self._connect(busy_timeout=0.0, autocheckpoint=False)
            refused = self._commit(self._loop_conn, fence, statements)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return _BUSY
            raise StoreUnavailable(f"write batch: {type(exc).__name__}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"write batch: {type(exc).__name__}: {exc}") from exc
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._since_checkpoint = 0
            self._checkpoint = asyncio.wrap_future(self._thread.submit(self._wal_checkpoint))
        return refused

    def _wal_checkpoint(self) -> None:
        """In the thread: copy what the WAL holds into the database where no reader needs it (never
        waits, never fails a commit; the next one tries again)."""
        try:
            if self._conn is None:
                self._conn = self._connect(busy_timeout=self.timeout_seconds, autocheckpoint=True)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass

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
                self._conn = self._connect(busy_timeout=self.timeout_seconds, autocheckpoint=True)
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

    def _connect(self, *, busy_timeout: float, autocheckpoint: bool) -> sqlite3.Connection:
        """Like the pool's connections (`gl_common.db`): WAL, `synchronous`, foreign keys; autocommit
        mode, so that the transactions are exactly the ones `_commit` begins. The file is already in
        WAL mode (the migrations ran on it), which needs no lock to confirm."""
        conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                raise StoreError(f"write batch: {self.path} is not in WAL mode")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            if not autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Let a commit under way end (bounded by the timeout), close the connection, stop the thread."""
        if self._closed:
            return
        self._closed = True

        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

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
