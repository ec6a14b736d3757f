"""Migration 2: `limit_overrides`, the live limits every replica applies (`PUT /admin/limits`).

Where it sits: applied by `orchestrator_core.migrations.upgrade` at start-up, after version 1. One row
per overridden limit (`max_parallel_nodes`, `max_concurrent_executions`); no row means the replica's
own settings apply. Spelled out as it was at version 2 (a migration never imports the current schema).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator_core.migrations.types import UTCDateTime


def upgrade(conn: Connection) -> None:
    metadata = sa.MetaData()
    sa.Table(
        "limit_overrides",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("set_by", sa.String(255), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    metadata.create_all(conn)
