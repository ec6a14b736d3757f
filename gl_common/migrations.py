"""One migration system for both services: ordered, frozen migrations and one bookkeeping table.

Where it sits: `gl_common.db.Database.migrate(schema, now)` runs `upgrade` at start-up, inside one
transaction, before a service's store serves anything. A service describes its schema once, as a
`Schema` of `Migration`s (`orchestrator_core.migrations.SCHEMA`); its store's table objects are
`schema.metadata()`, i.e. what the migrations declare, so every table is written exactly once, in the
migration that creates it.

The convention:

- A `Migration(version, description, operations)` lives in a module of its own (`m0001_initial.py`,
  ...) and never changes once released: a later change to the schema is a new migration (a test of
  each service pins every released migration's DDL). Versions count up from 1 without gaps.
- Operations: `CreateTable(name, items)` declares a table (`items()` returns fresh columns,
  constraints and indexes) and creates it; `AddColumn(table, column)` adds a nullable (or defaulted)
  column to a table declared before; `CreateIndex(name, table, items)` and `DropIndex(name,
  table)` add and remove an index of a table declared before; `Run(function)` runs anything else
  on the connection (data changes, ALTERs) and declares nothing. An operation that changes a table
  (e.g. add a column) must both declare the change and apply it, so that `metadata()` stays what the
  database holds.
- Bookkeeping: one table, `gl_schema_migrations (component, version, description, applied_at)`,
  shared by every service that uses the same database; `component` keeps their versions apart.
- Serialised: on PostgreSQL the transaction first takes `pg_advisory_xact_lock` on the runner's key
  and then on the schema's own key (the one its earlier runner used, so that old and new replicas of a
  service starting together also serialise); on SQLite its first statement is a write, which takes the
  database's write lock. Exactly one process applies each migration; the others then see it applied.
- DDL is transactional on both databases: a failed migration leaves the schema at the version before.
- Adoption: before this runner each service kept its own table (the orchestrator `schema_version
  (version, name, applied_at)`, the watchdog `schema_migrations (version, description, applied_at)`).
  When a schema names its `LegacyTable` and the bookkeeping table holds nothing for its component yet,
  the legacy rows are copied over in the same transaction. The legacy table is left in place and is
  never written again (an earlier release still starts against the database; drop it by hand once
  none will).
- A database newer than the code (a version the schema does not know) is refused: `MigrationError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gl_common.sqltypes import UTCDateTime

BOOKKEEPING_TABLE = "gl_schema_migrations"
# An arbitrary constant: the PostgreSQL advisory lock key of the runner (bookkeeping table included).
RUNNER_LOCK_KEY = 0x676C5F6D6967  # "gl_mig"

_bookkeeping_metadata = sa.MetaData()
bookkeeping = sa.Table(
    BOOKKEEPING_TABLE,
    _bookkeeping_metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)


class MigrationError(Exception):
    """The database cannot be brought to this code's schema (e.g. it is newer than the code)."""


class Operation(Protocol):
    """One step of a migration: `declare` it on the metadata, `apply` it to the database."""

    def declare(self, metadata: sa.MetaData) -> None: ...

    def apply(self, conn: Connection, metadata: sa.MetaData) -> None:
        """Called after `declare`, with the metadata as the database will be once this step is done."""


@dataclass(frozen=True)
class CreateTable:
    """A new table; `items()` returns fresh `Column`s, constraints and indexes (one set per call)."""

    name: str
    items: Callable[[], Sequence[sa.schema.SchemaItem]]

    def declare(self, metadata: sa.MetaData) -> None:
        sa.Table(self.name, metadata, *self.items())

    def apply(self, conn: Connection, metadata: sa.MetaData) -> None:
        metadata.tables[self.name].create(conn)


@dataclass(frozen=True)
class CreateIndex:
    """A new index on a table declared by an earlier operation; `items(table)` returns its columns
    and expressions (one fresh set per call)."""

    name: str
    table: str
    items: Callable[[sa.Table], Sequence[Any]]

    def declare(self, metadata: sa.MetaData) -> None:
        sa.Index(self.name, *self.items(metadata.tables[self.table]))

    def apply(self, conn: Connection, metadata: sa.MetaData) -> None:
        index = next(i for i in metadata.tables[self.table].indexes if i.name == self.name)
        index.create(conn)


@dataclass(frozen=True)
class DropIndex:
    """Drop an index that an earlier operation declared."""

    name: str
    table: str

    def declare(self, metadata: sa.MetaData) -> None:
        table = metadata.tables[self.table]
        table.indexes.discard(next(i for i in table.indexes if i.name == self.name))

    def apply(self, conn: Connection, metadata: sa.MetaData) -> None:
        conn.execute(sa.text(f"DROP INDEX {conn.dialect.identifier_preparer.quote(self.name)}"))


@dataclass(frozen=True)
class AddColumn:
    """A new column of a table declared before; `column()` returns it (a fresh one per call). It must be
    nullable or have a server default, as rows may exist."""

    table: str
    column: Callable[[], sa.Column[Any]]

    def declare(self, metadata: sa.MetaData) -> None:
        metadata.tables[self.table].append_column(self.column())

    def apply(self, conn: Connection, metadata: sa.MetaData) -> None:
        column = metadata.tables[self.table].c[self.column().name]
        spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
        table = conn.dialect.identifier_preparer.quote(self.table)
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {spec}"))


@dataclass(frozen=True)
class Run:
    """Anything else, on the migration's connection (it declares nothing)."""

    function: Callable[[Connection], None]

    def declare(self, metadata: sa.MetaData) -> None:
        return None

    def apply(self, conn: Connection, metadata: sa.MetaData) -> None:
        self.function(conn)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    operations: tuple[Operation, ...]


@dataclass(frozen=True)
class LegacyTable:
    """Where an earlier runner of this schema recorded its versions (adopted once, see the docstring)."""

    name: str
    description_column: str  # the column holding each version's description


@dataclass(frozen=True)
class Schema:
    """A service's schema: its migrations in order, and how its database was kept before this runner."""

    component: str
    migrations: tuple[Migration, ...]
    lock_key: int  # the PostgreSQL advisory lock key of this schema (its earlier runner's, if it had one)
    legacy: LegacyTable | None = None

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.component}: migration versions must be 1..n in order, not {versions}")

    @property
    def head(self) -> int:
        """The schema version this code expects."""
        return self.migrations[-1].version if self.migrations else 0

    def metadata(self, version: int | None = None) -> sa.MetaData:
        """The tables as the migrations up to `version` (default: all) declare them."""
        metadata = sa.MetaData()
        for migration in self.migrations:
            if version is not None and migration.version > version:
                break
            for operation in migration.operations:
                operation.declare(metadata)
        return metadata


def current_version(conn: Connection, schema: Schema) -> int:
    """The applied schema version (0 for a database without this schema)."""
    return max(_applied(conn, schema), default=0)


def upgrade(conn: Connection, schema: Schema, now: datetime, target: int | None = None) -> list[int]:
    """Apply the pending migrations up to `target` (default: all) in order inside the caller's
    transaction; return their versions. `MigrationError` if the database is newer than the code."""
    if conn.dialect.name == "postgresql":
        for key in (RUNNER_LOCK_KEY, schema.lock_key):
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
    # IF NOT EXISTS in the statement itself: SQLite may run it outside the transaction (the driver
    # begins one at the first write), where a check-then-create would race another process.
    conn.execute(sa.schema.CreateTable(bookkeeping, if_not_exists=True))
    if conn.dialect.name == "sqlite":
        # A write as the first statement of the transaction takes SQLite's write lock before anything
        # is read: two processes cannot both decide to apply a migration.
        conn.execute(bookkeeping.delete().where(bookkeeping.c.version < 0))
    _adopt_legacy(conn, schema)
    applied = _applied(conn, schema)
    unknown = applied - {m.version for m in schema.migrations}
    if unknown:
        raise MigrationError(
            f"database schema version {max(unknown)} of {schema.component} is newer than this code "
            f"({schema.head})"
        )
    metadata = sa.MetaData()
    done = []
    for migration in schema.migrations:
        if target is not None and migration.version > target:
            break
        for operation in migration.operations:
            operation.declare(metadata)
        if migration.version in applied:
            continue
        for operation in migration.operations:
            operation.apply(conn, metadata)
        conn.execute(
            bookkeeping.insert().values(
                component=schema.component,
                version=migration.version,
                description=migration.description,
                applied_at=now,
            )
        )
        done.append(migration.version)
    return done


def _applied(conn: Connection, schema: Schema) -> set[int]:
    inspector = sa.inspect(conn)
    if inspector.has_table(BOOKKEEPING_TABLE):
        query = sa.select(bookkeeping.c.version).where(bookkeeping.c.component == schema.component)
        versions = {int(row[0]) for row in conn.execute(query).all()}
        if versions:
            return versions
    if schema.legacy is not None and inspector.has_table(schema.legacy.name):
        legacy = sa.table(schema.legacy.name, sa.column("version", sa.Integer))
        return {int(row[0]) for row in conn.execute(sa.select(legacy.c.version)).all()}
    return set()


def _adopt_legacy(conn: Connection, schema: Schema) -> None:
    """Copy an earlier runner's version rows into the bookkeeping table (once; see the docstring)."""
    if schema.legacy is None or not sa.inspect(conn).has_table(schema.legacy.name):
        return
    ours = sa.select(sa.func.count()).where(bookkeeping.c.component == schema.component)
    if conn.execute(ours).scalar():
        return
    legacy = sa.table(
        schema.legacy.name,
        sa.column("version", sa.Integer),
        sa.column(schema.legacy.description_column, sa.String),
        sa.column("applied_at", UTCDateTime),
    )
    rows = conn.execute(sa.select(*legacy.c)).all()
    if rows:
        conn.execute(
            bookkeeping.insert(),
            [
                {
                    "component": schema.component,
                    "version": int(row[0]),
                    "description": str(row[1])[:200],
                    "applied_at": row[2],
                }
                for row in rows
            ],
        )
