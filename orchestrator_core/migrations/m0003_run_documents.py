"""Migration 3: `run_documents`, the node traces and provenance chain of a run without checkpoints.

Where it sits: applied by `orchestrator_core.migrations.upgrade` at start-up, after version 2. A run
with `checkpoint_enabled=false` writes nothing per node while it runs; its final transaction stores
every node's trace and the whole provenance chain as one JSON document (one row) instead of one row per
node in `node_traces` and `provenance` (see `store.Store.finish_execution`). Runs with checkpoints keep
their rows. Spelled out as it was at version 3 (a migration never imports the current schema).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator_core.migrations.types import UTCDateTime


def upgrade(conn: Connection) -> None:
    metadata = sa.MetaData()
    sa.Table("executions", metadata, sa.Column("execution_id", sa.String(64), primary_key=True))
    sa.Table(
        "run_documents",
        metadata,
        sa.Column(
            "execution_id",
            sa.String(64),
            sa.ForeignKey("executions.execution_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node_traces", sa.Text, nullable=False),
        sa.Column("provenance", sa.Text, nullable=False),
        sa.Column("written_at", UTCDateTime, nullable=False),
    )
    metadata.tables["run_documents"].create(conn)
