"""The orchestrator's durable store: DAG versions, executions, node traces, checkpoints, provenance.

Where it sits: `engine.Engine` opens one `Store` (`await Store.open(url, ...)`, which runs the
migrations) and hands it to each `executor.Executor`; `checkpoints.CheckpointWriter` funnels a run's
writes into `write_batch`. SQLAlchemy Core (async) with one code path for SQLite (aiosqlite, WAL,
the embedded default) and PostgreSQL (asyncpg); no dialect-specific SQL beyond the connect-time
SQLite pragmas and the migration lock.

Fencing: every write that belongs to a running execution carries the fencing token it was claimed
with. The write's transaction starts with `UPDATE executions ... WHERE execution_id = :id AND
fencing_token = :token AND status = 'running'`, which also takes the row lock (PostgreSQL) or the
database write lock (SQLite) for the rest of the transaction; if no row matches, nothing is written and
`StaleFencingToken` (another owner claimed it) or `InvalidState` (cancelled or finished elsewhere) is
raised. `claim_execution` only accepts a token higher than the stored one (or issues the next one
itself when the caller has no external fencing counter).

Every operation runs under `asyncio.timeout(timeout_seconds)`; SQLAlchemy/driver errors and timeouts
become `StoreError` here and never leak further.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gl_common.clock import Clock, SystemClock
from orchestrator_core import migrations
from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import (
    DagNotFound,
    ExecutionNotFound,
    InvalidState,
    OrchestratorError,
    StaleFencingToken,
    StoreError,
)
from orchestrator_core.hashing import canonical_json, sha256_hex
from orchestrator_core.migrations.types import UTCDateTime
from orchestrator_core.records import (
    CheckpointRecord,
    ExecutionOptions,
    ExecutionRecord,
    LimitOverride,
    NodeTrace,
    PoolStats,
    ProvenanceEntry,
)

log = logging.getLogger(__name__)

# -- current schema (what the migrations produce; a test compares the two) ---------------------------

metadata = sa.MetaData()


def _execution_key() -> sa.Column[str]:
    """The `execution_id` key column of a table of one execution's data (deleted with the execution)."""
    return sa.Column(
        "execution_id",
        sa.String(64),
        sa.ForeignKey("executions.execution_id", ondelete="CASCADE"),
        primary_key=True,
    )


dags = sa.Table(
    "dags",
    metadata,
    sa.Column("dag_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

executions = sa.Table(
    "executions",
    metadata,
    sa.Column("execution_id", sa.String(64), primary_key=True),
    sa.Column("dag_id", sa.String(128), nullable=False, index=True),
    sa.Column("dag_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("input_data", sa.Text, nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("owner", sa.String(255)),
    sa.Column("fencing_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("timeout_seconds", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("provenance_head", sa.String(64)),
    sa.Column("provenance_length", sa.Integer, nullable=False, server_default="0"),
)

node_traces = sa.Table(
    "node_traces",
    metadata,
    _execution_key(),
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("agent_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("duration_ms", sa.Float),
    sa.Column("attempt_count", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("input_hash", sa.String(64)),
    sa.Column("timeout_seconds", sa.Float),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    _execution_key(),
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("output_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

provenance = sa.Table(
    "provenance",
    metadata,
    _execution_key(),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("node_id", sa.String(128), nullable=False),
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("output_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

run_documents = sa.Table(
    "run_documents",
    metadata,
    _execution_key(),
    sa.Column("node_traces", sa.Text, nullable=False),
    sa.Column("provenance", sa.Text, nullable=False),
    sa.Column("written_at", UTCDateTime, nullable=False),
)

limit_overrides = sa.Table(
    "limit_overrides",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("set_by", sa.String(255), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

_DAG_CACHE_SIZE = 256  # parsed DAG versions kept in memory (they never change once stored)
_CHUNK = 400  # rows per statement when deleting by key lists (well under SQLite's variable limit)


class TraceFields(Protocol):
    """What the store reads from a trace to write its row: a `NodeTrace`, or the executor's live node
    state for the final write of a run (saves building one frozen record per node)."""

    @property
    def node_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def level(self) -> int: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def duration_ms(self) -> float | None: ...
    @property
    def attempt_count(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def input_hash(self) -> str | None: ...
    @property
    def timeout_seconds(self) -> float | None: ...


@dataclass(frozen=True)
class WriteBatch:
    """Writes of one execution that commit together (one transaction, fenced)."""

    traces: Sequence[TraceFields] = ()
    checkpoints: Sequence[CheckpointRecord] = ()
    provenance: Sequence[ProvenanceEntry] = ()
    # True: `traces` and `provenance` are the whole run (every node, the whole chain), as a run without
    # checkpoints writes them once at its end; stored as one `run_documents` row, replacing any earlier.
    whole_run: bool = False

    def __bool__(self) -> bool:
        return bool(self.traces or self.checkpoints or self.provenance or self.whole_run)


class Store:
    """Async access to the orchestrator tables. Build with `await Store.open(database_url)`."""

    def __init__(self, engine: AsyncEngine, *, timeout_seconds: float = 10.0, clock: Clock | None = None):
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        self.clock: Clock = clock or SystemClock()
        self.dialect = engine.dialect.name
        self._dag_cache: dict[tuple[str, int], DagDefinition] = {}
        self._closed = False
        self._in_flight = 0  # transactions under way; close() lets them end before the pool goes
        self._drained = asyncio.Event()
        self._drained.set()

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout_seconds: float = 10.0,
        clock: Clock | None = None,
    ) -> Store:
        """Connect, configure (SQLite: WAL), and upgrade the schema to the latest version."""
        try:
            url = sa.make_url(database_url)
        except SQLAlchemyError as exc:
            raise StoreError(f"invalid database_url: {exc}") from exc
        kwargs: dict[str, Any] = {"pool_pre_ping": False}
        if url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": timeout_seconds}
        elif url.get_backend_name() == "postgresql":
            kwargs.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=timeout_seconds,
                connect_args={"timeout": timeout_seconds, "command_timeout": timeout_seconds},
            )
        else:
            raise StoreError(
                f"unsupported database backend {url.get_backend_name()!r} (sqlite or postgresql)"
            )
        try:
            engine = create_async_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError, TypeError) as exc:
            raise StoreError(f"cannot create database engine for {url.render_as_string()}: {exc}") from exc
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas(timeout_seconds))
        store = cls(engine, timeout_seconds=timeout_seconds, clock=clock)
        try:
            await store.migrate()
            if not (engine.dialect.insert_returning and engine.dialect.update_returning):
                version = ".".join(map(str, engine.dialect.server_version_info or ()))
                raise StoreError(
                    f"{engine.dialect.name} {version} cannot return rows from INSERT/UPDATE; "
                    "SQLite 3.35 or newer (or PostgreSQL) is required"
                )
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        """Let transactions under way end (each is bounded by the timeout), then close the pool.

        Later calls get `StoreError`: a connection opened, or handed back, after `dispose()` would sit
        in a pool that nobody closes again.
        """
        self._closed = True
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._drained.wait()
        except TimeoutError:
            log.warning("closing the store with %d transaction(s) still under way", self._in_flight)
        await self.engine.dispose()

    @asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[AsyncConnection]:
        """A transaction with the store's timeout; driver errors become `StoreError`."""
        if self._closed:
            raise StoreError(f"{what}: the store is closed")
        self._in_flight += 1
        self._drained.clear()
        try:
            async with asyncio.timeout(self.timeout_seconds), self.engine.begin() as conn:
                yield conn
        except OrchestratorError:
            raise
        except TimeoutError as exc:
            raise StoreError(f"{what}: database did not answer within {self.timeout_seconds}s") from exc
        except (SQLAlchemyError, OSError, ValueError, RuntimeError) as exc:
            raise StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # asyncpg/aiosqlite raise their own types outside SQLAlchemy's tree
            raise StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        async with self._tx("migrate") as conn:
            return await conn.run_sync(migrations.upgrade)

    async def schema_version(self) -> int:
        async with self._tx("schema version") as conn:
            return await conn.run_sync(migrations.current_version)

    async def ping(self) -> None:
        """Raise `StoreError` unless the database answers (readiness)."""
        async with self._tx("ping") as conn:
            await conn.execute(sa.text("SELECT 1"))

    def pool_stats(self) -> PoolStats:
        """Checked-out, overflow and waiting connections of the real pool (0 where the pool has none)."""
        pool = self.engine.sync_engine.pool
        size = _call_int(pool, "size")
        checked_out = _call_int(pool, "checkedout")
        overflow = max(_call_int(pool, "overflow"), 0)
        pending = 0
        queue = getattr(getattr(pool, "_pool", None), "__dict__", {}).get("_queue")
        getters = getattr(queue, "_getters", None)
        if getters is not None:
            pending = sum(1 for waiter in getters if not waiter.done())
        return PoolStats(size=size, checked_out=checked_out, overflow=overflow, pending=pending)

    # -- DAGs --------------------------------------------------------------------------------------

    async def save_dag(self, dag: DagDefinition) -> DagDefinition:
        """Store a DAG. Unchanged content returns the stored latest version; changed content is stored
        as `max(dag.version, latest + 1)`."""
        document = dag.to_document()
        content = dict(document)
        content.pop("version", None)
        content_hash = sha256_hex(canonical_json(content))
        async with self._tx("save dag") as conn:
            latest = (
                await conn.execute(
                    sa.select(dags.c.version, dags.c.content_hash, dags.c.definition)
                    .where(dags.c.dag_id == dag.dag_id)
                    .order_by(dags.c.version.desc())
                    .limit(1)
                )
            ).first()
            if latest is not None and latest.content_hash == content_hash:
                if (dag.dag_id, latest.version) not in self._dag_cache:
                    self._remember(DagDefinition.from_document(json.loads(latest.definition)))
                return self._dag_cache[(dag.dag_id, latest.version)]
            version = dag.version if latest is None else max(dag.version, latest.version + 1)
            stored = dag.model_copy(update={"version": version})
            await conn.execute(
                dags.insert().values(
                    dag_id=dag.dag_id,
                    version=version,
                    definition=canonical_json(stored.to_document()),
                    content_hash=content_hash,
                    created_at=self.clock.now(),
                )
            )
        self._remember(stored)
        return stored

    async def get_dag(self, dag_id: str, version: int | None = None) -> DagDefinition:
        """A DAG version. Versions are immutable, so parsed definitions are cached by (id, version)."""
        if version is not None and (dag_id, version) in self._dag_cache:
            return self._dag_cache[(dag_id, version)]
        query = sa.select(dags.c.version).where(dags.c.dag_id == dag_id)
        if version is None:
            query = query.order_by(dags.c.version.desc()).limit(1)
        else:
            query = query.where(dags.c.version == version)
        async with self._tx("get dag") as conn:
            found = (await conn.execute(query)).scalar()
            if found is not None and (dag_id, found) not in self._dag_cache:
                text: str = (
                    await conn.execute(
                        sa.select(dags.c.definition).where(dags.c.dag_id == dag_id, dags.c.version == found)
                    )
                ).scalar_one()
                self._remember(DagDefinition.from_document(json.loads(text)))
        if found is None:
            what = f"DAG {dag_id!r}" + ("" if version is None else f" version {version}")
            raise DagNotFound(f"{what} is not registered")
        return self._dag_cache[(dag_id, int(found))]

    def _remember(self, dag: DagDefinition) -> None:
        if len(self._dag_cache) >= _DAG_CACHE_SIZE:
            self._dag_cache.pop(next(iter(self._dag_cache)))
        self._dag_cache[(dag.dag_id, dag.version)] = dag

    async def list_dags(self) -> list[DagDefinition]:
        latest = (
            sa.select(dags.c.dag_id, sa.func.max(dags.c.version).label("version"))
            .group_by(dags.c.dag_id)
            .subquery()
        )
        query = (
            sa.select(dags.c.definition)
            .join(latest, sa.and_(dags.c.dag_id == latest.c.dag_id, dags.c.version == latest.c.version))
            .order_by(dags.c.dag_id)
        )
        async with self._tx("list dags") as conn:
            rows = (await conn.execute(query)).all()
        return [DagDefinition.from_document(json.loads(row.definition)) for row in rows]

    # -- live limits -------------------------------------------------------------------------------

    async def get_limit_overrides(self) -> dict[str, LimitOverride]:
        """The live limits every replica applies, by name (empty: each replica's settings apply)."""
        async with self._tx("read limit overrides") as conn:
            rows = (await conn.execute(limit_overrides.select())).all()
        return {row.name: LimitOverride(row.name, row.value, row.set_by, row.updated_at) for row in rows}

    async def set_limit_overrides(self, values: dict[str, int], set_by: str) -> None:
        """Store (replace) the given live limits in one transaction; the others are left as they are."""
        if not values:
            return
        now = self.clock.now()
        insert = postgresql_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(limit_overrides)
        upsert = statement.on_conflict_do_update(
            index_elements=[limit_overrides.c.name],
            set_={"value": statement.excluded.value, "set_by": set_by, "updated_at": now},
        )
        async with self._tx("save limit overrides") as conn:  # two replicas at once: the last one wins
            await conn.execute(
                upsert,
                [{"name": n, "value": v, "set_by": set_by, "updated_at": now} for n, v in values.items()],
            )

    async def clear_limit_overrides(self) -> None:
        """Drop every live limit: each replica goes back to its own settings."""
        async with self._tx("clear limit overrides") as conn:
            await conn.execute(limit_overrides.delete())

    # -- executions --------------------------------------------------------------------------------

    async def create_execution(
        self, record: ExecutionRecord, *, claim: tuple[str | None, int | None] | None = None
    ) -> ExecutionRecord:
        """Insert a new execution (normally `queued`).

        With `claim=(owner, token)` the new row is claimed in the same transaction, exactly as
        `claim_execution(..., allowed_statuses={"queued"})` would right after the insert (status
        `running`, `owner`, fencing token `token` or 1, started now), and the stored row is returned:
        one transaction instead of two for a run that starts at once.
        """
        values: dict[str, Any] = {
            "execution_id": record.execution_id,
            "dag_id": record.dag_id,
            "dag_version": record.dag_version,
            "status": record.status,
            "input_data": canonical_json(record.input_data),
            "options": canonical_json(record.options.to_json()),
            "owner": record.owner,
            "fencing_token": record.fencing_token,
            "created_at": record.created_at,
            "started_at": record.started_at,
            "completed_at": record.completed_at,
            "updated_at": record.created_at,
            "timeout_seconds": record.timeout_seconds,
            "error": record.error,
        }
        if claim is not None:
            owner, token = claim
            if record.status != "queued":
                raise InvalidState(f"execution {record.execution_id} is {record.status}")
            if token is None:
                token = record.fencing_token + 1
            elif token <= record.fencing_token:
                raise StaleFencingToken(
                    f"fencing token {token} is not newer than {record.fencing_token} "
                    f"of execution {record.execution_id}"
                )
            now = self.clock.now()
            values.update(
                status="running",
                owner=owner,
                fencing_token=token,
                started_at=now,
                completed_at=None,
                error=None,
                updated_at=now,
            )
        statement = executions.insert().values(**values)
        async with self._tx("create execution") as conn:
            if claim is None:
                await conn.execute(statement)
                return record
            row = (await conn.execute(statement.returning(*executions.c))).first()  # as stored
        assert row is not None
        return _execution(row)

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        async with self._tx("get execution") as conn:
            row = (
                await conn.execute(executions.select().where(executions.c.execution_id == execution_id))
            ).first()
        if row is None:
            raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
        return _execution(row)

    async def list_executions(
        self, *, status: str | None = None, dag_id: str | None = None, limit: int = 500
    ) -> list[ExecutionRecord]:
        query = (
            executions.select()
            .order_by(executions.c.created_at.desc(), executions.c.execution_id)
            .limit(limit)
        )
        if status is not None:
            query = query.where(executions.c.status == status)
        if dag_id is not None:
            query = query.where(executions.c.dag_id == dag_id)
        async with self._tx("list executions") as conn:
            rows = (await conn.execute(query)).all()
        return [_execution(row) for row in rows]

    async def claim_execution(
        self,
        execution_id: str,
        *,
        owner: str | None,
        token: int | None,
        allowed_statuses: Iterable[str],
        dag_version: int | None = None,
    ) -> ExecutionRecord:
        """Make `owner` the runner of the execution: status `running`, a new fencing token, started now.

        `token` must be higher than the stored one (else `StaleFencingToken`); None issues stored + 1.
        The current status must be in `allowed_statuses` (else `InvalidState`).
        """
        allowed = set(allowed_statuses)
        now = self.clock.now()
        async with self._tx("claim execution") as conn:
            row = await _locked_row(conn, execution_id, now, allowed)
            if token is None:
                token = int(row.fencing_token) + 1
            elif token <= int(row.fencing_token):
                raise StaleFencingToken(
                    f"fencing token {token} is not newer than {row.fencing_token} of execution {execution_id}"
                )
            values: dict[str, Any] = {
                "status": "running",
                "owner": owner,
                "fencing_token": token,
                "started_at": now,
                "completed_at": None,
                "error": None,
                "updated_at": now,
            }
            if dag_version is not None:
                values["dag_version"] = dag_version
            await conn.execute(
                executions.update().where(executions.c.execution_id == execution_id).values(**values)
            )
            updated = await _read_execution(conn, execution_id)
        return updated

    async def finish_execution(
        self,
        execution_id: str,
        token: int,
        *,
        status: str,
        error: str | None,
        batch: WriteBatch | None = None,
    ) -> ExecutionRecord:
        """Fenced: write the last batch and set a final (or `interrupted`) status."""
        now = self.clock.now()
        head = _head(batch) if batch else {}
        async with self._tx("finish execution") as conn:
            # The fencing UPDATE sets the final status and the chain's head itself, and returns the
            # row; the batch follows in the same transaction, so either all of it lands or none.
            row = await self._fence(
                conn,
                execution_id,
                token,
                now,
                returning=True,
                status=status,
                error=error,
                completed_at=now,
                **head,
            )
            if batch:
                await self._write(conn, execution_id, batch)
        assert row is not None  # a fenced-out UPDATE raised
        return _execution(row)

    async def set_status(
        self,
        execution_id: str,
        *,
        status: str,
        expected: Iterable[str],
        error: str | None = None,
        traces: Sequence[NodeTrace] = (),
    ) -> ExecutionRecord:
        """Unfenced status change for runs nobody here is executing (cancel a queued or remote run,
        mark an orphan `interrupted`). `InvalidState` unless the current status is in `expected`."""
        wanted = set(expected)
        now = self.clock.now()
        async with self._tx("set execution status") as conn:
            await _locked_row(conn, execution_id, now, wanted)
            completed = now if status in ("completed", "failed", "cancelled", "interrupted") else None
            await conn.execute(
                executions.update()
                .where(executions.c.execution_id == execution_id)
                .values(status=status, error=error, completed_at=completed, updated_at=now)
            )
            if traces:
                await self._write(conn, execution_id, WriteBatch(traces=traces))
            updated = await _read_execution(conn, execution_id)
        return updated

    # -- run writes --------------------------------------------------------------------------------

    async def write_batch(self, execution_id: str, token: int, batch: WriteBatch) -> None:
        """Fenced write of traces, checkpoints and provenance records in one transaction."""
        async with self._tx("write batch") as conn:
            await self._fence(conn, execution_id, token, self.clock.now(), **_head(batch))
            await self._write(conn, execution_id, batch)

    async def _fence(
        self,
        conn: AsyncConnection,
        execution_id: str,
        token: int,
        now: datetime,
        *,
        returning: bool = False,
        **values: Any,
    ) -> sa.Row[Any] | None:
        """Check the fencing token (and take the row/write lock); `values` are set on the row too.

        With `returning`, the updated row comes back from the same statement (`UPDATE ... RETURNING`).
        """
        statement = (
            executions.update()
            .where(
                executions.c.execution_id == execution_id,
                executions.c.fencing_token == token,
                executions.c.status == "running",
            )
            .values(updated_at=now, **values)
        )
        if returning:
            row = (await conn.execute(statement.returning(*executions.c))).first()
            if row is not None:
                return row
        else:
            result = await conn.execute(statement)
            if result.rowcount == 1:
                return None
        row = (
            await conn.execute(
                sa.select(executions.c.fencing_token, executions.c.status).where(
                    executions.c.execution_id == execution_id
                )
            )
        ).first()
        if row is None:
            raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
        if int(row.fencing_token) != token:
            raise StaleFencingToken(
                f"execution {execution_id} is now owned with fencing token {row.fencing_token}, not {token}"
            )
        raise InvalidState(f"execution {execution_id} is {row.status}")

    async def _write(self, conn: AsyncConnection, execution_id: str, batch: WriteBatch) -> None:
        """The batch's rows (the caller's fencing UPDATE has already set the chain's head: `_head`)."""
        if batch.whole_run:
            await self._write_document(conn, execution_id, batch)
            batch = WriteBatch(checkpoints=batch.checkpoints)
        stamp = _stamp_converter(conn)
        if batch.traces:
            latest = {trace.node_id: trace for trace in batch.traces}
            await _delete_keys(conn, node_traces, node_traces.c.node_id, execution_id, list(latest))
            await _insert_many(
                conn,
                node_traces,
                _TRACE_COLUMNS,
                [
                    (
                        execution_id,
                        node_id,
                        t.agent_id,
                        t.status,
                        t.level,
                        stamp(t.started_at),
                        stamp(t.completed_at),
                        t.duration_ms,
                        t.attempt_count,
                        t.error,
                        t.input_hash,
                        t.timeout_seconds,
                    )
                    for node_id, t in latest.items()
                ],
            )
        if batch.checkpoints:
            latest_cp = {cp.node_id: cp for cp in batch.checkpoints}
            await _delete_keys(conn, checkpoints, checkpoints.c.node_id, execution_id, list(latest_cp))
            await _insert_many(
                conn,
                checkpoints,
                _CHECKPOINT_COLUMNS,
                [
                    (
                        execution_id,
                        cp.node_id,
                        cp.status,
                        canonical_json(cp.output),
                        cp.input_hash,
                        cp.output_hash,
                        stamp(cp.created_at),
                    )
                    for cp in latest_cp.values()
                ],
            )
        if batch.provenance:
            now = stamp(self.clock.now())
            seqs = [p.seq for p in batch.provenance]
            # idempotent: a re-sent batch replaces itself
            await _delete_keys(conn, provenance, provenance.c.seq, execution_id, seqs)
            await _insert_many(
                conn,
                provenance,
                _PROVENANCE_COLUMNS,
                [
                    (
                        execution_id,
                        p.seq,
                        p.node_id,
                        p.input_hash,
                        p.output_hash,
                        p.status,
                        p.prev_hash,
                        p.hash,
                        now,
                    )
                    for p in batch.provenance
                ],
            )

    async def _write_document(self, conn: AsyncConnection, execution_id: str, batch: WriteBatch) -> None:
        """Store the run's traces and chain as one `run_documents` row (replacing the previous one)."""
        values = {
            "execution_id": execution_id,
            "node_traces": _encode_document(
                _DOCUMENT_TRACE_FIELDS,
                [
                    (
                        t.node_id,
                        t.agent_id,
                        t.status,
                        t.level,
                        _epoch_us(t.started_at),
                        _epoch_us(t.completed_at),
                        None if t.duration_ms is None else round(t.duration_ms * 1000),
                        t.attempt_count,
                        t.error,
                        t.input_hash,
                        t.timeout_seconds,
                    )
                    for t in batch.traces
                ],
            ),
            "provenance": _encode_document(
                _DOCUMENT_PROVENANCE_FIELDS,
                [
                    (p.seq, p.node_id, p.input_hash, p.output_hash, p.status, p.prev_hash, p.hash)
                    for p in batch.provenance
                ],
            ),
            "written_at": self.clock.now(),
        }
        insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        statement = insert(run_documents).values(**values)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[run_documents.c.execution_id],
                set_={name: statement.excluded[name] for name in ("node_traces", "provenance", "written_at")},
            )
        )

    # -- reads of run data -------------------------------------------------------------------------

    async def get_traces(self, execution_id: str) -> dict[str, NodeTrace]:
        """Stored node traces: the rows of a run with checkpoints, or the run document of one without."""
        async with self._tx("get traces") as conn:
            document = await _read_document(conn, execution_id, run_documents.c.node_traces)
            if document is not None:
                return {trace.node_id: trace for trace in _document_traces(document)}
            rows = (
                await conn.execute(
                    node_traces.select()
                    .where(node_traces.c.execution_id == execution_id)
                    .order_by(node_traces.c.level, node_traces.c.node_id)
                )
            ).all()
        return {
            row.node_id: NodeTrace(
                node_id=row.node_id,
                agent_id=row.agent_id,
                status=row.status,
                level=row.level,
                started_at=row.started_at,
                completed_at=row.completed_at,
                duration_ms=row.duration_ms,
                attempt_count=row.attempt_count,
                error=row.error,
                input_hash=row.input_hash,
                timeout_seconds=row.timeout_seconds,
            )
            for row in rows
        }

    async def get_checkpoints(self, execution_id: str) -> list[CheckpointRecord]:
        async with self._tx("load checkpoints") as conn:
            rows = (
                await conn.execute(
                    checkpoints.select()
                    .where(checkpoints.c.execution_id == execution_id)
                    .order_by(checkpoints.c.created_at, checkpoints.c.node_id)
                )
            ).all()
        return [
            CheckpointRecord(
                execution_id=row.execution_id,
                node_id=row.node_id,
                status=row.status,
                output=json.loads(row.output),
                input_hash=row.input_hash,
                output_hash=row.output_hash,
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def get_provenance(self, execution_id: str) -> tuple[list[ProvenanceEntry], str | None, int]:
        """The chain in `seq` order, plus the head hash and length recorded on the execution row."""
        async with self._tx("get provenance") as conn:
            head = (
                await conn.execute(
                    sa.select(executions.c.provenance_head, executions.c.provenance_length).where(
                        executions.c.execution_id == execution_id
                    )
                )
            ).first()
            if head is None:
                raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
            document = await _read_document(conn, execution_id, run_documents.c.provenance)
            if document is not None:
                return _document_chain(document), head.provenance_head, int(head.provenance_length)
            rows = (
                await conn.execute(
                    provenance.select()
                    .where(provenance.c.execution_id == execution_id)
                    .order_by(provenance.c.seq)
                )
            ).all()
        entries = [
            ProvenanceEntry(
                seq=row.seq,
                node_id=row.node_id,
                input_hash=row.input_hash,
                output_hash=row.output_hash,
                status=row.status,
                prev_hash=row.prev_hash,
                hash=row.hash,
            )
            for row in rows
        ]
        return entries, head.provenance_head, int(head.provenance_length)


async def _read_execution(conn: AsyncConnection, execution_id: str) -> ExecutionRecord:
    """The execution's record as this transaction sees it (after its own writes)."""
    row = (await conn.execute(executions.select().where(executions.c.execution_id == execution_id))).first()
    assert row is not None, f"execution {execution_id} vanished inside its own transaction"
    return _execution(row)


async def _locked_row(
    conn: AsyncConnection, execution_id: str, now: datetime, allowed: set[str]
) -> sa.Row[Any]:
    """Lock the execution's row and read it: `ExecutionNotFound` / `InvalidState` unless its status
    is in `allowed`."""
    await _lock_row(conn, execution_id, now)
    row = (await conn.execute(executions.select().where(executions.c.execution_id == execution_id))).first()
    if row is None:
        raise ExecutionNotFound(f"execution {execution_id!r} does not exist")
    if row.status not in allowed:
        raise InvalidState(f"execution {execution_id} is {row.status}")
    return row


async def _lock_row(conn: AsyncConnection, execution_id: str, now: datetime) -> None:
    """Take the row lock (PostgreSQL) / write lock (SQLite) before reading, so read-modify-write is atomic."""
    await conn.execute(
        executions.update().where(executions.c.execution_id == execution_id).values(updated_at=now)
    )


_PLACEHOLDER: dict[str, Callable[[int], str]] = {
    "qmark": lambda i: "?",
    "numeric_dollar": lambda i: f"${i + 1}",
    "format": lambda i: "%s",
}
_TRACE_COLUMNS = (
    "execution_id",
    "node_id",
    "agent_id",
    "status",
    "level",
    "started_at",
    "completed_at",
    "duration_ms",
    "attempt_count",
    "error",
    "input_hash",
    "timeout_seconds",
)
_CHECKPOINT_COLUMNS = (
    "execution_id",
    "node_id",
    "status",
    "output",
    "input_hash",
    "output_hash",
    "created_at",
)
_PROVENANCE_COLUMNS = (
    "execution_id",
    "seq",
    "node_id",
    "input_hash",
    "output_hash",
    "status",
    "prev_hash",
    "hash",
    "created_at",
)


def _head(batch: WriteBatch) -> dict[str, Any]:
    """What the batch's provenance records make of the chain's head on the execution row."""
    if not batch.provenance:
        return {}
    # A whole run's chain is in seq order; queued records may not be.
    last = batch.provenance[-1] if batch.whole_run else max(batch.provenance, key=lambda p: p.seq)
    return {"provenance_head": last.hash, "provenance_length": last.seq}


# A run document (`run_documents`) holds, per column, `{"fields": [...], "rows": [[...], ...]}`.
# Stamps are integer microseconds since the epoch (UTC) and `duration_ms` is integer microseconds too:
# exact to the microsecond, and integers encode several times faster than floats.
# The fields are the row tables' columns without `execution_id` (and the records' `created_at`).
_DOCUMENT_TRACE_FIELDS = _TRACE_COLUMNS[1:]
_DOCUMENT_PROVENANCE_FIELDS = _PROVENANCE_COLUMNS[1:-1]
_DOCUMENT_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _encode_document(fields: Sequence[str], rows: list[tuple[Any, ...]]) -> str:
    return _DOCUMENT_ENCODER.encode({"fields": fields, "rows": rows})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(value: datetime | None) -> int | None:
    if value is None:
        return None
    # Exact: a timestamp of this era is a double with sub-microsecond spacing.
    return round((value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp() * 1_000_000)


def _stamp_from_epoch_us(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


async def _read_document(conn: AsyncConnection, execution_id: str, column: sa.Column[Any]) -> Any:
    """One column of the execution's run document, decoded; None when the run has none."""
    text = (
        await conn.execute(sa.select(column).where(run_documents.c.execution_id == execution_id))
    ).scalar()
    return None if text is None else json.loads(text)


def _document_rows(document: Any, fields: Sequence[str]) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or list(document.get("fields", ())) != list(fields):
        raise StoreError(
            f"run document has fields {document.get('fields') if isinstance(document, dict) else None}, "
            f"expected {list(fields)}"
        )
    return [dict(zip(fields, row, strict=True)) for row in document["rows"]]


def _document_traces(document: Any) -> list[NodeTrace]:
    traces = []
    for row in _document_rows(document, _DOCUMENT_TRACE_FIELDS):
        row["started_at"] = _stamp_from_epoch_us(row["started_at"])
        row["completed_at"] = _stamp_from_epoch_us(row["completed_at"])
        if row["duration_ms"] is not None:
            row["duration_ms"] /= 1000
        traces.append(NodeTrace(**row))
    traces.sort(key=lambda t: (t.level, t.node_id))
    return traces


def _document_chain(document: Any) -> list[ProvenanceEntry]:
    return [ProvenanceEntry(**row) for row in _document_rows(document, _DOCUMENT_PROVENANCE_FIELDS)]


def _keep(value: datetime | None) -> datetime | None:
    return value


def _sqlite_stamp(value: datetime | None) -> str | None:
    """What SQLAlchemy's SQLite DATETIME stores (`%Y-%m-%d %H:%M:%S.%f`, naive UTC), without strftime."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # what the clocks hand out: drop the "+00:00"
        return value.isoformat(" ", "microseconds")[:-6]
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _aware_stamp(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _stamp_converter(conn: AsyncConnection) -> Callable[[datetime | None], Any]:
    """How `_insert_many` wants UTC datetimes bound: the one conversion SQLAlchemy would have done
    (naive text on SQLite, aware on PostgreSQL), or untouched when Core does the insert itself."""
    if conn.dialect.paramstyle not in _PLACEHOLDER:
        return _keep
    return _sqlite_stamp if conn.dialect.name == "sqlite" else _aware_stamp


async def _insert_many(
    conn: AsyncConnection, table: sa.Table, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Bulk insert of `rows` (tuples in the order of `names`, datetimes converted with
    `_stamp_converter(conn)`). SQLAlchemy Core's executemany processes every parameter of every row in
    Python (~15 us a row); bulk writes of node rows go to the driver's executemany directly instead.
    Falls back to Core for a paramstyle not listed in `_PLACEHOLDER`."""
    if not rows:
        return
    placeholder = _PLACEHOLDER.get(conn.dialect.paramstyle)
    if placeholder is None:
        await conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])
        return
    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(n) for n in names)
    marks = ", ".join(placeholder(i) for i in range(len(names)))
    statement = f"INSERT INTO {preparer.quote(table.name)} ({columns}) VALUES ({marks})"
    await conn.exec_driver_sql(statement, rows)


async def _delete_keys(
    conn: AsyncConnection, table: sa.Table, key: sa.Column[Any], execution_id: str, keys: Sequence[Any]
) -> None:
    """Delete an execution's rows with these keys (so that a re-sent batch replaces itself). A large
    key list first checks whether the execution has any row at all in the table (one statement instead
    of one per chunk, for the common first write of a run's rows)."""
    if len(keys) > _CHUNK:
        exists = sa.select(sa.exists().where(table.c.execution_id == execution_id))
        if not (await conn.execute(exists)).scalar():
            return
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        await conn.execute(table.delete().where(table.c.execution_id == execution_id, key.in_(chunk)))


def _execution(row: Any) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=row.execution_id,
        dag_id=row.dag_id,
        dag_version=row.dag_version,
        status=row.status,
        input_data=json.loads(row.input_data),
        options=ExecutionOptions.from_json(json.loads(row.options)),
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        timeout_seconds=row.timeout_seconds,
        error=row.error,
        owner=row.owner,
        fencing_token=int(row.fencing_token),
    )


def _call_int(obj: object, name: str) -> int:
    method = getattr(obj, name, None)
    if not callable(method):
        return 0
    try:
        return int(method())
    except (TypeError, ValueError):
        return 0


def _enable_wal(cursor: Any, timeout_seconds: float) -> None:
    """Switch the file to WAL; retry while another process opening it at the same moment holds it.

    SQLite can answer "database is locked" to the journal-mode change without calling the busy
    handler (it would deadlock otherwise), so the retry is ours, bounded by the busy timeout.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver adapter re-raises sqlite3's OperationalError as its own
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _sqlite_pragmas(timeout_seconds: float) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching a fresh file to WAL needs the write lock, which another process
        # opening the same file at the same moment may hold.
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_seconds * 1000)}")
        _enable_wal(cursor, timeout_seconds)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect
