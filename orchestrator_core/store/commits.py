"""The hot writes of a run on a SQLite file: each one call on a connection of its own, in the event
loop when the write lock is free.

Where it sits: `engine.Engine.execute` creates and claims a run with `Store.commits.create_run`,
`checkpoints.RunWriter` sends every commit of a running execution (checkpoints, traces, provenance
records of the nodes that finished together) through `Store.commits.write_batch`, and the executor's
last transaction is `Store.commits.finish`. Each has the meaning of the `store.executions` method of
the same name (fencing, errors, what is stored), and on PostgreSQL, or SQLite in memory (where a second
connection would see another database), it is that method.

On a SQLite file a `SqliteCommitter` runs the whole transaction as one call on a `sqlite3` connection
of its own: `BEGIN IMMEDIATE`, the statements, `COMMIT`. A batch is the fencing `UPDATE` (which also
sets the chain's head) and one upsert statement per table (`rundata.batch_rows`, `bulk.upsert_sql`:
the same rows and statements the SQLAlchemy path writes); creating a run is the DAG's latest version
and one `INSERT ... RETURNING` (`ExecutionRepository.insert_values`); finishing is the fencing
`UPDATE ... RETURNING` and the run document (or the last rows). Through SQLAlchemy and aiosqlite the
same transactions are three to four hops to aiosqlite's thread and back per statement, which bounded a
chain with checkpoints to ~300 nodes/s and a run record to ~4 ms; a hop to any thread still costs a
context switch or two, which on a busy machine is most of a node's time.

So the call runs in the event loop itself when it cannot wait: that connection has no busy timeout
(`BEGIN IMMEDIATE` fails at once, before any statement, if another connection holds the write lock), no
automatic WAL checkpoint (which would `fsync` in the loop), and is used only with `synchronous=NORMAL`
(a WAL commit then writes to the WAL without `fsync`: tens of microseconds). When the write lock is
taken, or with `synchronous=FULL`, a batch runs in the committer's worker thread on a second connection
set up like the pool's (busy timeout = the store's timeout), bounded by `asyncio.timeout` as well, and a
run's creation or end goes the SQLAlchemy way; the thread also runs a passive WAL checkpoint after every
`CHECKPOINT_EVERY` transactions in the loop. A batch that times out in the thread may still commit
afterwards, which is harmless: it is retried and writes are idempotent.

Errors: `StaleFencingToken`, `InvalidState`, `ExecutionNotFound`, `DagNotFound` as in
`store.executions`; `StoreUnavailable` for a locked or unreachable database, `StoreError` for anything
else the driver refuses.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from gl_common.clock import Clock
from gl_common.sqltypes import UTCDateTime
from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import (
    DagNotFound,
    ExecutionNotFound,
    InvalidState,
    StaleFencingToken,
    StoreError,
    StoreUnavailable,
)
from orchestrator_core.records import ExecutionRecord
from orchestrator_core.store.bulk import sqlite_stamp, upsert_sql
from orchestrator_core.store.dags import DagRepository
from orchestrator_core.store.executions import ClaimedRun, ExecutionRepository, execution_record
from orchestrator_core.store.rundata import DOCUMENT_COLUMNS, WriteBatch, batch_rows, document_row
from orchestrator_core.store.schema import dags, executions, run_documents

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

CHECKPOINT_EVERY = 200  # transactions in the event loop between two passive WAL checkpoints in the thread


class _Busy:
    """`SqliteCommitter.in_loop`'s answer when the work cannot run in the loop now."""


BUSY = _Busy()


class BatchCommits:
    """A run's creation, batches and end: see the module docstring."""

    def __init__(
        self, repository: ExecutionRepository, dags: DagRepository, sqlite: SqliteCommitter | None
    ) -> None:
        self.repository = repository
        self.dags = dags
        self.sqlite = sqlite

    async def create_run(
        self,
        dag_id: str,
        build: Callable[[DagDefinition], ExecutionRecord],
        *,
        claim: tuple[str | None, int | None],
    ) -> ClaimedRun:
        """`ExecutionRepository.create_run` with a claim: the DAG's latest version, the claimed row."""
        if self.sqlite is not None:
            done = self.sqlite.in_loop(lambda conn: self._create_run(conn, dag_id, build, claim))
            if not isinstance(done, _Busy):
                return done
        return await self.repository.create_run(dag_id, build, claim=claim)

    async def write_batch(self, execution_id: str, token: int, batch: WriteBatch) -> None:
        """Fenced write of the batch's traces, checkpoints and provenance records in one transaction."""
        if self.sqlite is None:
            await self.repository.write_batch(execution_id, token, batch)
            return
        work = self._batch_work(self.sqlite, execution_id, token, batch)
        if isinstance(self.sqlite.in_loop(work), _Busy):
            await self.sqlite.in_thread(work)

    def write_batch_now(self, execution_id: str, token: int, batch: WriteBatch) -> bool:
        """`write_batch` if it can be done at once, without waiting (a SQLite file whose write lock is
        free): True once committed; False when it must go the waiting way. Raises what `write_batch`
        raises."""
        if self.sqlite is None:
            return False
        return not isinstance(
            self.sqlite.in_loop(self._batch_work(self.sqlite, execution_id, token, batch)), _Busy
        )

    @staticmethod
    def _batch_work(sqlite: SqliteCommitter, execution_id: str, token: int, batch: WriteBatch) -> Work[None]:
        fence, statements = sqlite.fence(execution_id, token, batch), sqlite.batch(execution_id, batch)

        def work(conn: sqlite3.Connection) -> None:
            sqlite.run_fence(conn, fence, returning=False)
            for sql, rows in statements:
                conn.executemany(sql, rows)

        return work

    async def finish(
        self, execution_id: str, token: int, *, status: str, error: str | None, batch: WriteBatch
    ) -> ExecutionRecord:
        """`ExecutionRepository.finish`: the last batch and the final status, fenced, in one transaction."""
        if self.sqlite is not None:
            done = self.sqlite.in_loop(
                lambda conn: self.sqlite_finish(conn, execution_id, token, status, error, batch)
            )
            if not isinstance(done, _Busy):
                return done
        return await self.repository.finish(execution_id, token, status=status, error=error, batch=batch)

    def sqlite_finish(
        self,
        conn: sqlite3.Connection,
        execution_id: str,
        token: int,
        status: str,
        error: str | None,
        batch: WriteBatch,
    ) -> ExecutionRecord:
        assert self.sqlite is not None
        sqlite = self.sqlite
        now = sqlite_stamp(sqlite.clock.now())
        fence = sqlite.fence(execution_id, token, batch, final=(status, error, now))
        row: ExecutionRecord = sqlite.run_fence(conn, fence, returning=True)
        if batch.whole_run:
            conn.execute(sqlite.document_sql, document_row(execution_id, batch, now))
            batch = WriteBatch(checkpoints=batch.checkpoints)
        for sql, rows in sqlite.batch(execution_id, batch):
            conn.executemany(sql, rows)
        return row

    def _create_run(
        self,
        conn: sqlite3.Connection,
        dag_id: str,
        build: Callable[[DagDefinition], ExecutionRecord],
        claim: tuple[str | None, int | None],
    ) -> ClaimedRun:
        assert self.sqlite is not None
        sqlite = self.sqlite
        found = conn.execute(sqlite.latest_dag_sql, (dag_id,)).fetchone()
        if found is None:
            raise DagNotFound(f"DAG {dag_id!r} is not registered")
        dag = self.dags.cached(dag_id, int(found[0]))
        if dag is None:
            dag = self.dags.parsed(conn.execute(sqlite.dag_sql, (dag_id, found[0])).fetchone()[0])
        values = self.repository.insert_values(build(dag), claim)
        names = list(values)
        statement = sqlite.insert_sql(names)
        cursor = conn.execute(statement, [sqlite.bind(values[n]) for n in names])
        return ClaimedRun(sqlite.record(cursor), dag, None)

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
    """Two connections to one SQLite file: the event loop's (never waits for a lock) and the one of
    its worker thread (waits up to the timeout); each transaction is one call on one of them."""

    def __init__(
        self, path: str, *, dialect: Dialect, clock: Clock, timeout_seconds: float, synchronous: str
    ) -> None:
        self.path = path
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.synchronous = synchronous
        self.dialect = dialect
        self._conn: sqlite3.Connection | None = None  # the thread's
        self._loop_conn: sqlite3.Connection | None = None  # the event loop's
        self._use_loop = synchronous.upper() != "FULL"
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gl-sqlite-commits")
        self._closed = False
        self._trace: Callable[[str], None] | None = None
        quote = dialect.identifier_preparer.quote
        table = quote(executions.name)
        self._fence_sql = (
            f"UPDATE {table} SET updated_at = ?, provenance_head = coalesce(?, provenance_head), "
            "provenance_length = coalesce(?, provenance_length){final} "
            "WHERE execution_id = ? AND fencing_token = ? AND status = 'running'"
        )
        self._current_sql = f"SELECT fencing_token, status FROM {table} WHERE execution_id = ?"
        self.latest_dag_sql = (
            f"SELECT version FROM {quote(dags.name)} WHERE dag_id = ? ORDER BY version DESC LIMIT 1"
        )
        self.dag_sql = f"SELECT definition FROM {quote(dags.name)} WHERE dag_id = ? AND version = ?"
        self.document_sql = upsert_sql(dialect, run_documents, DOCUMENT_COLUMNS) or ""
        self._statements: dict[str, str] = {}
        self._returning = ", ".join(quote(c.name) for c in executions.c)
        self._stamps = {c.name for c in executions.c if isinstance(c.type, UTCDateTime)}

    # -- statements --------------------------------------------------------------------------------

    def fence(
        self,
        execution_id: str,
        token: int,
        batch: WriteBatch,
        *,
        final: tuple[str, str | None, str | None] | None = None,
    ) -> tuple[str, tuple[Any, ...]]:
        """The fencing UPDATE (with `final` = (status, error, stamp): the run's end) and its values."""
        head = batch.head()
        values: tuple[Any, ...] = (
            sqlite_stamp(self.clock.now()) if final is None else final[2],
            head.get("provenance_head"),
            head.get("provenance_length"),
        )
        sql = self._fence_sql.format(
            final="" if final is None else ", status = ?, error = ?, completed_at = ?"
        )
        if final is not None:
            values += final
        return sql, (*values, execution_id, token)

    def run_fence(
        self, conn: sqlite3.Connection, fence: tuple[str, tuple[Any, ...]], *, returning: bool
    ) -> Any:
        """Run the fencing UPDATE; with `returning`, the row as stored (an `ExecutionRecord`). Raises
        what `store.executions` raises when no row matches."""
        sql, values = fence
        execution_id, token = values[-2], values[-1]
        if returning:
            cursor = conn.execute(f"{sql} RETURNING {self._returning}", values)
            row = cursor.fetchone()
            if row is not None:
                return self._record(cursor, row)
        elif conn.execute(sql, values).rowcount == 1:
            return None
        current = conn.execute(self._current_sql, (execution_id,)).fetchone()
        if current is None:
            raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
        if int(current[0]) != token:
            raise StaleFencingToken(
                f"execution {execution_id} is now owned with fencing token {current[0]}, not {token}"
            )
        raise InvalidState(f"execution {execution_id} is {current[1]}")

    def batch(self, execution_id: str, batch: WriteBatch) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The batch's upserts (statement, rows), datetimes bound as SQLAlchemy binds them on SQLite."""
        statements = []
        for table, names, rows in batch_rows(execution_id, batch, sqlite_stamp, self.clock.now()):
            sql = self._statements.get(table.name)
            if sql is None:
                sql = self._statements[table.name] = upsert_sql(self.dialect, table, names) or ""
            statements.append((sql, rows))
        return statements

    def insert_sql(self, names: list[str]) -> str:
        quote = self.dialect.identifier_preparer.quote
        return (
            f"INSERT INTO {quote(executions.name)} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)}) RETURNING {self._returning}"
        )

    def bind(self, value: Any) -> Any:
        """A value as SQLAlchemy binds it on SQLite (datetimes as naive UTC text)."""
        return sqlite_stamp(value) if hasattr(value, "tzinfo") else value

    def record(self, cursor: sqlite3.Cursor) -> ExecutionRecord:
        return self._record(cursor, cursor.fetchone())

    def _record(self, cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> ExecutionRecord:
        """An `executions` row read with `RETURNING` as an `ExecutionRecord` (stamps as `UTCDateTime`
        reads them)."""
        names = [d[0] for d in cursor.description]
        read = UTCDateTime().process_result_value
        values = {
            n: read(v, self.dialect) if n in self._stamps else v for n, v in zip(names, row, strict=True)
        }
        return execution_record(SimpleNamespace(**values))

    # -- running transactions ----------------------------------------------------------------------

    def trace_statements(self, callback: Callable[[str], None] | None) -> None:
        """Call `callback` with every statement the event loop's connection runs (None: stop); for
        diagnosis and for counting round trips."""
        self._trace = callback
        if self._loop_conn is not None:
            self._loop_conn.set_trace_callback(callback)

    def in_loop(self, work: Work[T]) -> T | _Busy:
        """Run `work` in one transaction in the event loop if the write lock is free now; else `BUSY`
        (also with `synchronous=FULL`, or once closed: the fallback path says what happens then)."""
        if not self._use_loop or self._closed:
            return BUSY
        try:
            if self._loop_conn is None:
                self._loop_conn = self._connect(busy_timeout=0.0, autocheckpoint=False)
                self._loop_conn.set_trace_callback(self._trace)
            result = _transaction(self._loop_conn, work)
        except sqlite3.OperationalError as exc:
            if isinstance(exc, _NotBegun) or (self._loop_conn is None and _is_busy(exc)):
                return BUSY  # nothing ran: the lock (or, while connecting, the file) is busy now
            raise StoreUnavailable(f"write: {type(exc).__name__}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"write: {type(exc).__name__}: {exc}") from exc
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._since_checkpoint = 0
            self._checkpoint = asyncio.wrap_future(self._thread.submit(self._wal_checkpoint))
        return result

    async def in_thread(self, work: Work[T]) -> T:
        """Run `work` in one transaction in the thread (waiting for the write lock), bounded by the
        timeout; errors mapped."""
        if self._closed:
            raise StoreUnavailable("write: the store is closed")

        def run() -> T:
            if self._conn is None:
                self._conn = self._connect(busy_timeout=self.timeout_seconds, autocheckpoint=True)
            return _transaction(self._conn, work)

        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await asyncio.wrap_future(self._thread.submit(run))
        except TimeoutError as exc:
            raise StoreUnavailable(f"write: database did not answer within {self.timeout_seconds}s") from exc
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, I/O, cannot open
            raise StoreUnavailable(f"write: {type(exc).__name__}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"write: {type(exc).__name__}: {exc}") from exc

    def _wal_checkpoint(self) -> None:
        """In the thread: copy what the WAL holds into the database where no reader needs it (never
        waits, never fails a commit; the next one tries again)."""
        try:
            if self._conn is None:
                self._conn = self._connect(busy_timeout=self.timeout_seconds, autocheckpoint=True)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass

    def _connect(self, *, busy_timeout: float, autocheckpoint: bool) -> sqlite3.Connection:
        """Like the pool's connections (`gl_common.db`): WAL, `synchronous`, foreign keys; autocommit
        mode, so that the transactions are exactly the ones `_transaction` begins. The file is already
        in WAL mode (the migrations ran on it), which needs no lock to confirm."""
        conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                raise StoreError(f"write: {self.path} is not in WAL mode")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            if not autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Let a commit under way end (bounded by the timeout), close the connections, stop the thread."""
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


class _NotBegun(sqlite3.OperationalError):
    """`BEGIN IMMEDIATE` was refused (the write lock is taken): nothing ran."""


def _transaction(conn: sqlite3.Connection, work: Work[T]) -> T:
    """`work` between `BEGIN IMMEDIATE` and `COMMIT`, rolled back if anything raises."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            raise _NotBegun(str(exc)) from exc
        raise
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds what this one needs right now."""
    return "locked" in str(exc) or "busy" in str(exc)
