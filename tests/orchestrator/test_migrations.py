"""The orchestrator's schema upgrades: a database at every earlier version, whether its versions were
kept by the shared runner or by the orchestrator's own earlier runner (`schema_version`), upgrades
to the current schema with its data, on SQLite and PostgreSQL; released migrations never change."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import create_async_engine

from gl_common.migrations import AddColumn, CreateIndex, CreateTable, DropIndex, Run
from orchestrator_core.dag import DagDefinition
from orchestrator_core.migrations import SCHEMA
from orchestrator_core.store import Store
from orchestrator_core.store.schema import metadata

EARLIER = range(1, SCHEMA.head)
OLD_APPLIED_AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# SHA-256 of each released migration's DDL (CREATE TABLE, CREATE INDEX, DROP INDEX statements) per dialect.
# A migration is frozen once released: a schema change is a new migration, never an edit of these.
RELEASED_DDL = {
    1: "8e289bc80d4f6b17f3442e1cee4b175d7e5e00fdf7ac3bcbce4df27e35374807",
    2: "f18d42941ec5b428d7f1eb19f52c37eb87670eab3f0ffb4fe1d808e427d8e2bd",
    3: "c24759bd6b66dcfadc463e007f364c49613dec4d7856568c2264345ea0af50d8",
    4: "e97b17cdb304b58c01217af40779e0e50525211b6dd22f488ca18ffdf23e6882",
    5: "eab48bdbdd31ba040e6ef948efe657659f1f570d797ec379a0dc8c5b62066176",
    6: "a93fbad182b76df945fc961bfe46462b661d1cb1490f6f0850ad1eeda19a0216",
}


def _dag() -> DagDefinition:
    return DagDefinition.from_document({"dag_id": "kept", "nodes": {"a": {"agent_id": "builtin.echo"}}})


async def _columns(store: Store) -> dict[str, set[str]]:
    async with store.engine.connect() as conn:

        def read(sync_conn: sa.Connection) -> dict[str, set[str]]:
            inspector = sa.inspect(sync_conn)
            return {t: {c["name"] for c in inspector.get_columns(t)} for t in metadata.tables}

        return await conn.run_sync(read)


async def _create_as_the_earlier_runner_did(database_url: str, version: int) -> None:
    """The tables at `version`, with the versions in `schema_version` and SQLite's `_migration_lock`
    table: what the orchestrator's own runner left behind before the shared one."""
    engine = create_async_engine(database_url)
    legacy = sa.MetaData()
    table = sa.Table(
        "schema_version",
        legacy,
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table("_migration_lock", legacy, sa.Column("id", sa.Integer, primary_key=True))
    applied_at = (
        OLD_APPLIED_AT if engine.dialect.name == "postgresql" else OLD_APPLIED_AT.replace(tzinfo=None)
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(SCHEMA.metadata(version).create_all)
            await conn.run_sync(legacy.create_all)
            await conn.execute(
                table.insert(),
                [
                    {"version": m.version, "name": m.description, "applied_at": applied_at}
                    for m in SCHEMA.migrations[:version]
                ],
            )
    finally:
        await engine.dispose()


@pytest.mark.parametrize("version", EARLIER)
async def test_a_database_at_an_earlier_version_upgrades_with_its_data(
    database_url: str, version: int
) -> None:
    old = await Store.open(database_url, schema_version=version)
    try:
        assert await old.schema_version() == version
        await old.dags.save(_dag())
    finally:
        await old.close()
    store = await Store.open(database_url)
    try:
        assert await store.schema_version() == SCHEMA.head
        assert [d.dag_id for d in await store.dags.latest()] == ["kept"]
        assert await _columns(store) == {n: {c.name for c in t.columns} for n, t in metadata.tables.items()}
        await store.limits.set({"max_parallel_nodes": 7}, set_by="r")
        await store.limits.set({"max_parallel_nodes": 8}, set_by="s")  # an upsert, not a 2nd row
        overrides = await store.limits.get()
        assert [(o.name, o.value, o.set_by) for o in overrides.values()] == [("max_parallel_nodes", 8, "s")]
    finally:
        await store.close()


@pytest.mark.parametrize("version", [*EARLIER, SCHEMA.head])
async def test_a_database_of_the_earlier_runner_is_adopted_and_upgraded(
    database_url: str, version: int
) -> None:
    await _create_as_the_earlier_runner_did(database_url, version)
    store = await Store.open(database_url)
    try:
        assert await store.schema_version() == SCHEMA.head
        await store.dags.save(_dag())
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT version, applied_at FROM gl_schema_migrations"))).all()
            legacy = (await conn.execute(sa.text("SELECT version FROM schema_version"))).all()
        kept = sorted(v for v, _ in rows if v <= version)
        assert sorted(v for v, _ in rows) == [m.version for m in SCHEMA.migrations]
        assert kept == list(range(1, version + 1))  # adopted, not applied again
        assert sorted(v for (v,) in legacy) == kept  # the old table is left as it was
        assert await _columns(store) == {n: {c.name for c in t.columns} for n, t in metadata.tables.items()}
    finally:
        await store.close()


def _ddl(version: int, dialect: sa.Dialect) -> str:
    """The DDL that migration `version` runs, as text."""
    migration = SCHEMA.migrations[version - 1]
    scratch = SCHEMA.metadata(version)
    statements = []
    for operation in migration.operations:
        if isinstance(operation, CreateIndex):
            index = next(i for i in scratch.tables[operation.table].indexes if i.name == operation.name)
            statements.append(str(sa.schema.CreateIndex(index).compile(dialect=dialect)))
            continue
        if isinstance(operation, DropIndex):
            statements.append(f"DROP INDEX {operation.name} ON {operation.table}")
            continue
        if isinstance(operation, AddColumn):
            column = scratch.tables[operation.table].c[operation.column().name]
            spec = sa.schema.CreateColumn(column).compile(dialect=dialect)
            statements.append(f"ALTER TABLE {operation.table} ADD COLUMN {spec}")
            continue
        if isinstance(operation, Run):
            statements.append(f"RUN {operation.function.__name__}")
            continue
        assert isinstance(operation, CreateTable), "pin the DDL of other operations here too"
        table = scratch.tables[operation.name]
        statements.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)))
        statements += [
            str(sa.schema.CreateIndex(i).compile(dialect=dialect))
            for i in sorted(table.indexes, key=lambda i: str(i.name))
        ]
    return "\n".join(statements)


@pytest.mark.parametrize("version", range(1, SCHEMA.head + 1))
def test_released_migrations_never_change(version: int) -> None:
    ddl = _ddl(version, sqlite.dialect()) + "\n--\n" + _ddl(version, postgresql.dialect())
    assert hashlib.sha256(ddl.encode()).hexdigest() == RELEASED_DDL[version], ddl
