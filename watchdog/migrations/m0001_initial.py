"""Migration 1: the watchdog's first schema (incidents, alert deliveries, audit log, approvals, actions,
rate events), written out as it was released.

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, applied by
`gl_common.migrations.upgrade` at start-up; `watchdog.migrations` reads the table objects from the
declarations here. Released: never edited (a later change is a new migration).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from gl_common.migrations import CreateTable, Migration
from gl_common.sqltypes import UTCDateTime

# Incident statuses as released with this schema (the check constraint below).
INCIDENT_STATUSES = (
    "open",
    "diagnosing",
    "awaiting_approval",
    "remediating",
    "verifying",
    "resolved",
    "escalated",
    "closed",
)
# The JSON column type of every watchdog document (JSONB on PostgreSQL).
JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


def _check(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    quoted = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=name)


def _incidents() -> list[sa.schema.SchemaItem]:
    execution_id = sa.Column("execution_id", sa.String(200), nullable=False)
    status = sa.Column("status", sa.String(32), nullable=False)
    open_only = sa.text("status NOT IN ('resolved', 'escalated', 'closed')")
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        execution_id,
        sa.Column("dag_id", sa.String(200), nullable=True),
        status,
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("detection_source", sa.String(16), nullable=False),
        sa.Column("opened_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime, nullable=True),
        sa.Column("diagnosis", JSON_TYPE, nullable=True),
        sa.Column("plan", JSON_TYPE, nullable=True),
        sa.Column("verification", JSON_TYPE, nullable=True),
        sa.Column("summary", sa.Text, nullable=True),
        _check(
            "status",
            INCIDENT_STATUSES,
            "ck_incidents_status",
        ),
        _check("source", ("alert", "sweep", "manual"), "ck_incidents_source"),
        _check("detection_source", ("prometheus", "api"), "ck_incidents_detection_source"),
        sa.Index(
            "uq_incidents_open_execution",
            execution_id,
            unique=True,
            postgresql_where=open_only,
            sqlite_where=open_only,
        ),
        sa.Index("ix_incidents_status", status),
        sa.Index("ix_incidents_execution_id", execution_id),
    ]


def _alert_deliveries() -> list[sa.schema.SchemaItem]:
    return [
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
        sa.UniqueConstraint("fingerprint", "starts_at", name="uq_alert_deliveries_episode"),
        _check("status", ("firing", "resolved"), "ck_alert_deliveries_status"),
    ]


def _audit_log() -> list[sa.schema.SchemaItem]:
    incident_id = sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True)
    entry_id = sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)
    return [
        entry_id,
        incident_id,
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(8), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("data", JSON_TYPE, nullable=False),
        _check("phase", ("before", "after"), "ck_audit_log_phase"),
        sa.Index("ix_audit_log_incident", incident_id, entry_id),
    ]


def _approvals() -> list[sa.schema.SchemaItem]:
    incident_id = sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False)
    state = sa.Column("state", sa.String(16), nullable=False)
    return [
        sa.Column("id", sa.String(64), primary_key=True),
        incident_id,
        sa.Column("plan", JSON_TYPE, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        state,
        sa.Column("token_nonce", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        _check("state", ("pending", "approved", "denied", "expired", "used"), "ck_approvals_state"),
        sa.Index("ix_approvals_state", state),
        sa.Index("ix_approvals_incident", incident_id),
    ]


def _actions() -> list[sa.schema.SchemaItem]:
    incident_id = sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False)
    state = sa.Column("state", sa.String(16), nullable=False)
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        incident_id,
        sa.Column("approval_id", sa.String(64), sa.ForeignKey("approvals.id"), nullable=True),
        sa.Column("playbook", sa.String(64), nullable=False),
        sa.Column("step", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("params", JSON_TYPE, nullable=True),
        state,
        sa.Column("result", JSON_TYPE, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_actions_idempotency_key"),
        _check("state", ("started", "succeeded", "failed", "interrupted"), "ck_actions_state"),
        sa.Index("ix_actions_incident", incident_id),
        sa.Index("ix_actions_state", state),
    ]


def _rate_events() -> list[sa.schema.SchemaItem]:
    kind = sa.Column("kind", sa.String(64), nullable=False)
    key = sa.Column("key", sa.String(255), nullable=False)
    at = sa.Column("at", UTCDateTime, nullable=False)
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        kind,
        key,
        at,
        sa.Index("ix_rate_events_kind_key_at", kind, key, at),
    ]


MIGRATION = Migration(
    1,
    "incidents, alert_deliveries, audit_log, approvals, actions, rate_events",
    (
        CreateTable("incidents", _incidents),
        CreateTable("alert_deliveries", _alert_deliveries),
        CreateTable("audit_log", _audit_log),
        CreateTable("approvals", _approvals),
        CreateTable("actions", _actions),
        CreateTable("rate_events", _rate_events),
    ),
)
