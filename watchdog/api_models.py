"""The watchdog API's models: ids, query strings and bodies it accepts, and the answers it gives.

Where it sits: `watchdog.api` and `watchdog.web` declare each route with these models on a
`gl_common.openapi.RouteTable`, which validates every request with them before the handler runs (a
400 naming the parameter, or a 422 `invalid_payload` naming the body field) and builds the OpenAPI
document served at `GET /api/v1/openapi.json`; handlers shape their answers with the answer models
(built from the store's records field by field, so a record growing a field changes no answer).

Ids (docs/architecture.md "Watchdog store and REST API"): an incident id is an integer 1 to
2,147,483,647 (the `incidents.id` column is a 32-bit INTEGER), written as digits only; an approval
id 1-64 of `A-Z a-z 0-9 _ -` starting with a letter or digit (the store makes `apr_` and 16 such
characters); an `execution_id` 1-64 and a `dag_id` 1-128 of `A-Z a-z 0-9 _ . : -` starting with a
letter or digit (what the orchestrator's API accepts); a likely cause 1-64 of `a-z 0-9 _ . -`. No
control character or NUL passes any of them, nor an actor name or a link token.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from gl_common.ids import DagId, ExecutionId, id_pattern, printable
from watchdog.plan import Plan
from watchdog.records import Action, Approval, AuditEntry, Incident

INCIDENT_ID_MAX = 2**31 - 1
DEFAULT_PAGE = 500
MAX_PAGE = 1000
MAX_CURSOR_LENGTH = 512
MAX_TOKEN_LENGTH = 200
_DIGITS = re.compile(r"[0-9]{1,10}")


def _digits_only(value: Any) -> Any:
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError(f"must be an integer written in digits, 1 to {INCIDENT_ID_MAX}")
    return value


def _true_or_false(value: Any) -> Any:
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError(f"{value[:40]!r} is neither true nor false")
    return value


TrueOrFalse = Annotated[bool, BeforeValidator(_true_or_false)]
IncidentId = Annotated[
    int,
    Field(ge=1, le=INCIDENT_ID_MAX, description=f"incident id: an integer 1 to {INCIDENT_ID_MAX}"),
    BeforeValidator(_digits_only),
]
ApprovalId = Annotated[
    str,
    StringConstraints(pattern=id_pattern(64, rest="A-Za-z0-9_-"), max_length=64),
    Field(description="approval id: 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit"),
]
Cause = Annotated[
    str,
    StringConstraints(pattern=id_pattern(64, first="a-z0-9", rest="a-z0-9_.-"), max_length=64),
    Field(description="a likely cause of the diagnosis, e.g. hung_node: 1-64 of a-z 0-9 _ . -"),
]
Actor = Annotated[
    str,
    printable(100, min_length=1),
    Field(description="who decides (recorded as api:<actor>): 1-100 printable characters"),
]
LinkTokenText = Annotated[
    str,
    StringConstraints(max_length=MAX_TOKEN_LENGTH),
    Field(description="the approval link's token (from the notifier's links)"),
]
IncidentStatus = Literal[
    "open", "diagnosing", "awaiting_approval", "remediating", "verifying", "resolved", "escalated", "closed"
]
ApprovalState = Literal["pending", "approved", "denied", "expired", "used"]
DecisionText = Literal["approve", "deny"]

TokenName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._@-]{0,63}$", max_length=64),
    Field(description="a token's name: 1-64 of a-z 0-9 . _ @ -, starting with a letter or digit"),
]
RoleText = Literal["viewer", "approver", "operator", "admin"]
Reason = Annotated[str, printable(500, min_length=1), Field(description="why (recorded in the audit log)")]

PATH_PARAMS = {"incident_id": IncidentId, "approval_id": ApprovalId, "name": TokenName}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- query strings ----------------------------------------------------------------------------------


class IncidentListQuery(_Request):
    """`GET /incidents`: filters (combined with AND), cursor and page size."""

    status: list[IncidentStatus] | None = Field(
        None, max_length=8, description="any of these statuses (repeat or comma-separate)"
    )
    dag_id: DagId | None = None
    execution_id: ExecutionId | None = None
    cause: Cause | None = Field(None, description="the diagnosis' likely cause, e.g. hung_node")
    opened_after: AwareDatetime | None = Field(None, description="opened at or after (ISO 8601 with offset)")
    opened_before: AwareDatetime | None = Field(None, description="opened before (ISO 8601 with offset)")
    held: TrueOrFalse | None = Field(
        None,
        description="true: only the incidents a silence, a maintenance window or a failed silence check "
        "holds now; false: only the others",
    )
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LENGTH)] | None = Field(
        None, description="next_cursor of the previous page (same filters)"
    )
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="page size")

    def filters(self) -> dict[str, Any]:
        """The filters as JSON values (what a cursor is bound to)."""
        return self.model_dump(mode="json", exclude={"cursor", "limit"}, exclude_none=True)


class ApprovalQuery(_Request):
    """`GET /approvals/{id}`: the link token, when the caller has no bearer token."""

    token: LinkTokenText | None = None


class PageQuery(_Request):
    """`GET /approvals/{id}` (the page): the link's token, which button the link was, a notice."""

    token: LinkTokenText | None = None
    decision: DecisionText | None = Field(None, description="the link followed (approve or deny)")
    notice: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="a message shown above the prompt (set by the page's own redirect)"
    )


# -- bodies -----------------------------------------------------------------------------------------


class OpenIncidentBody(_Request):
    """`POST /incidents`: open (or join) the incident of an execution by hand."""

    execution_id: ExecutionId
    dag_id: DagId | None = None


class EmptyBody(_Request):
    """`POST /incidents/{id}/diagnose`: no body, or `{}`."""


class DecideBody(_Request):
    """`POST /approvals/{id}/approve|deny` (no body: `{}`): the link token when there is no bearer
    token, and who decides (bearer callers)."""

    token: LinkTokenText | None = None
    actor: Actor | None = None


class IncidentDecisionBody(_Request):
    """`POST /incidents/{id}/approve|deny`: the incident's pending approval, decided by the caller's
    identity."""

    reason: Reason | None = None


class TokenCreateBody(_Request):
    """`POST /tokens`: a named token with a role."""

    name: TokenName
    role: RoleText


class ApprovalForm(_Request):
    """The approval page's form (`application/x-www-form-urlencoded`)."""

    token: LinkTokenText
    decision: DecisionText


# -- answers ----------------------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncidentOut(_Answer):
    """An incident (list items); the detail adds what is recorded about it."""

    id: int
    execution_id: str
    dag_id: str | None
    status: IncidentStatus
    source: str = Field(description="alert | sweep | manual")
    detection_source: str = Field(description="prometheus | api")
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    summary: str | None
    likely_cause: str | None
    is_open: bool
    held: bool = Field(
        description="a silence, a maintenance window or a failed silence check holds it: it is neither "
        "prompted nor acted on until they end"
    )
    suppressed_by: list[dict[str, Any]] | None = Field(
        description="what holds the incident (Alertmanager silences and maintenance windows, or the "
        "failed silence check); null when it is not held",
    )

    @classmethod
    def of(cls, incident: Incident) -> IncidentOut:
        return cls.model_validate(_incident_fields(incident))


def _incident_fields(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "execution_id": incident.execution_id,
        "dag_id": incident.dag_id,
        "status": incident.status,
        "source": incident.source,
        "detection_source": incident.detection_source,
        "opened_at": incident.opened_at,
        "updated_at": incident.updated_at,
        "closed_at": incident.closed_at,
        "summary": incident.summary,
        "likely_cause": (incident.diagnosis or {}).get("likely_cause"),
        "is_open": incident.is_open,
        "held": incident.is_held,
        "suppressed_by": incident.held_by if incident.is_held else None,
    }


class ActionOut(_Answer):
    id: int
    incident_id: int
    approval_id: str | None
    playbook: str
    step: str
    idempotency_key: str
    params: dict[str, Any] | None
    state: str = Field(description="started | succeeded | failed | interrupted")
    result: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, action: Action) -> ActionOut:
        return cls.model_validate({name: getattr(action, name) for name in cls.model_fields})


class ApprovalOut(_Answer):
    """An approval prompt as the API shows it (never its token nonce)."""

    id: str
    incident_id: int
    state: ApprovalState
    summary: str
    plan: Plan
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    votes: list[str] = Field(
        default_factory=list, description="who approved so far (a two-person approval's first vote)"
    )

    @classmethod
    def of(cls, approval: Approval) -> ApprovalOut:
        fields = {name: getattr(approval, name) for name in cls.model_fields if name != "votes"}
        return cls.model_validate({**fields, "votes": approval.votes or []})


class AuditOut(_Answer):
    id: int
    incident_id: int | None
    at: datetime
    kind: str
    phase: str = Field(description="before | after")
    actor: str
    data: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls.model_validate({name: getattr(entry, name) for name in cls.model_fields})


class IncidentDetailOut(IncidentOut):
    """`GET /incidents/{id}`: the incident with its diagnosis, plan, verification, actions, approval
    prompts and audit log."""

    diagnosis: dict[str, Any] | None
    plan: Plan | None
    verification: dict[str, Any] | None
    actions: list[ActionOut]
    approvals: list[ApprovalOut]
    audit: list[AuditOut]


class TokenOut(_Answer):
    """A named API token as listed (never the token or its digest)."""

    name: str
    role: RoleText
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(_Answer):
    """`POST /tokens`: the token, shown this once (it is stored hashed)."""

    name: str
    role: RoleText
    token: str = Field(description="glw_...: give it to its owner now; it cannot be shown again")


class TokenList(_Answer):
    items: list[TokenOut]


class IncidentDecision(_Answer):
    """`POST /incidents/{id}/approve|deny`: the approval as it now stands (`pending` with one vote of
    a two-person approval), and who decided."""

    approval: ApprovalOut
    approvals_required: int = Field(description="distinct approvers the policy asks for this plan")
    actor: str = Field(description="how the audit log names the decider, e.g. token:alice")


class IncidentListItem(IncidentOut):
    """One incident of a listing: the incident and, when it awaits approval, its pending prompt."""

    pending_approval: str | None = Field(
        description="the id of the incident's pending approval prompt (what `approve` takes); null when "
        "none is pending"
    )

    @classmethod
    def listed(cls, incident: Incident, pending_approval: str | None) -> IncidentListItem:
        return cls.model_validate({**_incident_fields(incident), "pending_approval": pending_approval})


class IncidentPage(_Answer):
    """`GET /incidents`: one page (newest first), the cursor of the next one (null: last page), and
    how many incidents match the filters in all."""

    items: list[IncidentListItem]
    next_cursor: str | None
    total: int


class OpenedIncident(_Answer):
    incident: IncidentOut
    created: bool = Field(description="false: the execution's open incident was joined")


class DiagnosisStarted(_Answer):
    incident: IncidentOut
    diagnosis: Literal["started"]


class AlertOutcomeOut(BaseModel):
    """What happened to one alert of a payload."""

    model_config = ConfigDict(extra="allow")

    alertname: str
    status: str
    fingerprint: str
    outcome: str = Field(
        description="opened | joined | duplicate | closed | left_open | escalated (resolved for an incident "
        "escalated to on-call: its page resolves) | no_incident | ignored | conflict | "
        "recorded (stored, though the store failed as the write ended)"
    )
    execution_id: str | None = None
    incident_id: int | None = None
    detail: str | None = Field(None, description="why, for a conflict")


class RejectedAlertOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    problem: str


class AlertsAnswer(BaseModel):
    """`POST /alerts`: every valid alert's outcome; `partial` when some alerts were rejected or were a
    conflict (their episode recorded for another execution)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "partial"]
    alerts: list[AlertOutcomeOut]
    rejected: list[RejectedAlertOut]


class Health(_Answer):
    status: Literal["ok"]


class DependencyOut(BaseModel):
    """One dependency as the last readiness check saw it (`up` null: not checked yet)."""

    up: bool | None
    required: bool
    detail: str
    checked_at: str | None


class PluginProblemOut(BaseModel):
    """A plugin left out at start: its entry point group and name, where it came from, and why."""

    group: str
    name: str
    source: str
    reason: str


class Ready(BaseModel):
    """`/readyz`: the store answers; `degraded` names the optional dependencies that did not, and the
    plugins left out at start (`plugin:<name>`, with their reasons under `plugins`)."""

    status: Literal["ready", "degraded", "not_ready"]
    degraded: list[str]
    dependencies: dict[str, DependencyOut]
    not_configured: list[str]
    plugins: list[PluginProblemOut] = []
