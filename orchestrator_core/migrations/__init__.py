"""The orchestrator's schema: its frozen migrations, in order (`gl_common.migrations` runs them).

Where it sits: `store.Store.open` applies `SCHEMA` at start-up through `gl_common.db.Database.migrate`;
`store.schema` takes the current table objects from `SCHEMA.metadata()`. Each `m000N_*.py` module holds
one released migration and is never edited; a schema change is a new module appended to `SCHEMA`.

Databases created before the shared runner kept their versions in `schema_version (version, name,
applied_at)` (and took SQLite's write lock through a `_migration_lock` table); the runner adopts those
rows on its first start (`LegacyTable`) and leaves both tables as they are.
"""

from __future__ import annotations

from gl_common.migrations import LegacyTable, Schema
from orchestrator_core.migrations import (
    m0001_initial,
    m0002_limit_overrides,
    m0003_run_documents,
    m0004_execution_listing,
    m0005_admission_queue,
    m0006_stuck_run_signals,
)

SCHEMA = Schema(
    component="orchestrator",
    migrations=(
        m0001_initial.MIGRATION,
        m0002_limit_overrides.MIGRATION,
        m0003_run_documents.MIGRATION,
        m0004_execution_listing.MIGRATION,
        m0005_admission_queue.MIGRATION,
        m0006_stuck_run_signals.MIGRATION,
    ),
    lock_key=0x676C6F7263,  # "glorc": the key the orchestrator's own runner used before
    legacy=LegacyTable("schema_version", description_column="name"),
)
