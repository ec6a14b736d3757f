"""The shared migration runner (`gl_common.migrations`) with a schema of its own, on SQLite and
PostgreSQL: the watchdog's earlier bookkeeping is adopted, two services share one database, a
database newer than the code is refused, and a schema's versions must be 1..n."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from gl_common.db import Database
from gl_common.errors import StoreError
from gl_common.migrations import CreateTable, LegacyTable, Migration, Run, Schema

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _things() -> list[sa.schema.SchemaItem]:
    return [sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(20), nullable=False)]


def _seed(conn: sa.Connection) -> None:
    conn.execute(sa.text("INSERT INTO things (id, name) VALUES (1, 'seeded')"))


def _others() -> list[sa.schema.SchemaItem]:
    return [sa.Column("id", sa.Integer, primary_key=True)]


WATCHDOG_LIKE = Schema(
    component="watchdog-like",
    migrations=(
        Migration(1, "things", (CreateTable("things", _things),)),
        Migration(2, "a seeded thing", (Run(_seed),)),
    ),
    lock_key=0x1234,
    legacy=LegacyTable("schema_migrations", description_column="description"),
)
OTHER = Schema("other", (Migration(1, "others", (CreateTable("others", _others),)),), lock_key=0x5678)


async def _bookkeeping(db: Database) -> list[tuple[str, int, str]]:
    async with db.transaction("read") as conn:
        query = sa.text("SELECT component, version, description FROM gl_schema_migrations ORDER BY 1, 2")
        return [tuple(row) for row in (await conn.execute(query)).all()]  # type: ignore[misc]


async def test_the_watchdogs_earlier_bookkeeping_is_adopted(database_url: str) -> None:
    db = Database.connect(database_url)
    try:
        async with db.transaction("as the earlier runner left it") as conn:
            await conn.run_sync(WATCHDOG_LIKE.metadata(1).create_all)
            await conn.execute(
                sa.text(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                    "description VARCHAR(200) NOT NULL, applied_at TIMESTAMP NOT NULL)"
                )
            )
            await conn.execute(
                sa.text("INSERT INTO schema_migrations VALUES (1, 'things (old words)', :at)"),
                {"at": datetime(2025, 1, 1)},
            )
        assert await db.schema_version(WATCHDOG_LIKE) == 1
        assert await db.migrate(WATCHDOG_LIKE, NOW) == [2]
        assert await _bookkeeping(db) == [
            ("watchdog-like", 1, "things (old words)"),
            ("watchdog-like", 2, "a seeded thing"),
        ]
        async with db.transaction("read") as conn:
            assert (await conn.execute(sa.text("SELECT name FROM things"))).scalar_one() == "seeded"
    finally:
        await db.close()


async def test_two_schemas_share_a_database_without_mixing_their_versions(database_url: str) -> None:
    db = Database.connect(database_url)
    try:
        assert await db.migrate(WATCHDOG_LIKE, NOW, target=1) == [1]
        assert await db.migrate(OTHER, NOW) == [1]
        assert await db.migrate(WATCHDOG_LIKE, NOW) == [2]
        assert (await db.schema_version(WATCHDOG_LIKE), await db.schema_version(OTHER)) == (2, 1)
        assert await db.migrate(OTHER, NOW) == []
    finally:
        await db.close()


async def test_a_database_newer_than_the_code_is_refused_and_left_alone(database_url: str) -> None:
    db = Database.connect(database_url)
    try:
        await db.migrate(OTHER, NOW)
        newer = Schema(
            "other", (*OTHER.migrations, Migration(2, "things", (CreateTable("things", _things),))), 0x5678
        )
        await db.migrate(newer, NOW)
        with pytest.raises(StoreError, match="version 2 of other is newer than this code"):
            await db.migrate(OTHER, NOW)
        assert await db.schema_version(OTHER) == 2
    finally:
        await db.close()


def test_a_schemas_versions_count_up_from_one_without_gaps() -> None:
    with pytest.raises(ValueError, match=r"1\.\.n in order"):
        Schema("gappy", (Migration(2, "two", ()),), lock_key=1)
