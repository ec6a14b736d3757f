"""Migration 6: the stuck-run signals (issue 16) — node-duration history, running nodes, and the
columns of the other stuck states.

Where it sits: one of the frozen migrations of `orchestrator_core.migrations.SCHEMA`, after version 5.

    node_durations    one row per (dag_id, node_id, agent_id): the `gl_common.quantiles.DurationSketch`
                      of the node's successful durations (JSON), its count, and a `revision` bumped by
                      every merge (`store.signals`), so replicas re-read only what changed
    running_nodes     one row per running node of a running run, written by the run's owner every
                      maintenance tick (`progress.RunSignals`): attempt, start, the last progress
                      report; rows of a run that is no longer running with the same fencing token are
                      ignored by readers and pruned
    executions        `queued_at` (when it last entered the admission queue; backfilled from
                      `created_at` for queued runs), `cancel_requested_at`, `resume_count`,
                      `failure_node` and `failure_streak` (the node the run failed at in each of its
                      last `failure_streak` attempts)

Indexes: `ix_executions_cancel_requested` (a cancel that never completes), `ix_executions_resume_count`
(resume loops), `ix_running_nodes_order` and `ix_running_nodes_dag_order` (the sweep's keyset pages of
running nodes, oldest started first). Queued too long needs none of its own: its filter reads the
queued part of migration 5's `ix_executions_status_created`, which admission reads anyway (an index
of its own on `(status, queued_at)` would also answer admission's count, which must stay on that one).
Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import AddColumn, CreateIndex, CreateTable, Migration, Run
from gl_common.sqltypes import UTCDateTime
from orchestrator_core.migrations.m0001_initial import execution_key


def _node_durations() -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("dag_id", sa.String(128), primary_key=True),
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("agent_id", sa.String(128), primary_key=True),
        sa.Column("sketch", sa.Text, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    ]


def _running_nodes() -> list[sa.schema.SchemaItem]:
    return [
        execution_key(),
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("dag_id", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("fencing_token", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("last_progress_at", UTCDateTime),
        sa.Column("progress_message", sa.String(500)),
        sa.Column("progress_fraction", sa.Float),
        sa.Column("progress_reports", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Index("ix_running_nodes_order", "started_at", "execution_id", "node_id"),
        sa.Index("ix_running_nodes_dag_order", "dag_id", "started_at", "execution_id", "node_id"),
    ]


def _backfill_queued_at(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE executions SET queued_at = created_at WHERE status = 'queued'"))


def _datetime(name: str) -> AddColumn:
    return AddColumn("executions", lambda: sa.Column(name, UTCDateTime))


MIGRATION = Migration(
    6,
    "stuck-run signals: node-duration history, running nodes, queue/cancel/resume/failure columns",
    (
        _datetime("queued_at"),
        _datetime("cancel_requested_at"),
        AddColumn(
            "executions", lambda: sa.Column("resume_count", sa.Integer, nullable=False, server_default="0")
        ),
        AddColumn("executions", lambda: sa.Column("failure_node", sa.String(128))),
        AddColumn(
            "executions", lambda: sa.Column("failure_streak", sa.Integer, nullable=False, server_default="0")
        ),
        Run(_backfill_queued_at),
        CreateIndex("ix_executions_cancel_requested", "executions", lambda t: [t.c.cancel_requested_at]),
        CreateIndex("ix_executions_resume_count", "executions", lambda t: [t.c.resume_count]),
        CreateTable("node_durations", _node_durations),
        CreateTable("running_nodes", _running_nodes),
    ),
)
