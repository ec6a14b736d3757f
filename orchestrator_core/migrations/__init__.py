"""Versioned schema migrations of the orchestrator store, applied at start-up by `store.Store.open`.

Why a small ordered runner rather than Alembic: the store is SQLAlchemy Core with one code path for
two async drivers; Alembic's programmatic upgrade needs an `env.py`, a script directory shipped as
package data and a sync bridge (`run_sync`) anyway, and its autogenerate is not wanted (migrations are
written by hand). This runner is the part of Alembic we use — an ordered list of `upgrade(conn)`
functions and a version table — in ~80 lines, and it adds what Alembic does not do by itself:
replicas starting together serialise on a lock (PostgreSQL `pg_advisory_xact_lock`; SQLite's write
lock, taken first thing in the transaction), so exactly one applies each migration.

Rules: migrations are append-only (`MIGRATIONS` never changes order or content once released); each
runs inside the same transaction as its `schema_version` row (DDL is transactional on both
PostgreSQL and SQLite), so a failed migration leaves the schema at the previous version.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator_core.migrations import m0001_initial, m0002_limit_overrides, m0003_run_documents
from orchestrator_core.migrations.types import UTCDateTime

Migration = tuple[int, str, Callable[[Connection], None]]

MIGRATIONS: list[Migration] = [
    (1, "initial schema", m0001_initial.upgrade),
    (2, "live limit overrides shared by replicas", m0002_limit_overrides.upgrade),
    (3, "node traces and chain of a run without checkpoints as one document", m0003_run_documents.upgrade),
]

# An arbitrary constant: the key of the PostgreSQL advisory lock that serialises migrations.
_PG_LOCK_KEY = 0x676C6F7263  # "glorc"

_version_metadata = sa.MetaData()
schema_version = sa.Table(
    "schema_version",
    _version_metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)


def head() -> int:
    """The schema version this code expects."""
    return MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    """The applied schema version (0 for an empty database)."""
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(value or 0)


def upgrade(conn: Connection) -> list[int]:
    """Apply the pending migrations in order inside the caller's transaction; return their versions.

    Raises `RuntimeError` if the database is newer than this code (downgrades are not supported).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    else:
        # Take SQLite's write lock before reading the version, so two processes cannot both migrate.
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS _migration_lock (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("DELETE FROM _migration_lock"))
    _version_metadata.create_all(conn, checkfirst=True)
    applied = current_version(conn)
    if applied > head():
        raise RuntimeError(f"database schema version {applied} is newer than this code ({head()})")
    done = []
    for version, name, function in MIGRATIONS:
        if version <= applied:
            continue
        function(conn)
        conn.execute(schema_version.insert().values(version=version, name=name, applied_at=datetime.now(UTC)))
        done.append(version)
    return done
