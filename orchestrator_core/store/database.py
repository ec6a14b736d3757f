"""The orchestrator's database: the shared foundation (`gl_common.db`) set up with its own errors.

Where it sits: `store.Store.open` calls `open_database`; the repository modules of the package run
their statements in `Database.transaction()` and use `upsert` where a row may already exist. Engine,
pool, SQLite pragmas and WAL, transaction timeout, error mapping and the bounded close all live in
`gl_common.db`; this module only says which exceptions the orchestrator's callers get:
`errors.StoreUnavailable` / `errors.StoreError` (HTTP 503), while the package's own errors raised
inside a transaction (`StaleFencingToken`, `InvalidState`, ...) come out unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.db import Database, PoolSettings, StoreErrors
from orchestrator_core.errors import OrchestratorError, StoreError, StoreUnavailable

ERRORS = StoreErrors(error=StoreError, unavailable=StoreUnavailable)


def open_database(database_url: str, pool: PoolSettings) -> Database:
    """The engine for the orchestrator's store (no connection opened yet)."""
    return Database.connect(database_url, pool, errors=ERRORS, passthrough=(OrchestratorError,))


def upsert(
    conn: AsyncConnection, table: sa.Table, keys: Sequence[sa.Column[Any]], update: Sequence[str]
) -> Any:
    """`INSERT ... ON CONFLICT (keys) DO UPDATE SET <update> = excluded.<update>` in the dialect's words
    (values are given at execution)."""
    insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(keys), set_={name: statement.excluded[name] for name in update}
    )
