"""Migration 1: the initial schema (DAG versions, executions, node traces, checkpoints, provenance).

Where it sits: one of the frozen migrations of `orchestrator_core.migrations.SCHEMA`, applied by
`gl_common.migrations.upgrade` at start-up; `orchestrator_core.store.schema` reads its tables from the
declarations here. Released: never edited (a later change is a new migration).
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import CreateTable, Migration
from gl_common.sqltypes import UTCDateTime


def execution_key() -> sa.Column[str]:
    """The `execution_id` key column of a table of one execution's data (deleted with the execution)."""
    return sa.Column(
        "execution_id",
        sa.String(64),
        sa.ForeignKey("executions.execution_id", ondelete="CASCADE"),
        primary_key=True,
    )


def _dags() -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("dag_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    ]


def _executions() -> list[sa.schema.SchemaItem]:
    return [
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
    ]


def _node_traces() -> list[sa.schema.SchemaItem]:
    return [
        execution_key(),
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
    ]


def _checkpoints() -> list[sa.schema.SchemaItem]:
    return [
        execution_key(),
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("output_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    ]


def _provenance() -> list[sa.schema.SchemaItem]:
    return [
        execution_key(),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("output_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    ]


MIGRATION = Migration(
    1,
    "initial schema",
    (
        CreateTable("dags", _dags),
        CreateTable("executions", _executions),
        CreateTable("node_traces", _node_traces),
        CreateTable("checkpoints", _checkpoints),
        CreateTable("provenance", _provenance),
    ),
)
