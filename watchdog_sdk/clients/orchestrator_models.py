"""The orchestrator API's answers and listing queries, as the watchdog side reads them.

Where it sits: the models of `watchdog_sdk.clients.orchestrator` (the client parses every answer into
them and re-exports them), kept apart so the client stays about requests and errors. Answers are
pydantic models with `extra="allow"`, so fields the orchestrator adds later pass through; a field an
older orchestrator does not send takes its default (None, or 0 for counts), which callers read as
"not known" rather than "no".

The stuck-run signals of issue 16 (docs/architecture.md, "Stuck-run signals") are here too: the
Execution's `queued_at`, `cancel_requested_at`, `resume_count`, `failure_streak` and `owner_alive`;
a node's progress and `normal_duration` (the quantiles of its completed runs) in the trace; and the
items of `GET /running-nodes` (`RunningNode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_PAGE = 5000  # the largest page the orchestrator gives (`limit` 1-5000)
# A listing that would need more pages than this is refused rather than read for ever (100 million
# runs at the largest page): an orchestrator handing out cursors that never end is broken.
MAX_PAGES = 20_000
# The most `execution_id` values one listing takes, and how long (URL-encoded, with the separators)
# they may be together, so the request line stays within the orchestrator's 8190 bytes: 200 UUIDs are
# 6997 characters, so one request; longer ids go in more than one (`OrchestratorClient.list_executions_of`).
MAX_EXECUTION_IDS = 200
MAX_EXECUTION_IDS_CHARS = 7000


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class FailureStreak(_ApiModel):
    """The node a run failed at in each of its last `count` consecutive attempts."""

    node_id: str
    count: int


class Execution(_ApiModel):
    """An execution record (list items and `GET /executions/{id}`)."""

    execution_id: str
    dag_id: str | None = None
    dag_version: int | str | None = None
    status: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    timeout_seconds: float | None = None
    timeout_is_default: bool | None = None  # the orchestrator's default, not the DAG's own
    error: str | None = None
    owner: str | None = None
    input_data: Any = None
    # Stuck-run signals (None from an orchestrator that does not report them).
    queued_at: datetime | None = None  # when the run entered the admission queue
    cancel_requested_at: datetime | None = None  # a cancel asked for and not completed yet
    resume_count: int | None = None
    failure_streak: FailureStreak | None = None  # the node its last `count` attempts failed at
    owner_alive: bool | None = None  # the owner replica's heartbeat (None: unknown, embedded mode)


@dataclass(frozen=True)
class ExecutionQuery:
    """The server-side filters of `GET /executions`, combined with AND.

    `over_timeout=True`: running for longer than the effective timeout; `no_timeout=True`: the DAG
    sets no timeout of its own (the orchestrator's default may apply); `started_before`: started
    before that instant. The stuck-run filters: `queued_before` (entered the queue before),
    `cancel_requested_before` (a cancel asked for before, not completed), `min_resume_count`
    (resumed at least that often), `owner_gone=True` (the owner replica's heartbeat is gone, its lock
    not expired). `status` may name several, comma-separated. `execution_ids`: any of these runs
    (at most MAX_EXECUTION_IDS; `OrchestratorClient.list_executions_of` splits longer lists).
    """

    status: str | None = "running"
    dag_id: str | None = None
    over_timeout: bool | None = None
    no_timeout: bool | None = None
    started_before: datetime | None = None
    queued_before: datetime | None = None
    cancel_requested_before: datetime | None = None
    min_resume_count: int | None = None
    owner_gone: bool | None = None
    execution_ids: tuple[str, ...] | None = None

    def params(self) -> dict[str, str | None]:
        """The query string (None: not sent)."""
        return {
            "execution_id": None if self.execution_ids is None else ",".join(self.execution_ids),
            "status": self.status,
            "dag_id": self.dag_id,
            "over_timeout": _flag(self.over_timeout),
            "no_timeout": _flag(self.no_timeout),
            "started_before": _iso_or_none(self.started_before),
            "queued_before": _iso_or_none(self.queued_before),
            "cancel_requested_before": _iso_or_none(self.cancel_requested_before),
            "min_resume_count": None if self.min_resume_count is None else str(self.min_resume_count),
            "owner_gone": _flag(self.owner_gone),
        }


@dataclass(frozen=True)
class ExecutionPage:
    """One page of `GET /executions`.

    `paged` is False when the orchestrator predates pagination: then `items` is its whole answer (its
    newest runs of the status, unfiltered, at most `limit`), `next_cursor` None and `total` None.
    """

    items: list[Execution]
    next_cursor: str | None
    total: int | None
    paged: bool


QUANTILES = (0.5, 0.95, 0.99)  # the quantiles of a node's history the orchestrator reports


class NormalDuration(_ApiModel):
    """A node's history of completed durations as the orchestrator summarises its sketch: how many,
    and the p50, p95 and p99 (seconds). A `watchdog_sdk.stall.History`: `quantile(q)` answers the
    three reported quantiles and refuses any other."""

    count: int = 0
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    p99_seconds: float | None = None

    def quantile(self, q: float) -> float | None:
        """The reported quantile `q` (0.5, 0.95 or 0.99); None when the history is empty."""
        values = dict(zip(QUANTILES, (self.p50_seconds, self.p95_seconds, self.p99_seconds), strict=True))
        if q not in values:
            raise ValueError(f"the orchestrator reports the quantiles {QUANTILES} of a history, not {q}")
        return values[q] if self.count else None


class NodeTrace(_ApiModel):
    """One node of a trace."""

    status: str = "pending"
    duration_ms: float | None = None
    attempt_count: int = 0
    error: str | None = None
    agent_id: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    input_hash: str | None = None
    timeout_seconds: float | None = None
    last_progress_at: datetime | None = None
    progress_message: str | None = None
    progress_fraction: float | None = None
    progress_reports: int = 0
    normal_duration: NormalDuration | None = None  # None: no history kept (or an older orchestrator)


class RunningNode(_ApiModel):
    """One item of `GET /running-nodes`: a running node of a running run, with what stall detection
    and the retry-storm check read."""

    execution_id: str
    dag_id: str | None = None
    node_id: str
    agent_id: str | None = None
    attempt: int = 1
    started_at: datetime | None = None
    last_progress_at: datetime | None = None
    progress_reports: int = 0
    normal_duration: NormalDuration | None = None


@dataclass(frozen=True)
class RunningNodesPage:
    """One page of `GET /running-nodes` (oldest started first)."""

    items: list[RunningNode]
    next_cursor: str | None
    total: int | None


class NodeDurations(_ApiModel):
    """One item of `GET /dags/{dag_id}/node-durations`."""

    node_id: str
    agent_id: str | None = None
    count: int = 0
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    p99_seconds: float | None = None


class Trace(_ApiModel):
    """`GET /executions/{id}/trace`."""

    execution_id: str
    dag_id: str | None = None
    status: str
    topology_levels: list[list[str]] = Field(default_factory=list)
    node_traces: dict[str, NodeTrace] = Field(default_factory=dict)


class ResumeResult(_ApiModel):
    """`POST /executions/{id}/resume`."""

    execution_id: str
    status: str
    nodes_skipped: list[str] = Field(default_factory=list)
    nodes_remaining: list[str] = Field(default_factory=list)


class Provenance(_ApiModel):
    """`GET /executions/{id}/provenance`."""

    execution_id: str | None = None
    chain_valid: bool
    chain: list[dict[str, Any]] = Field(default_factory=list)
    problems: list[Any] = Field(default_factory=list)


class LogLine(_ApiModel):
    """One structured log line of a run (`GET /executions/{id}/logs`)."""

    ts: datetime | str | None = None
    level: str | None = None
    message: str = ""
    execution_id: str | None = None
    node_id: str | None = None
    agent_id: str | None = None


class Checkpoint(_ApiModel):
    """One checkpoint record."""

    node_id: str
    status: str
    created_at: datetime | None = None


class Checkpoints(_ApiModel):
    """`GET /checkpoints/{id}`."""

    execution_id: str | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)


class DbPool(_ApiModel):
    """The answering replica's database pool (`gl_db_pool_*_connections`)."""

    active: int
    pending: int


class CheckpointOperations(_ApiModel):
    """One `gl_orchestrator_checkpoint_operations_total` series of the answering replica."""

    operation: str
    status: str
    count: float


class OrchestratorMetrics(_ApiModel):
    """`GET /metrics` (the JSON one under the API prefix).

    `db_pool` (None: the store has no pool figures) and `checkpoint_operations` are what diagnosis
    steps 5 and 8 read; an orchestrator before they were added leaves them out (`has_diagnosis_figures`
    is False), and the steps then read its Prometheus exposition instead.
    """

    active_executions: int | None = None
    max_concurrent_executions: int | None = None
    queued_executions: int | None = None
    max_parallel_nodes: int | None = None
    db_pool: DbPool | None = None
    checkpoint_operations: list[CheckpointOperations] | None = None

    @property
    def has_diagnosis_figures(self) -> bool:
        """True when the answer carries the pool and checkpoint figures (even if `db_pool` is null)."""
        return "checkpoint_operations" in self.model_fields_set

    def checkpoint_count(self, operation: str, status: str) -> float:
        """The count of one checkpoint operation and status (0 when the series does not exist)."""
        return sum(
            o.count
            for o in self.checkpoint_operations or ()
            if (o.operation, o.status) == (operation, status)
        )


class Limits(_ApiModel):
    """`GET|PUT /admin/limits`."""

    max_parallel_nodes: int
    max_concurrent_executions: int


class AgentInfo(_ApiModel):
    """One item of `GET /agents`."""

    agent_id: str
    kind: str | None = None
    restarts: int = 0
    running_nodes: list[Any] = Field(default_factory=list)


class AgentRestart(_ApiModel):
    """`POST /admin/agents/{agent_id}/restart`."""

    agent_id: str
    restarts: int = 0
    interrupted_nodes: list[Any] = Field(default_factory=list)


@dataclass(frozen=True)
class MetricSample:
    """One sample of the orchestrator's Prometheus exposition (`GET /metrics`)."""

    name: str
    labels: dict[str, str]
    value: float


def _flag(value: bool | None) -> str | None:
    """A boolean query parameter as the API spells it."""
    return None if value is None else ("true" if value else "false")


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso_instant(value)


def iso_instant(value: datetime) -> str:
    """An aware instant as ISO 8601 UTC with `Z` (a naive one is a bug of the caller)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
