"""The store foundation of both services: the async engine, bounded transactions, errors, close.

Where it sits: each service's store opens one `Database` (`orchestrator_core.store.Store.open` today;
the watchdog's store is meant to adopt it next) and runs every query inside `Database.transaction()`.
Schema upgrades go through `Database.migrate(schema)`, which runs `gl_common.migrations` inside one
transaction. SQLAlchemy Core (async) with one code path for SQLite (aiosqlite, WAL: the embedded
default) and PostgreSQL (asyncpg: production).

Errors: the drivers' and SQLAlchemy's exceptions never leave this module; they become
`gl_common.errors.StoreError` (a refused or failed statement) or `StoreUnavailable` (cannot reach the
database, no answer within the timeout, or the store is closed). A service passes its own subclasses
(`StoreErrors(error=..., unavailable=...)`) so that its callers
handle one exception tree (e.g. `orchestrator_core.errors.StoreError` is both an `OrchestratorError`
and a `gl_common.db.StoreError`), and names its own exceptions that a transaction's body may raise
and that must come out unchanged (`passthrough`).

Timeouts: one `timeout_seconds` bounds connecting, waiting for a pooled connection, each PostgreSQL
statement (`command_timeout`), SQLite's busy handler, every transaction as a whole, and how long
`close()` waits for the transactions under way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gl_common import migrations
from gl_common.errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
READ_ONLY_OPTION = "gl_read_only"  # execution option of a read-only transaction (see `transaction`)
_DRIVER_MODULES = ("asyncpg", "aiosqlite", "sqlite3")


@dataclass(frozen=True)
class StoreErrors:
    """The exception types a `Database` raises: a service's own subclasses of the two above."""

    error: type[StoreError] = StoreError
    unavailable: type[StoreUnavailable] = StoreUnavailable


@dataclass(frozen=True)
class PoolSettings:
    """How a service's database is reached (its settings model fills this in)."""

    timeout_seconds: float = 10.0
    pool_size: int = 5  # PostgreSQL: connections kept open
    max_overflow: int = 10  # PostgreSQL: extra connections opened under load
    pre_ping: bool = False  # test each pooled connection before use (one round trip more)
    # SQLite: how a transaction begins. None keeps the driver's own handling (a transaction starts at
    # its first write; reads before it see the latest commit); "immediate" begins every transaction
    # with `BEGIN IMMEDIATE`, taking the write lock up front so that writers queue on the busy timeout.
    sqlite_begin: Literal["immediate"] | None = None
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"  # NORMAL is safe against corruption in WAL


@dataclass(frozen=True)
class PoolStats:
    """Connection-pool figures, for `gl_db_pool_*`."""

    size: int
    checked_out: int
    overflow: int
    pending: int


@dataclass
class _InFlight:
    """Transactions under way; `close()` lets them end before the pool goes."""

    count: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.drained.set()


class Database:
    """An async engine with bounded transactions and one error tree. Build with `Database.connect`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout_seconds: float,
        errors: StoreErrors = StoreErrors(),
        passthrough: tuple[type[BaseException], ...] = (),
        only_database_errors: bool = False,
    ) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        self.dialect = engine.dialect.name
        self.errors = errors
        self._passthrough: tuple[type[BaseException], ...] = (StoreError, *passthrough)
        self._only_database_errors = only_database_errors
        self._closed = False
        self._in_flight = _InFlight()

    @classmethod
    def connect(
        cls,
        database_url: str,
        pool: PoolSettings = PoolSettings(),
        *,
        errors: StoreErrors = StoreErrors(),
        passthrough: tuple[type[BaseException], ...] = (),
        only_database_errors: bool = False,
    ) -> Database:
        """Build the engine for `sqlite+aiosqlite:///PATH` or `postgresql+asyncpg://...` (no connection
        is opened yet); `errors.error` for a URL that names another backend or driver.

        `only_database_errors`: convert only the database's and the drivers' exceptions (SQLAlchemy,
        asyncpg, sqlite3, OS errors); anything else a transaction's body raises comes out unchanged
        (otherwise only `passthrough` does)."""
        try:
            url = sa.make_url(database_url)
        except SQLAlchemyError as exc:
            raise errors.error(f"invalid database_url: {exc}") from exc
        backend = url.get_backend_name()
        if backend not in DRIVERS:
            raise errors.error(f"unsupported database backend {backend!r} (sqlite or postgresql)")
        if url.get_driver_name() != DRIVERS[backend]:
            raise errors.error(
                f"a {backend} database_url must use the async driver: {backend}+{DRIVERS[backend]}://..."
            )
        kwargs: dict[str, Any] = {"pool_pre_ping": pool.pre_ping}
        if backend == "sqlite":
            kwargs["connect_args"] = {"timeout": pool.timeout_seconds}
        else:
            kwargs.update(
                pool_size=pool.pool_size,
                max_overflow=pool.max_overflow,
                pool_timeout=pool.timeout_seconds,
                connect_args={"timeout": pool.timeout_seconds, "command_timeout": pool.timeout_seconds},
            )
        try:
            engine = create_async_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError, TypeError) as exc:
            raise errors.error(f"cannot create database engine for {url.render_as_string()}: {exc}") from exc
        if backend == "sqlite":
            _install_sqlite_hooks(engine, pool)
        return cls(
            engine,
            timeout_seconds=pool.timeout_seconds,
            errors=errors,
            passthrough=passthrough,
            only_database_errors=only_database_errors,
        )

    @asynccontextmanager
    async def transaction(self, what: str, *, read_only: bool = False) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed when the block ends and rolled back when it raises, bounded by
        the timeout as a whole. `what` names the operation in error messages.

        `read_only`: the block only reads. On SQLite with `sqlite_begin="immediate"` it begins with a
        plain (deferred) `BEGIN`, so it reads a snapshot without taking the write lock that writers
        queue on; elsewhere it changes nothing."""
        if self._closed:
            raise self.errors.unavailable(f"{what}: the store is closed")
        in_flight = self._in_flight
        in_flight.count += 1
        in_flight.drained.clear()
        connected = False
        try:
            async with asyncio.timeout(self.timeout_seconds), self.engine.connect() as conn:
                connected = True
                if read_only:
                    await conn.execution_options(**{READ_ONLY_OPTION: True})
                async with conn.begin():
                    yield conn
        except self._passthrough:
            raise
        except Exception as exc:
            if not connected and not isinstance(exc, TimeoutError):  # whatever the driver says
                raise self.errors.unavailable(f"{what}: database not reachable: {_describe(exc)}") from exc
            if self._only_database_errors and not _is_database_error(exc):
                raise
            raise self._convert(exc, what) from exc
        finally:
            in_flight.count -= 1
            if not in_flight.count:
                in_flight.drained.set()

    def _convert(self, exc: Exception, what: str) -> StoreError:
        """The service's own exception for a failure inside a transaction."""
        if isinstance(exc, TimeoutError):
            return self.errors.unavailable(f"{what}: database did not answer within {self.timeout_seconds}s")
        # asyncpg/aiosqlite raise their own types outside SQLAlchemy's tree
        kind = self.errors.unavailable if _is_unavailable(exc) else self.errors.error
        return kind(f"{what}: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Let transactions under way end (each is bounded by the timeout), then close the pool.

        Later transactions get `StoreUnavailable`: a connection opened, or handed back, after
        `dispose()` would sit in a pool that nobody closes again.
        """
        self._closed = True
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._in_flight.drained.wait()
        except TimeoutError:
            log.warning("closing the store with %d transaction(s) still under way", self._in_flight.count)
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        async with self.transaction("ping") as conn:
            await conn.execute(sa.select(1))

    async def migrate(
        self, schema: migrations.Schema, now: datetime, *, target: int | None = None
    ) -> list[int]:
        """Apply `schema`'s pending migrations (up to `target`) in one transaction; the versions applied."""
        async with self.transaction("migrate") as conn:
            return await conn.run_sync(migrations.upgrade, schema, now, target)

    async def schema_version(self, schema: migrations.Schema) -> int:
        async with self.transaction("schema version") as conn:
            return await conn.run_sync(migrations.current_version, schema)

    def require_returning(self) -> None:
        """Refuse a database that cannot return rows from INSERT/UPDATE (SQLite before 3.35)."""
        dialect = self.engine.dialect
        if not (dialect.insert_returning and dialect.update_returning):
            version = ".".join(map(str, dialect.server_version_info or ()))
            raise self.errors.error(
                f"{dialect.name} {version} cannot return rows from INSERT/UPDATE; "
                "SQLite 3.35 or newer (or PostgreSQL) is required"
            )

    def pool_stats(self) -> PoolStats:
        """Checked-out, overflow and waiting connections of the real pool (0 where the pool has none)."""
        pool = self.engine.sync_engine.pool
        pending = 0
        queue = getattr(getattr(pool, "_pool", None), "__dict__", {}).get("_queue")
        getters = getattr(queue, "_getters", None)
        if getters is not None:
            pending = sum(1 for waiter in getters if not waiter.done())
        return PoolStats(
            size=_call_int(pool, "size"),
            checked_out=_call_int(pool, "checkedout"),
            overflow=max(_call_int(pool, "overflow"), 0),
            pending=pending,
        )


def _is_unavailable(exc: BaseException) -> bool:
    """Connection trouble (retry later) rather than a refused statement."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, OSError)):
        return True
    return type(exc).__module__.startswith("asyncpg") and "Connection" in type(exc).__name__


def _describe(exc: BaseException) -> str:
    """The first line of what the driver said (no SQL, no traceback link)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _is_database_error(exc: BaseException) -> bool:
    """Raised by the database, a driver or the network (not by the code inside a transaction)."""
    if isinstance(exc, (SQLAlchemyError, OSError, TimeoutError)):
        return True
    return type(exc).__module__.split(".")[0] in _DRIVER_MODULES


def _call_int(obj: object, name: str) -> int:
    method = getattr(obj, name, None)
    if not callable(method):
        return 0
    try:
        return int(method())
    except (TypeError, ValueError):
        return 0


def _install_sqlite_hooks(engine: AsyncEngine, pool: PoolSettings) -> None:
    """Per connection: the busy timeout, WAL, `synchronous`, foreign keys; `BEGIN IMMEDIATE` if asked."""
    timeout = pool.timeout_seconds
    immediate = pool.sqlite_begin == "immediate"

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if immediate:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (on_begin)
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching a fresh file to WAL needs the write lock, which another process
        # opening the same file at the same moment may hold.
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        _enable_wal(cursor, timeout)
        cursor.execute(f"PRAGMA synchronous={pool.sqlite_synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    event.listen(engine.sync_engine, "connect", on_connect)
    if immediate:

        def on_begin(conn: Any) -> None:
            read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        event.listen(engine.sync_engine, "begin", on_begin)


def _enable_wal(cursor: Any, timeout_seconds: float) -> None:
    """Switch the file to WAL once; retry while another process opening it at the same moment holds it.

    SQLite can answer "database is locked" to the journal-mode change without calling the busy
    handler (it would deadlock otherwise), so the retry is ours, bounded by the busy timeout.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver adapter re-raises sqlite3's OperationalError as its own
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
