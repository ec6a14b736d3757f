"""Migration 2: `job_leases`, who runs the job of an incident in a transient state, until when, and how
often it was lost (queried by `watchdog.leases` only).

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, after version 1.
Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import CreateTable, Migration
from gl_common.sqltypes import UTCDateTime


def _job_leases() -> list[sa.schema.SchemaItem]:
    owner = sa.Column("owner", sa.String(200), nullable=True)  # the replica running it; NULL: nobody
    return [
        sa.Column(
            "incident_id", sa.Integer, sa.ForeignKey("incidents.id"), primary_key=True, autoincrement=False
        ),
        sa.Column("job", sa.String(16), nullable=False),
        owner,
        sa.Column("token", sa.Integer, nullable=False),  # grows with every take: a fence for stale holders
        sa.Column("expires_at", UTCDateTime, nullable=True),  # renewed while the job runs
        sa.Column("deadline_at", UTCDateTime, nullable=True),  # renewals never go past it
        sa.Column("attempts", sa.Integer, nullable=False),  # attempts of this job lost or failed so far
        sa.Column("retry_at", UTCDateTime, nullable=True),  # not retried before (backoff)
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("job IN ('diagnosis', 'remediation', 'verification')", name="ck_job_leases_job"),
        sa.Index("ix_job_leases_owner", owner),
    ]


MIGRATION = Migration(
    2,
    "job_leases: the job of an incident in a transient state, its lease and attempts",
    (CreateTable("job_leases", _job_leases),),
)
