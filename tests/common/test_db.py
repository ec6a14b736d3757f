"""The store foundation (`gl_common.db`) on SQLite and PostgreSQL: which errors its transactions
raise, what passes through unchanged, and what it refuses before connecting."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gl_common.db import Database, PoolSettings
from gl_common.errors import StoreError, StoreUnavailable


class DomainError(Exception):
    """Stands for a service's own error raised inside a transaction."""


async def test_a_refused_statement_is_a_store_error_not_unavailability(database_url: str) -> None:
    db = Database.connect(database_url)
    try:
        async with db.transaction("create") as conn:
            await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        with pytest.raises(StoreError, match="insert twice: IntegrityError") as caught:
            async with db.transaction("insert twice") as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert not isinstance(caught.value, StoreUnavailable)
    finally:
        await db.close()


async def test_a_services_own_error_passes_through_and_rolls_back(database_url: str) -> None:
    db = Database.connect(database_url, passthrough=(DomainError,))
    try:
        async with db.transaction("create") as conn:
            await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        with pytest.raises(DomainError):
            async with db.transaction("insert") as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                raise DomainError
        async with db.transaction("read") as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one() == 0
    finally:
        await db.close()


async def test_an_unreachable_database_is_unavailable() -> None:
    db = Database.connect("postgresql+asyncpg://nobody@127.0.0.1:1/none", PoolSettings(timeout_seconds=2))
    try:
        with pytest.raises(StoreUnavailable, match=r"^ping: "):
            await db.ping()
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+aiomysql://x@127.0.0.1/none", "unsupported database backend 'mysql'"),
        ("sqlite:///x.db", r"must use the async driver: sqlite\+aiosqlite"),
        ("postgresql+psycopg2://x@127.0.0.1/none", r"must use the async driver: postgresql\+asyncpg"),
        ("not a url", "invalid database_url"),
    ],
)
def test_a_url_of_another_backend_or_driver_is_refused_before_connecting(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        Database.connect(url)


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    db = Database.connect(sqlite_url)
    try:
        async with db.transaction("pragmas") as conn:
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar_one() == 1
    finally:
        await db.close()


@pytest.mark.parametrize("begin", ["immediate", None])
async def test_an_immediate_sqlite_transaction_holds_the_write_lock_from_its_start(
    sqlite_url: str, begin: str | None
) -> None:
    """With `sqlite_begin="immediate"` a transaction that has only read yet already keeps writers
    out (they wait on the busy timeout); with the driver's default it takes the lock at its first write."""
    db = Database.connect(sqlite_url, PoolSettings(sqlite_begin=begin))  # type: ignore[arg-type]
    other = Database.connect(sqlite_url, PoolSettings(timeout_seconds=0.2))
    try:
        async with db.transaction("create") as conn:
            await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        async with db.transaction("reads first") as reader:
            await reader.execute(sa.text("SELECT count(*) FROM t"))
            if begin == "immediate":
                with pytest.raises(StoreUnavailable, match=r"database is locked|did not answer"):
                    async with other.transaction("writes meanwhile") as writer:
                        await writer.execute(sa.text("INSERT INTO t VALUES (1)"))
            else:
                async with other.transaction("writes meanwhile") as writer:
                    await writer.execute(sa.text("INSERT INTO t VALUES (1)"))
    finally:
        await other.close()
        await db.close()
