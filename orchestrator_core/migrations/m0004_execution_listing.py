"""Migration 4: the indexes of the execution listing (keyset pages, filters, exact counts).

Where it sits: one of the frozen migrations of `orchestrator_core.migrations.SCHEMA`, after version 3.
`store.listing.ExecutionListing` orders runs by their order key `coalesce(started_at, created_at)`
then `execution_id`, and filters by status, DAG and owner; each index below answers one of those
queries in that order, so a page is a range scan however many runs the table holds:

    ix_executions_order         no filter, started before/after
    ix_executions_status_order  status (the sweep's `status=running`, over-timeout candidates)
    ix_executions_dag_order     dag_id
    ix_executions_owner_status  owner (a replica's runs)

The single-column indexes on `status` and `dag_id` of migration 1 lead the new ones and are dropped
(fewer indexes to maintain on every insert). Released: never edited.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gl_common.migrations import CreateIndex, DropIndex, Migration


def _order_key(table: sa.Table) -> Any:
    return sa.func.coalesce(table.c.started_at, table.c.created_at)


MIGRATION = Migration(
    4,
    "indexes of the execution listing",
    (
        CreateIndex("ix_executions_order", "executions", lambda t: [_order_key(t), t.c.execution_id]),
        CreateIndex(
            "ix_executions_status_order",
            "executions",
            lambda t: [t.c.status, _order_key(t), t.c.execution_id],
        ),
        CreateIndex(
            "ix_executions_dag_order", "executions", lambda t: [t.c.dag_id, _order_key(t), t.c.execution_id]
        ),
        CreateIndex("ix_executions_owner_status", "executions", lambda t: [t.c.owner, t.c.status]),
        DropIndex("ix_executions_status", "executions"),
        DropIndex("ix_executions_dag_id", "executions"),
    ),
)
