"""The REST API's models: ids, query strings and bodies it accepts, answers it gives, and the cursor.

Where it sits: `api.py` declares each route with these models on its `gl_common.openapi.RouteTable`,
which validates every request with them before the handler runs (a 400 naming the field otherwise)
and builds the OpenAPI document from them; handlers shape their answers with the response models.
So what is documented, what is accepted and what is answered are one definition.

Ids (docs/architecture.md "Orchestrator REST API"): `execution_id` 1-64 characters, `dag_id`,
`node_id` and `agent_id` 1-128, each of `A-Z a-z 0-9 _ . : -` and starting with a letter or digit
(no control characters, no NUL, no `/`). `owner` (a replica id) 1-255 printable characters.

The listing cursor is opaque to clients: base64url of `{"at", "id", "f"}` (the position after which
the next page starts and a digest of the filter it belongs to) and a checksum. A cursor that does
not decode, whose checksum does not match, or that belongs to another filter is a 400. It is not a
secret: it only says where a listing stopped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from gl_common.http import bad_request
from gl_common.ids import AgentId, DagId, ExecutionId, NodeId
from orchestrator_core.dag import OnFailure
from orchestrator_core.hashing import canonical_json
from orchestrator_core.records import EXECUTION_STATUSES, ExecutionStatus, NodeStatus
from orchestrator_core.settings import MAX_CONCURRENT_EXECUTIONS_BOUND, MAX_PARALLEL_NODES_BOUND
from orchestrator_core.signal_models import NormalDurationOut
from orchestrator_core.store.listing import ExecutionFilter, Position

Owner = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Field(description="replica id of the run's owner: 1-255 printable characters"),
]
PATH_PARAMS = {"execution_id": ExecutionId, "dag_id": DagId, "agent_id": AgentId, "node_id": NodeId}

DEFAULT_PAGE = 500
MAX_PAGE = 5000
MAX_LOG_LINES = 5000
MAX_CURSOR_LENGTH = 512
# The most `execution_id` values one listing takes: a caller asking about the runs it knows (the
# watchdog's open pages) sends them in one request; 200 UUIDs comma-separated fit aiohttp's 8 KB line.
MAX_EXECUTION_IDS = 200


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- query strings ----------------------------------------------------------------------------------


class ExecutionListQuery(_Request):
    """`GET /executions`: filters (combined with AND), cursor and page size."""

    execution_id: list[ExecutionId] | None = Field(
        None,
        max_length=MAX_EXECUTION_IDS,
        description=f"any of these runs (repeat or comma-separate; at most {MAX_EXECUTION_IDS})",
    )
    status: list[ExecutionStatus] | None = Field(
        None,
        max_length=len(EXECUTION_STATUSES),
        description="any of these statuses (repeat or comma-separate)",
    )
    dag_id: DagId | None = None
    owner: Owner | None = None
    started_before: AwareDatetime | None = Field(
        None, description="runs started before (ISO 8601 with offset)"
    )
    started_after: AwareDatetime | None = Field(None, description="runs started after (ISO 8601 with offset)")
    over_timeout: bool | None = Field(
        None, description="true: running for longer than the effective timeout; false: all others"
    )
    no_timeout: bool | None = Field(
        None, description="true: the DAG sets no timeout of its own (the default applies); false: it does"
    )
    queued_before: AwareDatetime | None = Field(
        None, description="runs waiting in the admission queue since before (implies status queued)"
    )
    cancel_requested_before: AwareDatetime | None = Field(
        None, description="runs whose cancel was asked for before (with status=running: never completed)"
    )
    min_resume_count: int | None = Field(
        None, ge=0, le=2**31 - 1, description="runs resumed at least this often"
    )
    owner_gone: bool | None = Field(
        None,
        description="true: running runs whose owner replica's heartbeat is gone; false: running runs "
        "whose owner is alive (an embedded orchestrator knows only its own heartbeat)",
    )
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LENGTH)] | None = Field(
        None, description="next_cursor of the previous page (same filters)"
    )
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="page size")

    def to_filter(
        self, default_timeout_seconds: float | None, owners: tuple[str | None, ...] | None = None
    ) -> ExecutionFilter:
        """The store's filter; `owners`: the owners `owner_gone` selects (running runs of them)."""
        return ExecutionFilter(
            execution_ids=tuple(dict.fromkeys(self.execution_id)) if self.execution_id else None,
            statuses=tuple(dict.fromkeys(self.status)) if self.status else None,
            dag_id=self.dag_id,
            owner=self.owner,
            started_before=self.started_before,
            started_after=self.started_after,
            over_timeout=self.over_timeout,
            no_timeout=self.no_timeout,
            default_timeout_seconds=default_timeout_seconds,
            queued_before=self.queued_before,
            cancel_requested_before=self.cancel_requested_before,
            min_resume_count=self.min_resume_count,
            running_owners=owners,
        )


class LogsQuery(_Request):
    """`GET /executions/{id}/logs`."""

    node_id: NodeId | None = None
    limit: int = Field(200, ge=1, le=MAX_LOG_LINES, description="the most recent lines, at most")


# -- bodies -----------------------------------------------------------------------------------------


class EmptyBody(_Request):
    """Cancel, resume, agent restart: no body, or `{}`."""


class ExecutionOptionsModel(_Request):
    # Strict: "yes", "0" or 1 are refused rather than guessed at.
    model_config = ConfigDict(extra="forbid", strict=True)

    checkpoint_enabled: bool = True
    deterministic_mode: bool = False


class ExecuteRequest(_Request):
    """`POST /dags/{dag_id}/execute` (no body: defaults)."""

    input_data: Any = None
    execution_options: ExecutionOptionsModel | None = None


class LimitsRequest(_Request):
    """`PUT /admin/limits`: at least one of the two."""

    # Strict: `true` or "5" are refused (lax pydantic would read them as 1 and 5); same bounds as settings.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    max_parallel_nodes: int | None = Field(None, ge=1, le=MAX_PARALLEL_NODES_BOUND)
    max_concurrent_executions: int | None = Field(None, ge=1, le=MAX_CONCURRENT_EXECUTIONS_BOUND)

    @model_validator(mode="after")
    def _one_given(self) -> LimitsRequest:
        if self.max_parallel_nodes is None and self.max_concurrent_executions is None:
            raise ValueError("give max_parallel_nodes and/or max_concurrent_executions")
        return self


class NodePatch(_Request):
    """One node of a partial DAG update (nested policies are deep-merged, then the whole DAG is
    validated again, naming the field)."""

    node_id: NodeId | None = None
    agent_id: AgentId | None = None
    depends_on: list[NodeId] | None = None
    params: dict[str, Any] | None = None
    timeout_policy: dict[str, Any] | None = None
    retry_policy: dict[str, Any] | None = None
    compensation: AgentId | None = None
    description: str | None = None


class DagPatch(_Request):
    """`PUT /dags/{dag_id}`: a non-empty partial DAG document, deep-merged into the latest version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    dag_id: DagId | None = None
    version: int | None = Field(None, description="ignored: the update is stored as the next version")
    description: str | None = None
    nodes: dict[NodeId, NodePatch] | None = None
    execution_timeout_seconds: float | None = Field(None, gt=0)
    max_parallel_nodes: int | None = Field(None, ge=1, le=MAX_PARALLEL_NODES_BOUND)
    on_failure: OnFailure | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> DagPatch:
        if not self.model_fields_set:
            raise ValueError("the partial update must name at least one field")
        return self

    def to_patch(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


# -- answers ----------------------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecutionOptionsOut(_Answer):
    checkpoint_enabled: bool
    deterministic_mode: bool


class FailureStreak(_Answer):
    node_id: str
    count: int


class Execution(_Answer):
    """An execution (list items and `GET /executions/{id}`); `timeout_seconds` is the effective
    timeout: the DAG's, or the default when `timeout_is_default`."""

    execution_id: str
    dag_id: str
    dag_version: int
    status: ExecutionStatus
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    timeout_seconds: float | None
    timeout_is_default: bool
    error: str | None
    owner: str | None
    input_data: Any
    execution_options: ExecutionOptionsOut
    queued_at: datetime | None = Field(description="when it last entered the admission queue")
    cancel_requested_at: datetime | None = Field(
        description="when a cancel was asked for (cleared by a resume)"
    )
    resume_count: int = Field(description="how often it was resumed (takeovers included)")
    failure_streak: FailureStreak | None = Field(
        description="the node its last `count` failures in a row were at (null: it never failed)"
    )
    owner_alive: bool | None = Field(
        description="a running run's owner replica's heartbeat: present, gone, or null (no owner, not "
        "running, or unknown: embedded)"
    )


class ExecutionPage(_Answer):
    """`GET /executions`: one page, the cursor of the next one (null: last page), and how many runs
    match the filters in all."""

    items: list[Execution]
    next_cursor: str | None
    total: int


class NodeTraceOut(_Answer):
    status: NodeStatus
    duration_ms: float
    attempt_count: int
    error: str | None
    agent_id: str
    started_at: datetime | None
    completed_at: datetime | None
    input_hash: str | None
    timeout_seconds: float | None
    last_progress_at: datetime | None = Field(description="the node's last progress report (running nodes)")
    progress_message: str | None
    progress_fraction: float | None
    progress_reports: int
    normal_duration: NormalDurationOut | None = Field(
        description="the node's history of successful durations with its agent (null: none yet)"
    )


class Trace(_Answer):
    execution_id: str
    dag_id: str
    status: ExecutionStatus
    topology_levels: list[list[str]]
    node_traces: dict[str, NodeTraceOut]


class ResumeOut(_Answer):
    execution_id: str
    status: ExecutionStatus
    nodes_skipped: list[str]
    nodes_remaining: list[str]


class ProvenanceLink(_Answer):
    seq: int
    node_id: str
    input_hash: str
    output_hash: str
    status: str
    prev_hash: str
    hash: str


class Provenance(_Answer):
    execution_id: str
    chain_valid: bool
    chain: list[ProvenanceLink]
    problems: list[str]


class LogLine(BaseModel):
    """A structured log line; events add fields of their own."""

    model_config = ConfigDict(extra="allow")

    ts: str
    level: str
    message: str
    execution_id: str | None = None
    node_id: str | None = None
    agent_id: str | None = None


class LogLines(_Answer):
    execution_id: str
    lines: list[LogLine]
    total: int = Field(description="lines of the run (of the node) held in the ring buffer")


class CheckpointOut(_Answer):
    node_id: str
    status: str
    created_at: datetime | None


class Checkpoints(_Answer):
    execution_id: str
    checkpoints: list[CheckpointOut]


class ConfiguredLimits(_Answer):
    max_parallel_nodes: int
    max_concurrent_executions: int


class LimitOverrideOut(_Answer):
    value: int
    set_by: str
    updated_at: datetime | None


class Limits(_Answer):
    """`GET|PUT|DELETE /admin/limits`: the limits in force, this replica's own, the live overrides."""

    active_executions: int
    max_concurrent_executions: int
    queued_executions: int
    max_parallel_nodes: int
    replica_id: str
    configured: ConfiguredLimits
    overrides: dict[str, LimitOverrideOut]
    unshared: dict[str, int]


class DbPool(_Answer):
    active: int = Field(description="connections checked out (gl_db_pool_active_connections)")
    pending: int = Field(description="callers waiting for a connection (gl_db_pool_pending_connections)")


class CheckpointOperations(_Answer):
    operation: str
    status: Literal["ok", "error"]
    count: float = Field(
        description="since this replica started (gl_orchestrator_checkpoint_operations_total)"
    )


class Metrics(Limits):
    """`GET /metrics` (JSON): the limits, plus the figures diagnosis reads (runbook steps 5 and 8)
    without the Prometheus page."""

    db_pool: DbPool | None
    checkpoint_operations: list[CheckpointOperations]


class Agent(_Answer):
    agent_id: str
    kind: Literal["inprocess", "http"]
    restarts: int
    running_nodes: list[str]


class AgentList(_Answer):
    """Every registered agent (a set fixed at start-up: entry points and configured HTTP agents)."""

    items: list[Agent]


class InterruptedAttempt(_Answer):
    execution_id: str
    node_id: str


class AgentRestart(_Answer):
    agent_id: str
    restarts: int
    interrupted_nodes: list[str]
    interrupted: list[InterruptedAttempt]


class Health(_Answer):
    status: Literal["ok"]
    replica_id: str


class Ready(_Answer):
    status: Literal["ready"]
    checks: dict[str, str]


class NotReady(BaseModel):
    error: Literal["not_ready"]
    detail: str
    checks: dict[str, str]


# -- the listing cursor -----------------------------------------------------------------------------


def _filter_digest(query: ExecutionListQuery) -> str:
    filters = query.model_dump(mode="json", exclude={"cursor", "limit"}, exclude_none=True)
    return hashlib.sha256(canonical_json(filters).encode()).hexdigest()[:16]


def _checksum(payload: bytes) -> str:
    return hashlib.sha256(b"gl-orchestrator cursor\n" + payload).hexdigest()[:16]


def encode_cursor(position: Position, query: ExecutionListQuery) -> str:
    """The opaque cursor of `position` in the listing of `query`'s filters."""
    payload = canonical_json(
        {"at": position.at.isoformat(), "id": position.execution_id, "f": _filter_digest(query)}
    ).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _checksum(payload)


def decode_cursor(query: ExecutionListQuery) -> Position | None:
    """The position `query.cursor` names (None without one); 400 naming `cursor` when it is not a
    cursor this server made for these filters."""
    if query.cursor is None:
        return None
    invalid = bad_request("cursor: not a cursor of this listing (use next_cursor as given)", "cursor")
    encoded, _, checksum = query.cursor.partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if _checksum(payload) != checksum:
            raise invalid
        data = json.loads(payload)
        at = datetime.fromisoformat(data["at"])
        execution_id = data["id"]
        digest = data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid from None
    if not isinstance(execution_id, str) or at.tzinfo is None:
        raise invalid
    if digest != _filter_digest(query):
        raise bad_request("cursor: belongs to a listing with other filters", "cursor")
    return Position(at, execution_id)
