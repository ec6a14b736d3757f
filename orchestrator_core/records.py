"""Plain, frozen records the engine hands out: executions, node traces, checkpoints, provenance.

Where it sits: produced by `store` (rows) and the executor (live state), returned by `engine.Engine`
to the service and the REST API, which renders them with the `to_json()` methods (the JSON shapes of
docs/architecture.md "Orchestrator REST API"). No behaviour beyond conversion lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

ExecutionStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
NodeStatus = Literal["pending", "running", "completed", "failed", "skipped", "timed_out", "cancelled"]

EXECUTION_STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
RESUMABLE_STATUSES: frozenset[str] = frozenset({"failed", "cancelled", "interrupted"})
NODE_STATUSES: tuple[str, ...] = (
    "pending",
    "running",
    "completed",
    "failed",
    "skipped",
    "timed_out",
    "cancelled",
)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a `Z` suffix (the API's timestamp format), or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ExecutionOptions:
    """Per-run options (`execution_options` of `POST /dags/{dag_id}/execute`)."""

    checkpoint_enabled: bool = True
    deterministic_mode: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint_enabled": self.checkpoint_enabled, "deterministic_mode": self.deterministic_mode}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ExecutionOptions:
        data = data or {}
        return cls(
            checkpoint_enabled=bool(data.get("checkpoint_enabled", True)),
            deterministic_mode=bool(data.get("deterministic_mode", False)),
        )


@dataclass(frozen=True)
class ExecutionRecord:
    """One execution as stored."""

    execution_id: str
    dag_id: str
    dag_version: int
    status: str
    input_data: Any
    options: ExecutionOptions
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    timeout_seconds: float | None = None
    error: str | None = None
    owner: str | None = None
    fencing_token: int = 0
    # The stuck-state columns (migration 6): when it last entered the queue, when a cancel was asked
    # for, how often it was resumed, and the node its last `failure_streak` attempts failed at.
    queued_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    resume_count: int = 0
    failure_node: str | None = None
    failure_streak: int = 0

    def to_json(self) -> dict[str, Any]:
        """The API's execution object."""
        return {
            "execution_id": self.execution_id,
            "dag_id": self.dag_id,
            "dag_version": self.dag_version,
            "status": self.status,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "timeout_seconds": self.timeout_seconds,
            "error": self.error,
            "owner": self.owner,
            "input_data": self.input_data,
            "execution_options": self.options.to_json(),
            "queued_at": iso(self.queued_at),
            "cancel_requested_at": iso(self.cancel_requested_at),
            "resume_count": self.resume_count,
            "failure_streak": None
            if self.failure_node is None or self.failure_streak <= 0
            else {"node_id": self.failure_node, "count": self.failure_streak},
        }


@dataclass(frozen=True)
class NodeTrace:
    """What happened to one node of one execution."""

    node_id: str
    agent_id: str
    status: str = "pending"
    level: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    attempt_count: int = 0
    error: str | None = None
    input_hash: str | None = None
    timeout_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "duration_ms": self.duration_ms,
            "attempt_count": self.attempt_count,
            "error": self.error,
            "agent_id": self.agent_id,
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "input_hash": self.input_hash,
            "timeout_seconds": self.timeout_seconds,
        }


@dataclass(frozen=True)
class ExecutionTrace:
    """`GET /executions/{id}/trace`."""

    execution_id: str
    dag_id: str
    status: str
    topology_levels: list[list[str]]
    node_traces: dict[str, NodeTrace]

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "dag_id": self.dag_id,
            "status": self.status,
            "topology_levels": self.topology_levels,
            "node_traces": {node_id: trace.to_json() for node_id, trace in self.node_traces.items()},
        }


@dataclass(frozen=True)
class CheckpointRecord:
    """A saved node result. `output` feeds downstream nodes when the run is resumed."""

    execution_id: str
    node_id: str
    status: str
    output: Any
    input_hash: str
    output_hash: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "status": self.status, "created_at": iso(self.created_at)}


class ProvenanceEntry(NamedTuple):
    """One link of an execution's provenance hash chain (a named tuple, not a dataclass like the
    others: one is built for every node of every run, and a tuple is built several times faster)."""

    seq: int
    node_id: str
    input_hash: str
    output_hash: str
    status: str
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "node_id": self.node_id,
            "input_hash": self.input_hash,
            "output_hash": self.output_hash,
            "status": self.status,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class ProvenanceReport:
    """`GET /executions/{id}/provenance`: the chain and whether it verifies."""

    execution_id: str
    chain_valid: bool
    chain: list[ProvenanceEntry]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "chain_valid": self.chain_valid,
            "chain": [entry.to_json() for entry in self.chain],
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class ResumeResult:
    """`POST /executions/{id}/resume`."""

    execution_id: str
    status: str
    nodes_skipped: list[str]
    nodes_remaining: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "status": self.status,
            "nodes_skipped": list(self.nodes_skipped),
            "nodes_remaining": list(self.nodes_remaining),
        }


@dataclass(frozen=True)
class LimitOverride:
    """A live limit set through `PUT /admin/limits`, applied by every replica until cleared."""

    name: str
    value: int
    set_by: str
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "set_by": self.set_by, "updated_at": iso(self.updated_at)}
