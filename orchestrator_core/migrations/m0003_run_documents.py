"""Migration 3: `run_documents`, the node traces and provenance chain of a run without checkpoints.

Where it sits: one of the frozen migrations of `orchestrator_core.migrations.SCHEMA`, after version 2.
A run with `checkpoint_enabled=false` writes nothing per node while it runs; its final transaction
stores every node's trace and the whole provenance chain as one JSON document (one row) instead of one
row per node in `node_traces` and `provenance` (`store.rundata`). Runs with checkpoints keep their
rows. Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import CreateTable, Migration
from gl_common.sqltypes import UTCDateTime
from orchestrator_core.migrations.m0001_initial import execution_key


def _run_documents() -> list[sa.schema.SchemaItem]:
    return [
        execution_key(),
        sa.Column("node_traces", sa.Text, nullable=False),
        sa.Column("provenance", sa.Text, nullable=False),
        sa.Column("written_at", UTCDateTime, nullable=False),
    ]


MIGRATION = Migration(
    3,
    "node traces and chain of a run without checkpoints as one document",
    (CreateTable("run_documents", _run_documents),),
)
