"""The records the watchdog's store returns: incidents, alert deliveries, audit entries, approvals, actions.

Frozen pydantic models, built from rows by `watchdog.store` (which parses the JSON documents, a
`Plan` included, on the way out) and read by every service above it and the API, which renders them
as JSON (`model_dump(mode="json")`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from watchdog.migrations import TERMINAL_INCIDENT_STATUSES
from watchdog.plan import Plan


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Incident(_Record):
    """One incident: a stuck execution being handled (see `watchdog.incidents` for transitions)."""

    id: int
    execution_id: str
    dag_id: str | None
    status: str
    source: str
    detection_source: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    diagnosis: dict[str, Any] | None
    plan: Plan | None
    verification: dict[str, Any] | None
    summary: str | None
    alert_links: dict[str, str] | None = None  # the opening alert's runbook_url, summary... (migration 5)
    held_kind: str | None = None  # silence | maintenance | check_failure: its last decision held it (6)
    held_by: list[dict[str, Any]] | None = None  # what holds it, as the API's `suppressed_by` (6)
    page_open: bool = False  # escalated, and its page open: delivered, not yet resolved (7)

    @property
    def is_open(self) -> bool:
        """True until the incident is resolved, escalated or closed."""
        return self.status not in TERMINAL_INCIDENT_STATUSES

    @property
    def is_held(self) -> bool:
        """True while a silence, a maintenance window or a failed silence check holds the incident:
        it is open (diagnosed, not planned) and its last decision was `suppressed`."""
        return self.status == "open" and self.held_kind is not None


class AlertDelivery(_Record):
    """One alert episode (fingerprint + starts_at) as received from Alertmanager."""

    id: int
    fingerprint: str
    starts_at: datetime
    alertname: str
    execution_id: str | None
    status: str
    received_at: datetime
    last_received_at: datetime
    resolved_at: datetime | None
    repeats: int
    incident_id: int | None
    labels_digest: str | None = None  # what the episode is about (execution and DAG), hashed


class AuditEntry(_Record):
    """One audit log line: what happened (kind), before or after, who did it, and the data."""

    id: int
    incident_id: int | None
    at: datetime
    kind: str
    phase: str
    actor: str
    data: dict[str, Any]


class Approval(_Record):
    """One approval prompt; `token_nonce` makes its signed links single-use."""

    id: str
    incident_id: int
    plan: Plan
    summary: str
    state: str
    token_nonce: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    votes: list[str] | None = None  # who approved so far, when the policy asks for two (migration 4)
    vote_count: int | None = None
    slack_channel: str | None = None  # the bot's message of the prompt (migration 5)
    slack_ts: str | None = None


class Action(_Record):
    """One playbook action; `idempotency_key` is unique, so it is recorded (and run) once."""

    id: int
    incident_id: int
    approval_id: str | None
    playbook: str
    step: str
    idempotency_key: str
    params: dict[str, Any] | None
    state: str
    result: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None
