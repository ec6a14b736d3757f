"""Migration 5: the indexes of admission and of run ownership at scale (issues 10 and 11).

Where it sits: one of the frozen migrations of `orchestrator_core.migrations.SCHEMA`, after version 4.

    ix_executions_status_created  (status, created_at, execution_id): admission reads the oldest
                                  queued runs in FIFO order (`ExecutionRepository.oldest_queued`) and
                                  counts the queue exactly (`count_status`) with a range scan of the
                                  `queued` part, however many runs are queued or stored.
    ix_executions_status_owner    (status, owner): takeover groups the running runs by owner
                                  (`running_owners`) and reads those of one owner, from the index.

Released: never edited.
"""

from __future__ import annotations

from gl_common.migrations import CreateIndex, Migration

MIGRATION = Migration(
    5,
    "indexes of admission (oldest queued runs) and of running runs by owner",
    (
        CreateIndex(
            "ix_executions_status_created",
            "executions",
            lambda t: [t.c.status, t.c.created_at, t.c.execution_id],
        ),
        CreateIndex("ix_executions_status_owner", "executions", lambda t: [t.c.status, t.c.owner]),
    ),
)
