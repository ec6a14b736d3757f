"""Migration 2: `limit_overrides`, the live limits every replica applies (`PUT /admin/limits`).

Where it sits: one of the frozen migrations of `orchestrator_core.migrations.SCHEMA`, after version 1.
One row per overridden limit (`max_parallel_nodes`, `max_concurrent_executions`); no row means the
replica's own settings apply. Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import CreateTable, Migration
from gl_common.sqltypes import UTCDateTime


def _limit_overrides() -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("set_by", sa.String(255), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    ]


MIGRATION = Migration(
    2, "live limit overrides shared by replicas", (CreateTable("limit_overrides", _limit_overrides),)
)
