"""The engine facade: register DAGs; create, start, cancel, resume, interrupt and wait for runs.

Where it sits: `service.OrchestratorService` builds one `Engine` at start-up (`await Engine.open(...)`)
and is its only caller in production; the CLI's `run` command and the tests use it directly. The
engine owns the `Store` (executions, DAGs, traces, checkpoints, provenance), the `AgentRegistry`, and
one `executor.Executor` per execution running on this replica. It does **no admission control** and
takes **no locks**: the service decides when a queued run may start and holds the Redis ownership lock.

How the service layer is expected to use it:

- Start-up: `engine = await Engine.open(settings, registry=registry, observer=observer)`. This opens
  the store and runs migrations. `observer` is the service's `EngineObserver` (metrics, tracing,
  logs; fan out with `events.CompositeObserver`). `registry` is an `agents.AgentRegistry` built from
  entry points (`AgentRegistry.from_entry_points()`), to which the service adds HTTP agents.
- `POST /dags/{id}/execute`: `record = await engine.create_execution(dag_id, input_data, options)`
  (status `queued`, 202 to the caller). When admission lets it run, acquire the lock (fencing token
  `t`) and call `await engine.start_execution(record.execution_id, owner=replica_id, fencing_token=t)`.
  The run goes on in a background task; `await engine.wait(execution_id)` returns the final record;
  `engine.done_callback` hooks are not needed — the observer's `execution_finished` tells you.
- Every store write of the run carries the fencing token; when another owner has claimed the run
  with a higher token the write raises `StaleFencingToken` and the local run stops without further
  writes (the observer sees `execution_finished` with status `interrupted`).
- Cancel: `await engine.cancel(execution_id)` (409 `InvalidState` if finished). For a run executing on
  this replica it stops the running nodes (within a second), marks them `cancelled`, keeps the
  checkpoints and sets the run `cancelled`; for a queued run, or one owned by another replica, it
  sets the status in the store, and the owner's next write stops it.
- Resume: `await engine.resume(execution_id, owner=..., fencing_token=...)` → `ResumeResult`
  (`nodes_skipped`, `nodes_remaining`); 409 if it is `running` unless `takeover=True` (the service
  has confirmed the old owner dead — orphan takeover) or `completed`.
- Shutdown / lost lock: `await engine.interrupt(execution_id)` stops a local run and marks it
  `interrupted` (resumable); `await engine.detach(execution_id)` stops it without writing anything
  (use when the lock is lost: the new owner writes). `await engine.close()` interrupts all local runs
  and closes the store.
- Live limits: `engine.set_max_parallel_nodes(n)` applies at once to running executions (a node
  already running is never stopped; new nodes wait). Effective per run: min(DAG's
  `max_parallel_nodes`, this value).
- Agents: `engine.registry.restart(agent_id)` (`POST /admin/agents/{id}/restart`).
- Reads: `get_execution`, `list_executions`, `get_trace` (live state for local runs), `get_provenance`
  (verified), `list_checkpoints`, `get_dag`, `pool_stats()` (for `gl_db_pool_*`), `local_executions()`.

The DAG-level `execution_timeout_seconds` is recorded on the execution (`timeout_seconds`) and is never
enforced by killing the run: per the runbook, the alert fires while the run stays `running`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator_core.dag import DagDefinition
from orchestrator_core.events import (
    CheckpointEvent,
    CompositeObserver,
    EngineObserver,
    ExecutionEvent,
    LogEvent,
    NodeAttemptEvent,
    NodeTimeoutEvent,
    RecordingObserver,
    RetryEvent,
    SafeObserver,
)
from orchestrator_core.records import (
    CheckpointRecord,
    ExecutionOptions,
    ExecutionRecord,
    ExecutionTrace,
    PoolStats,
    ProvenanceReport,
    ResumeResult,
)
from orchestrator_core.settings import OrchestratorSettings

__all__ = [
    "CheckpointEvent",
    "CompositeObserver",
    "EngineObserver",
    "ExecutionEvent",
    "LogEvent",
    "NodeAttemptEvent",
    "NodeTimeoutEvent",
    "RecordingObserver",
    "RetryEvent",
    "SafeObserver",
]


class Engine:
    """Facade over store, agent registry and executors (one per local run)."""

    @classmethod
    async def open(
        cls,
        settings: OrchestratorSettings,
        *,
        registry: Any = None,
        observer: EngineObserver | None = None,
        clock: Any = None,
    ) -> Engine:
        """Open the store (running migrations) and build the engine."""
        raise NotImplementedError("Engine.open is being built (issue 2)")

    async def close(self) -> None:
        """Interrupt local runs (status `interrupted`) and close the store."""
        raise NotImplementedError

    async def register_dag(self, dag: DagDefinition | Mapping[str, Any]) -> DagDefinition:
        """Validate (including agent ids) and store a DAG; a changed definition gets the next version."""
        raise NotImplementedError

    async def get_dag(self, dag_id: str, version: int | None = None) -> DagDefinition:
        """The latest (or a given) version of a DAG; `DagNotFound` otherwise."""
        raise NotImplementedError

    async def update_dag(self, dag_id: str, patch: Mapping[str, Any]) -> DagDefinition:
        """Deep-merge `patch` into the latest version, revalidate, store as version + 1."""
        raise NotImplementedError

    async def list_dags(self) -> list[DagDefinition]:
        """Latest version of every DAG."""
        raise NotImplementedError

    async def create_execution(
        self,
        dag_id: str,
        input_data: Any = None,
        options: ExecutionOptions | None = None,
        *,
        execution_id: str | None = None,
    ) -> ExecutionRecord:
        """Record a new `queued` execution of the DAG's latest version."""
        raise NotImplementedError

    async def start_execution(
        self, execution_id: str, *, owner: str | None = None, fencing_token: int | None = None
    ) -> ExecutionRecord:
        """Claim a queued execution (fencing token) and start running it in the background."""
        raise NotImplementedError

    async def execute(
        self,
        dag_id: str,
        input_data: Any = None,
        options: ExecutionOptions | None = None,
        *,
        execution_id: str | None = None,
        owner: str | None = None,
        fencing_token: int | None = None,
    ) -> ExecutionRecord:
        """`create_execution` + `start_execution`."""
        raise NotImplementedError

    async def wait(self, execution_id: str) -> ExecutionRecord:
        """Wait until a local run ends (bound it with `asyncio.timeout`); the stored record otherwise."""
        raise NotImplementedError

    async def cancel(self, execution_id: str, *, reason: str = "cancelled by request") -> ExecutionRecord:
        """Cancel a queued or running execution (checkpoints kept); `InvalidState` if finished."""
        raise NotImplementedError

    async def resume(
        self,
        execution_id: str,
        *,
        owner: str | None = None,
        fencing_token: int | None = None,
        takeover: bool = False,
    ) -> ResumeResult:
        """Resume a failed/cancelled/interrupted run under the same id, skipping checkpointed nodes."""
        raise NotImplementedError

    async def interrupt(self, execution_id: str, *, reason: str = "interrupted") -> ExecutionRecord:
        """Stop a local run and mark it `interrupted` (resumable)."""
        raise NotImplementedError

    async def detach(self, execution_id: str) -> None:
        """Stop a local run without writing anything (ownership lost)."""
        raise NotImplementedError

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        raise NotImplementedError

    async def list_executions(
        self, *, status: str | None = None, dag_id: str | None = None, limit: int = 500
    ) -> list[ExecutionRecord]:
        raise NotImplementedError

    async def get_trace(self, execution_id: str) -> ExecutionTrace:
        raise NotImplementedError

    async def get_provenance(self, execution_id: str) -> ProvenanceReport:
        raise NotImplementedError

    async def list_checkpoints(self, execution_id: str) -> list[CheckpointRecord]:
        raise NotImplementedError

    def local_executions(self) -> list[str]:
        """Ids of the executions running on this replica."""
        raise NotImplementedError

    @property
    def max_parallel_nodes(self) -> int:
        raise NotImplementedError

    def set_max_parallel_nodes(self, value: int) -> None:
        """Change the live per-execution node parallelism limit (applies to running executions)."""
        raise NotImplementedError

    def pool_stats(self) -> PoolStats:
        """Connection pool figures of the store."""
        raise NotImplementedError
