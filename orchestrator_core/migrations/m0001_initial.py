"""Migration 1: the initial schema (DAG versions, executions, node traces, checkpoints, provenance).

Where it sits: applied by `orchestrator_core.migrations.upgrade` at start-up. The tables are spelled out
here as they were at version 1 (a migration never imports the current schema, which will move on).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator_core.migrations.types import UTCDateTime


def upgrade(conn: Connection) -> None:
    metadata = sa.MetaData()
    sa.Table(
        "dags",
        metadata,
        sa.Column("dag_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    sa.Table(
        "executions",
        metadata,
        sa.Column("execution_id", sa.String(64), primary_key=True),
        sa.Column("dag_id", sa.String(128), nullable=False, index=True),
        sa.Column("dag_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("input_data", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("fencing_token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("completed_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("timeout_seconds", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("provenance_head", sa.String(64)),
        sa.Column("provenance_length", sa.Integer, nullable=False, server_default="0"),
    )
    sa.Table(
        "node_traces",
        metadata,
        sa.Column(
            "execution_id",
            sa.String(64),
            sa.ForeignKey("executions.execution_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("completed_at", UTCDateTime),
        sa.Column("duration_ms", sa.Float),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("input_hash", sa.String(64)),
        sa.Column("timeout_seconds", sa.Float),
    )
    sa.Table(
        "checkpoints",
        metadata,
        sa.Column(
            "execution_id",
            sa.String(64),
            sa.ForeignKey("executions.execution_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("output_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    sa.Table(
        "provenance",
        metadata,
        sa.Column(
            "execution_id",
            sa.String(64),
            sa.ForeignKey("executions.execution_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("output_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    metadata.create_all(conn)
