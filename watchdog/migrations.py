"""The watchdog's database schema and its versioned migrations, applied on start-up.

Called by `watchdog.store.WatchdogStore.open()` before anything else touches the database; the table objects
defined here are what `watchdog.store` queries. One code path for SQLite (embedded default) and
PostgreSQL (production): SQLAlchemy Core types only, dialect differences confined to `UTCDateTime`
and `JSONType`.

Tables (every watchdog table is defined here, the remediation side builds on them):

    incidents          one row per incident; at most one *open* incident per execution_id, enforced
                       by the partial unique index `uq_incidents_open_execution` (not check-then-insert)
    alert_deliveries   one row per alert episode (fingerprint + starts_at unique): the durable dedup key
    audit_log          every state change, step, prompt, decision and action, before and after
    approvals          approval prompts: plan, summary, state, single-use token nonce, expiry
    actions            playbook actions; the idempotency key is unique, so an action runs at most once
    rate_events        timestamps of rate-limited events (agent restarts, ...) and breaker trips
    job_leases         who runs the job of an incident in a transient state, until when, and how
                       often it was lost (migration 2; queried by `watchdog.leases` only)
    schema_migrations  applied migration versions

Migrations run in one transaction; on PostgreSQL an advisory lock serialises replicas starting at
once, on SQLite the store's `BEGIN IMMEDIATE` does. A later schema change is a new `Migration` with
explicit operations (append to `MIGRATIONS`), and the table objects below are updated to match; the
first migration's table list must then be frozen in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Dialect

# -- column types -----------------------------------------------------------------------------------


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects.

    PostgreSQL stores `timestamptz`; SQLite stores naive UTC text, so values are normalised to UTC on
    the way in and given `tzinfo=UTC` on the way out. Naive datetimes are refused: they are a bug.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType: Final = sa.JSON().with_variant(JSONB(), "postgresql")

# -- statuses ---------------------------------------------------------------------------------------

INCIDENT_STATUSES: Final = (
    "open",
    "diagnosing",
    "awaiting_approval",
    "remediating",
    "verifying",
    "resolved",
    "escalated",
    "closed",
)
TERMINAL_INCIDENT_STATUSES: Final = ("resolved", "escalated", "closed")
INCIDENT_SOURCES: Final = ("alert", "sweep", "manual")
DETECTION_SOURCES: Final = ("prometheus", "api")
APPROVAL_STATES: Final = ("pending", "approved", "denied", "expired", "used")
ACTION_STATES: Final = ("started", "succeeded", "failed", "interrupted")
AUDIT_PHASES: Final = ("before", "after")
DELIVERY_STATUSES: Final = ("firing", "resolved")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


# -- tables -----------------------------------------------------------------------------------------

metadata: Final = sa.MetaData()

incidents: Final = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("execution_id", sa.String(200), nullable=False),
    sa.Column("dag_id", sa.String(200), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("detection_source", sa.String(16), nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime, nullable=True),
    sa.Column("diagnosis", JSONType, nullable=True),
    sa.Column("plan", JSONType, nullable=True),
    sa.Column("verification", JSONType, nullable=True),
    sa.Column("summary", sa.Text, nullable=True),
    sa.CheckConstraint(_in("status", INCIDENT_STATUSES), name="ck_incidents_status"),
    sa.CheckConstraint(_in("source", INCIDENT_SOURCES), name="ck_incidents_source"),
    sa.CheckConstraint(_in("detection_source", DETECTION_SOURCES), name="ck_incidents_detection_source"),
)
_OPEN_WHERE: Final = sa.text("status NOT IN ('resolved', 'escalated', 'closed')")
sa.Index(
    "uq_incidents_open_execution",
    incidents.c.execution_id,
    unique=True,
    postgresql_where=_OPEN_WHERE,
    sqlite_where=_OPEN_WHERE,
)
sa.Index("ix_incidents_status", incidents.c.status)
sa.Index("ix_incidents_execution_id", incidents.c.execution_id)

alert_deliveries: Final = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("alertname", sa.String(200), nullable=False),
    sa.Column("execution_id", sa.String(200), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("last_received_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    sa.Column("repeats", sa.Integer, nullable=False, server_default="0"),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True),
    sa.Column("labels_digest", sa.String(64), nullable=True),  # migration 3
    sa.UniqueConstraint("fingerprint", "starts_at", name="uq_alert_deliveries_episode"),
    sa.CheckConstraint(_in("status", DELIVERY_STATUSES), name="ck_alert_deliveries_status"),
)

audit_log: Final = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("phase", sa.String(8), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("data", JSONType, nullable=False),
    sa.CheckConstraint(_in("phase", AUDIT_PHASES), name="ck_audit_log_phase"),
)
sa.Index("ix_audit_log_incident", audit_log.c.incident_id, audit_log.c.id)

approvals: Final = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("plan", JSONType, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("token_nonce", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=True),
    sa.Column("decided_by", sa.String(200), nullable=True),
    sa.CheckConstraint(_in("state", APPROVAL_STATES), name="ck_approvals_state"),
)
sa.Index("ix_approvals_state", approvals.c.state)
sa.Index("ix_approvals_incident", approvals.c.incident_id)

actions: Final = sa.Table(
    "actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("approval_id", sa.String(64), sa.ForeignKey("approvals.id"), nullable=True),
    sa.Column("playbook", sa.String(64), nullable=False),
    sa.Column("step", sa.String(128), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("params", JSONType, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("result", JSONType, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("idempotency_key", name="uq_actions_idempotency_key"),
    sa.CheckConstraint(_in("state", ACTION_STATES), name="ck_actions_state"),
)
sa.Index("ix_actions_incident", actions.c.incident_id)
sa.Index("ix_actions_state", actions.c.state)

rate_events: Final = sa.Table(
    "rate_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)
sa.Index("ix_rate_events_kind_key_at", rate_events.c.kind, rate_events.c.key, rate_events.c.at)

# -- job leases (migration 2; queries in watchdog/leases.py, owned with the reconciler) ---------------

JOB_KINDS: Final = ("diagnosis", "remediation", "verification")

job_leases: Final = sa.Table(
    "job_leases",
    metadata,
    sa.Column(
        "incident_id", sa.Integer, sa.ForeignKey("incidents.id"), primary_key=True, autoincrement=False
    ),
    sa.Column("job", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(200), nullable=True),  # the replica running it; NULL: nobody
    sa.Column("token", sa.Integer, nullable=False),  # grows with every take: a fence for stale holders
    sa.Column("expires_at", UTCDateTime, nullable=True),  # renewed while the job runs
    sa.Column("deadline_at", UTCDateTime, nullable=True),  # renewals never go past it
    sa.Column("attempts", sa.Integer, nullable=False),  # attempts of this job lost or failed so far
    sa.Column("retry_at", UTCDateTime, nullable=True),  # not retried before (backoff)
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(_in("job", JOB_KINDS), name="ck_job_leases_job"),
)
sa.Index("ix_job_leases_owner", job_leases.c.owner)

# -- end of job leases ---------------------------------------------------------------------------------

schema_migrations: Final = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

# -- migrations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema version: `apply` runs inside the migration transaction on a sync connection."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    metadata.create_all(
        conn,
        tables=[incidents, alert_deliveries, audit_log, approvals, actions, rate_events],
        checkfirst=False,
    )


def _v2_job_leases(conn: Connection) -> None:
    # Frozen: the table as released with version 2 (a later change is a later migration).
    table = sa.Table(
        "job_leases",
        sa.MetaData(),
        sa.Column(
            "incident_id", sa.Integer, sa.ForeignKey(incidents.c.id), primary_key=True, autoincrement=False
        ),
        sa.Column("job", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("token", sa.Integer, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("deadline_at", UTCDateTime, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("retry_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("job IN ('diagnosis', 'remediation', 'verification')", name="ck_job_leases_job"),
    )
    sa.Index("ix_job_leases_owner", table.c.owner)
    table.create(conn, checkfirst=False)


def _v3_labels_digest(conn: Connection) -> None:
    # v1 builds from the live table, which has the column already (to be frozen with issue 12)
    if "labels_digest" in {c["name"] for c in sa.inspect(conn).get_columns("alert_deliveries")}:
        return
    conn.execute(sa.text("ALTER TABLE alert_deliveries ADD COLUMN labels_digest VARCHAR(64)"))


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "incidents, alert_deliveries, audit_log, approvals, actions, rate_events",
        _v1_initial,
    ),
    Migration(
        2, "job_leases: the job of an incident in a transient state, its lease and attempts", _v2_job_leases
    ),
    Migration(3, "alert_deliveries.labels_digest: what an episode is about", _v3_labels_digest),
)

# Any 64-bit constant: the advisory lock id that serialises concurrent migrations on PostgreSQL.
_PG_MIGRATION_LOCK: Final = 0x67_6C_77_64_6D_69_67


def latest_version() -> int:
    """The schema version this code expects."""
    return MIGRATIONS[-1].version


def migrate(conn: Connection, now: datetime) -> list[int]:
    """Apply every migration newer than the database's version; return the versions applied.

    Runs inside the caller's transaction (`AsyncConnection.run_sync`), so a failed migration leaves
    the schema as it was. Raises RuntimeError when the database is newer than this code.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    schema_migrations.create(conn, checkfirst=True)
    applied: set[int] = {row[0] for row in conn.execute(sa.select(schema_migrations.c.version))}
    newest_known = latest_version()
    if applied and max(applied) > newest_known:
        raise RuntimeError(
            f"database schema version {max(applied)} is newer than this watchdog understands ({newest_known})"
        )
    done: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        migration.apply(conn)
        conn.execute(
            schema_migrations.insert().values(
                version=migration.version, description=migration.description, applied_at=now
            )
        )
        done.append(migration.version)
    return done
