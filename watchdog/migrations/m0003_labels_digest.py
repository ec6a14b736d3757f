"""Migration 3: `alert_deliveries.labels_digest`, a digest of what an alert episode is about (its
`execution_id` and `dag_id`), so that a repeat key (fingerprint + startsAt) arriving with other labels
is recognised as a conflict (`watchdog.intake`). NULL for episodes recorded before.

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, after version 2.
Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import AddColumn, Migration


def _labels_digest() -> sa.Column[str]:
    return sa.Column("labels_digest", sa.String(64), nullable=True)


MIGRATION = Migration(
    3,
    "alert_deliveries.labels_digest: what an episode is about",
    (AddColumn("alert_deliveries", _labels_digest),),
)
