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
  The run goes on in a background task; `await engine.wait(execution_id)` returns the final record,
  and the observer's `execution_finished` event reports the end as it happens.
- Every store write of the run carries the fencing token; when another owner has claimed the run
  with a higher token the write raises `StaleFencingToken` and the local run stops without further
  writes (the observer sees `execution_finished` with status `interrupted`).
- Cancel: `await engine.cancel(execution_id)` (409 `InvalidState` if finished). For a run executing on
  this replica it stops the running nodes (within a second), marks them `cancelled`, keeps the
  checkpoints and sets the run `cancelled`; for a queued run, or one owned by another replica, it
  sets the status in the store, and the owner's next write stops it.
- Resume: `await engine.resume(execution_id, owner=..., fencing_token=...)` → `ResumeResult`
  (`nodes_skipped`, `nodes_remaining`); 409 if it is `running` unless `takeover=True` (the service
  has confirmed the old owner dead — orphan takeover) or `completed`. `queue_resume` instead puts it
  back in the admission queue (`queued`, checkpoints kept); `start_execution` resumes it when admitted.
- Shutdown / lost lock: `await engine.interrupt(execution_id)` stops a local run and marks it
  `interrupted` (resumable); `await engine.detach(execution_id)` stops it without writing anything
  (use when the lock is lost: the new owner writes). `await engine.close()` interrupts all local runs
  and closes the store.
- Live limits: `engine.set_max_parallel_nodes(n)` applies at once to running executions (a node
  already running is never stopped; new nodes wait). Effective per run: min(DAG's
  `max_parallel_nodes`, this value).
- Agents: `engine.registry.restart(agent_id)` (`POST /admin/agents/{id}/restart`).
- Reads: `get_execution`, `list_executions`, `page_executions` (filtered keyset pages), `get_trace`
  (live state for local runs), `get_provenance` (verified), `list_checkpoints`, `get_dag`,
  `pool_stats()` (for `gl_db_pool_*`), `local_executions()`.

The DAG-level `execution_timeout_seconds` is recorded on the execution (`timeout_seconds`) and is never
enforced by killing the run: per the runbook, the alert fires while the run stays `running`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

from gl_common.clock import Clock, SystemClock
from gl_common.db import PoolStats
from orchestrator_core.agents import AgentRegistry
from orchestrator_core.dag import DagDefinition, deep_merge
from orchestrator_core.errors import DagValidationError, InvalidState, StoreError
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
from orchestrator_core.executor import Executor
from orchestrator_core.hashing import canonical_json
from orchestrator_core.plan import RunPlans
from orchestrator_core.progress import RunSignals
from orchestrator_core.provenance import genesis_hash, verify
from orchestrator_core.records import (
    RESUMABLE_STATUSES,
    CheckpointRecord,
    ExecutionOptions,
    ExecutionRecord,
    ExecutionTrace,
    NodeTrace,
    ProvenanceReport,
    ResumeResult,
)
from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.signals import RunIdentity
from orchestrator_core.store import ClaimedRun, Store
from orchestrator_core.store.listing import ExecutionFilter, Page, Position

__all__ = [
    "CheckpointEvent",
    "CompositeObserver",
    "Engine",
    "EngineObserver",
    "ExecutionEvent",
    "LogEvent",
    "NodeAttemptEvent",
    "NodeTimeoutEvent",
    "RecordingObserver",
    "RetryEvent",
    "SafeObserver",
]

log = logging.getLogger(__name__)


def resume_dag(own: DagDefinition, latest: DagDefinition) -> DagDefinition:
    """The DAG a resume runs: the latest version if its topology is unchanged, else the run's own."""
    return latest if latest.version != own.version and latest.same_topology(own) else own


STOP_WAIT_SECONDS = 5.0  # how long cancel/interrupt wait for a local run to write its final status


class Engine:
    """Facade over store, agent registry and executors (one per local run)."""

    def __init__(
        self,
        settings: OrchestratorSettings,
        store: Store,
        registry: AgentRegistry,
        *,
        observer: EngineObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.observer: EngineObserver = SafeObserver(observer) if observer is not None else EngineObserver()
        self.clock: Clock = clock or SystemClock()
        self._max_parallel_nodes = settings.max_parallel_nodes
        self._runs: dict[str, Executor] = {}
        self.plans = RunPlans()  # per DAG version: levels and input hashers, shared by its runs
        # Progress, running nodes and the node-duration history of every run here (issue 16).
        self.signals = RunSignals(
            store, self.clock, self.observer, is_local=self._runs_here, local_status=self._node_status
        )

    @classmethod
    async def open(
        cls,
        settings: OrchestratorSettings,
        *,
        registry: AgentRegistry | None = None,
        observer: EngineObserver | None = None,
        clock: Clock | None = None,
    ) -> Engine:
        """Open the store (running migrations) and build the engine.

        Without `registry`, the agents declared under the `gl_orchestrator.agents` entry points are loaded.
        """
        clock = clock or SystemClock()
        store = await Store.open(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            timeout_seconds=settings.db_timeout_seconds,
            clock=clock,
        )
        if registry is None:
            registry = AgentRegistry.from_entry_points()
        return cls(settings, store, registry, observer=observer, clock=clock)

    async def close(self) -> None:
        """Interrupt local runs (status `interrupted`, resumable) and close the store."""
        for execution_id in list(self._runs):
            try:
                await self.interrupt(execution_id, reason="orchestrator shutting down")
            except Exception:  # shutting down: report and go on with the others
                log.exception("could not interrupt execution %s at shutdown", execution_id)
        await self.signals.close()
        await self.store.close()

    # -- DAGs --------------------------------------------------------------------------------------

    def _check_agents(self, dag: DagDefinition) -> None:
        problems = []
        for node_id in sorted(dag.nodes):
            node = dag.nodes[node_id]
            if node.agent_id not in self.registry:
                problems.append((f"nodes.{node_id}.agent_id", f"unknown agent {node.agent_id!r}"))
            if node.compensation is not None and node.compensation not in self.registry:
                problems.append((f"nodes.{node_id}.compensation", f"unknown agent {node.compensation!r}"))
        if problems:
            raise DagValidationError(problems)

    async def register_dag(self, dag: DagDefinition | Mapping[str, Any]) -> DagDefinition:
        """Validate (including agent ids) and store a DAG; a changed definition gets the next version."""
        definition = dag if isinstance(dag, DagDefinition) else DagDefinition.from_document(dag)
        self._check_agents(definition)
        return await self.store.dags.save(definition)

    async def get_dag(self, dag_id: str, version: int | None = None) -> DagDefinition:
        """The latest (or a given) version of a DAG; `DagNotFound` otherwise."""
        return await self.store.dags.get(dag_id, version)

    async def update_dag(self, dag_id: str, patch: Mapping[str, Any]) -> DagDefinition:
        """Deep-merge `patch` into the latest version, revalidate, store as version + 1."""
        if not isinstance(patch, Mapping):
            raise DagValidationError([("", "a DAG update must be an object")])
        current = await self.store.dags.get(dag_id)
        if "dag_id" in patch and patch["dag_id"] != dag_id:
            raise DagValidationError([("dag_id", "cannot be changed by an update")])
        document = deep_merge(current.to_document(), {k: v for k, v in patch.items() if k != "version"})
        document["version"] = current.version + 1
        updated = DagDefinition.from_document(document)
        self._check_agents(updated)
        return await self.store.dags.save(updated)

    async def list_dags(self) -> list[DagDefinition]:
        """Latest version of every DAG."""
        return await self.store.dags.latest()

    # -- starting ----------------------------------------------------------------------------------

    async def create_execution(
        self,
        dag_id: str,
        input_data: Any = None,
        options: ExecutionOptions | None = None,
        *,
        execution_id: str | None = None,
    ) -> ExecutionRecord:
        """Record a new `queued` execution of the DAG's latest version."""
        build = self._new_record(input_data, options, execution_id)
        return (await self.store.executions.create_run(dag_id, build)).record

    def _new_record(
        self, input_data: Any, options: ExecutionOptions | None, execution_id: str | None
    ) -> Callable[[DagDefinition], ExecutionRecord]:
        """What a new run of a DAG version records (the store reads the latest version first, so an
        unknown DAG is reported before a bad input)."""

        def build(dag: DagDefinition) -> ExecutionRecord:
            try:
                canonical_json(input_data)
            except (TypeError, ValueError) as exc:
                raise DagValidationError([("input_data", f"must be JSON: {exc}")]) from None
            return ExecutionRecord(
                execution_id=execution_id or uuid.uuid4().hex,
                dag_id=dag.dag_id,
                dag_version=dag.version,
                status="queued",
                input_data=input_data,
                options=options or ExecutionOptions(),
                created_at=self.clock.now(),
                timeout_seconds=dag.execution_timeout_seconds,
            )

        return build

    async def start_execution(
        self, execution_id: str, *, owner: str | None = None, fencing_token: int | None = None
    ) -> ExecutionRecord:
        """Claim a queued execution (fencing token) and start running it in the background.

        A queued resume (`queue_resume`: the run started before) continues from its checkpoints.
        """
        claimed = await self._claim(execution_id, {"queued"}, "start", owner, fencing_token)
        self._launch(claimed)
        return claimed.record

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
        """`create_execution` + `start_execution`: reading the DAG's latest version, the insert and the
        claim in one transaction."""
        build = self._new_record(input_data, options, execution_id)
        if fencing_token is not None and fencing_token <= 0:  # a new run's stored token is 0
            # A token the claim refuses: keep the two steps (the queued run stays, the claim raises).
            created = await self.store.executions.create_run(dag_id, build)
            return await self.start_execution(
                created.record.execution_id, owner=owner, fencing_token=fencing_token
            )
        claimed = await self.store.commits.create_run(
            dag_id, build, claim=(owner or self.settings.replica_id, fencing_token)
        )
        self._launch(claimed)
        return claimed.record

    async def _claim(
        self, execution_id: str, allowed: Collection[str], action: str, owner: str | None, token: int | None
    ) -> ClaimedRun:
        """Claim a run that is not running here, reading what it runs in the same transaction."""
        if execution_id in self._runs:
            raise InvalidState(f"execution {execution_id} is already running on this replica")
        try:
            claimed = await self.store.executions.claim_run(
                execution_id,
                owner=owner or self.settings.replica_id,
                token=token,
                allowed=allowed,
                action=action,
                resume_dag=resume_dag,
            )
        except StoreError as exc:
            if action == "resume":  # the claim reads the checkpoints: their load failed with it
                self._checkpoints_loaded(execution_id, 0, exc)
            raise
        if claimed.data is not None:
            self._checkpoints_loaded(execution_id, len(claimed.data.checkpoints))
        return claimed

    def _launch(self, claimed: ClaimedRun) -> Executor:
        """Build the run's executor and start it in the background: the one way a run starts here."""
        executor = Executor(
            store=self.store,
            registry=self.registry,
            observer=self.observer,
            clock=self.clock,
            plan=self.plans.get(claimed.dag),
            record=claimed.record,
            parallel_limit=lambda: self._max_parallel_nodes,
            resume_from=claimed.data,
            checkpoint_base_delay=self.settings.checkpoint_retry_base_delay,
            checkpoint_max_delay=self.settings.checkpoint_retry_max_delay,
            signals=self.signals,
        )
        execution_id = executor.execution_id
        self._runs[execution_id] = executor
        task = executor.start()

        def forget(_: asyncio.Task[Any]) -> None:
            if self._runs.get(execution_id) is executor:
                del self._runs[execution_id]
            self.signals.run_ended(executor.run_state)

        task.add_done_callback(forget)
        return executor

    # -- controlling -------------------------------------------------------------------------------

    async def wait(self, execution_id: str) -> ExecutionRecord:
        """Wait until a local run ends (bound it with `asyncio.timeout`); the stored record otherwise."""
        executor = self._runs.get(execution_id)
        if executor is not None and executor.task is not None:
            await asyncio.wait([executor.task])
            if executor.final_record is not None:
                return executor.final_record  # read back in the run's final transaction
        return await self.store.executions.get(execution_id)

    async def _stop_local(self, executor: Executor, mode: str, reason: str) -> None:
        executor.stop(mode, reason)
        task = executor.task
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=STOP_WAIT_SECONDS)
        if not done:
            raise InvalidState(f"execution {executor.execution_id} did not stop within {STOP_WAIT_SECONDS}s")
        if task.cancelled() and mode != "detach":
            # Cancelled before its first step: the run never got to write its status; do it here.
            status = "cancelled" if mode == "cancel" else "interrupted"
            await self.store.executions.finish(
                executor.execution_id, executor.token, status=status, error=reason
            )

    async def cancel(self, execution_id: str, *, reason: str = "cancelled by request") -> ExecutionRecord:
        """Cancel a queued or running execution (checkpoints kept); `InvalidState` if finished.

        The request is recorded first (`cancel_requested_at`), so that a cancel that does not complete
        shows as one (issue 16)."""
        await self.store.executions.request_cancel(execution_id)
        executor = self._runs.get(execution_id)
        if executor is not None:
            await self._stop_local(executor, "cancel", reason)
            return await self.store.executions.get(execution_id)
        traces = await self.store.runs.traces(execution_id)
        now = self.clock.now()
        stopped = [
            NodeTrace(**{**t.__dict__, "status": "cancelled", "error": reason, "completed_at": now})
            for t in traces.values()
            if t.status == "running"
        ]
        return await self.store.executions.set_status(
            execution_id,
            status="cancelled",
            expected={"queued", "running", "interrupted"},
            error=reason,
            traces=stopped,
        )

    async def interrupt(self, execution_id: str, *, reason: str = "interrupted") -> ExecutionRecord:
        """Stop a local run and mark it `interrupted` (resumable). For a run not executing here (an
        orphan whose owner is confirmed dead), mark the stored `running` record `interrupted`."""
        executor = self._runs.get(execution_id)
        if executor is not None:
            await self._stop_local(executor, "interrupt", reason)
            return await self.store.executions.get(execution_id)
        return await self.store.executions.set_status(
            execution_id, status="interrupted", expected={"running"}, error=reason
        )

    async def detach(self, execution_id: str) -> None:
        """Stop a local run without writing anything (ownership lost)."""
        executor = self._runs.get(execution_id)
        if executor is not None:
            await self._stop_local(executor, "detach", "ownership lost")

    async def resume(
        self,
        execution_id: str,
        *,
        owner: str | None = None,
        fencing_token: int | None = None,
        takeover: bool = False,
    ) -> ResumeResult:
        """Resume a failed/cancelled/interrupted run under the same id, skipping checkpointed nodes.

        The run continues on the DAG's latest version when its topology is unchanged (so a timeout
        raised with `update_dag` applies), otherwise on the version it started with (`resume_dag`).
        `takeover=True` also accepts a `running` record: the caller has confirmed that its owner is dead.
        One transaction claims the run and reads its DAG version, checkpoints, chain and traces.
        """
        allowed = set(RESUMABLE_STATUSES) | ({"running"} if takeover else set())
        claimed = await self._claim(execution_id, allowed, "resume", owner, fencing_token)
        executor = self._launch(claimed)
        return ResumeResult(
            execution_id=execution_id,
            status=claimed.record.status,
            nodes_skipped=list(executor.skipped_from_checkpoint),
            nodes_remaining=executor.nodes_remaining,
        )

    async def queue_resume(self, execution_id: str) -> ResumeResult:
        """Queue a resume for admission (the service is at `max_concurrent_executions`).

        The run becomes `queued` again, keeping its checkpoints; `start_execution` resumes it from them
        when admitted. The result says which nodes that will skip and which it will run. One
        transaction checks the status, reads the DAG version and the checkpoints, and requeues.
        """
        if execution_id in self._runs:
            raise InvalidState(f"execution {execution_id} is running on this replica")
        try:
            dag, checkpoints = await self.store.executions.requeue(
                execution_id, allowed=RESUMABLE_STATUSES, resume_dag=resume_dag
            )
        except StoreError as exc:
            self._checkpoints_loaded(execution_id, 0, exc)
            raise
        self._checkpoints_loaded(execution_id, len(checkpoints))
        planned = self.plans.get(dag).levels
        levels = {node: index for index, level in enumerate(planned) for node in level}
        skipped = sorted(
            {cp.node_id for cp in checkpoints if cp.status == "completed" and cp.node_id in levels},
            key=lambda node: (levels[node], node),
        )
        done = set(skipped)
        return ResumeResult(
            execution_id=execution_id,
            status="queued",
            nodes_skipped=skipped,
            nodes_remaining=[n for level in planned for n in level if n not in done],
        )

    def _checkpoints_loaded(self, execution_id: str, count: int, error: StoreError | None = None) -> None:
        """Report a load of a run's checkpoints (for a resume) to the observer: ok, or error."""
        self.observer.checkpoint_operation(
            CheckpointEvent(
                execution_id,
                "load",
                "ok" if error is None else "error",
                count,
                self.clock.now(),
                error=None if error is None else str(error),
            )
        )

    # -- reading -----------------------------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        return await self.store.executions.get(execution_id)

    async def list_executions(
        self, *, status: str | None = None, dag_id: str | None = None, limit: int = 500
    ) -> list[ExecutionRecord]:
        return await self.store.executions.list(status=status, dag_id=dag_id, limit=limit)

    async def page_executions(self, where: ExecutionFilter, *, after: Position | None, limit: int) -> Page:
        """A keyset page of the executions matching `where`, oldest first (`store.listing`)."""
        return await self.store.listing.page(where, after=after, limit=limit)

    async def get_trace(self, execution_id: str) -> ExecutionTrace:
        """Node traces: live state for a run executing here, the stored traces otherwise."""
        record = await self.store.executions.get(execution_id)
        executor = self._runs.get(execution_id)
        if executor is not None:
            dag, traces = executor.dag, executor.snapshot()
        else:
            dag = await self.store.dags.get(record.dag_id, record.dag_version)
            stored = await self.store.runs.traces(execution_id)
            traces = {}
            for level_index, level in enumerate(self.plans.get(dag).levels):
                for node_id in level:
                    node = dag.nodes[node_id]
                    traces[node_id] = stored.get(node_id) or NodeTrace(
                        node_id=node_id,
                        agent_id=node.agent_id,
                        level=level_index,
                        timeout_seconds=node.timeout_policy.timeout_seconds,
                    )
        return ExecutionTrace(
            execution_id=execution_id,
            dag_id=record.dag_id,
            status=record.status,
            topology_levels=self.plans.get(dag).level_lists(),
            node_traces=traces,
        )

    async def get_provenance(self, execution_id: str) -> ProvenanceReport:
        """The stored chain and its verification."""
        record = await self.store.executions.get(execution_id)
        chain, head, length = await self.store.runs.provenance(execution_id)
        problems = verify(chain, genesis_hash(record.dag_id, record.input_data), head=head, length=length)
        return ProvenanceReport(
            execution_id=execution_id, chain_valid=not problems, chain=chain, problems=problems
        )

    async def list_checkpoints(self, execution_id: str) -> list[CheckpointRecord]:
        await self.store.executions.get(execution_id)  # 404 for an unknown id
        return await self.store.runs.checkpoints(execution_id)

    def local_executions(self) -> list[str]:
        """Ids of the executions running on this replica."""
        return sorted(self._runs)

    def _runs_here(self, run: RunIdentity) -> bool:
        """Whether `run` (a run's state) is the one executing here under its id."""
        executor = self._runs.get(run.execution_id)
        return executor is not None and executor.run_state is run

    def _node_status(self, execution_id: str, node_id: str) -> str | None:
        """The node's status when its run executes here (None otherwise)."""
        executor = self._runs.get(execution_id)
        if executor is None:
            return None
        state = executor.states.get(node_id)
        return None if state is None else state.status

    def executor(self, execution_id: str) -> Executor | None:
        """The local executor of a run (None when it is not running here)."""
        return self._runs.get(execution_id)

    # -- limits and pool ---------------------------------------------------------------------------

    @property
    def max_parallel_nodes(self) -> int:
        return self._max_parallel_nodes

    def set_max_parallel_nodes(self, value: int) -> None:
        """Change the live per-execution node parallelism limit (applies to running executions)."""
        if value < 1:
            raise ValueError("max_parallel_nodes must be >= 1")
        self._max_parallel_nodes = value
        for executor in self._runs.values():
            executor.slots.wake()

    def pool_stats(self) -> PoolStats:
        """Connection pool figures of the store."""
        return self.store.pool_stats()
