"""Runs one execution: levels, the barrier, `max_parallel_nodes`, timeouts, retries, failure strategies.

Where it sits: `engine.Engine` builds one `Executor` per run started (or resumed) on this replica and
runs `Executor.run()` in a background task; `Engine.cancel/interrupt/detach` call `Executor.stop`.
The executor calls agents through `agents.AgentRegistry.invoke`, persists through
`checkpoints.RunWriter` (fenced by the run's token), appends provenance through
`provenance.ChainBuilder`, and reports every step to the `EngineObserver`.

Semantics (the runbook depends on them):

- Levels come from the topological sort (`DagDefinition.levels()`). Level k+1 starts only when every
  node of level k has completed, been skipped, or failed per `on_failure` — and every completed node's
  checkpoint is committed. One hung node therefore stalls the run at its level: by design.
- Within a level at most `min(dag.max_parallel_nodes, live limit)` attempts run at once (`Slots`, whose
  limit is re-read on every acquire, so `Engine.set_max_parallel_nodes` applies to running runs).
  Nodes start in node-id order. A level of one node runs in the execution's task; a wider level is
  run by worker tasks (`_run_workers`): nodes that return without waiting share one worker, and every
  node that waits gets a task of its own, so a level behaves as if each node had its own task.
- Per attempt: `timeout_policy.timeout_seconds` (a `NodeTimeout`), retries per `retry_policy`
  (`policies.is_retryable`, `policies.retry_delay`, jitter seeded from the execution id in
  deterministic mode), the final outcome per `on_timeout` (`fail` → `timed_out`; `skip` → `skipped`
  and downstream gets `None`; `compensate` → the node's compensation agent runs, then `timed_out`).
- `on_failure`: `fail_fast` cancels the failed node's running siblings and stops after the level;
  `continue` runs everything not downstream of a failure (those nodes end `skipped`) and the run ends
  `failed`; `compensate` stops like `fail_fast`, then runs the `compensation` agents of completed nodes
  in reverse completion order.
- `stop("cancel")` cancels running nodes at once: they end `cancelled`, the run `cancelled`, the
  checkpoints stay. `stop("interrupt")` is the same with status `interrupted`. `stop("detach")` stops
  without writing (ownership lost). The DAG-level `execution_timeout_seconds` is never enforced here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gl_common.clock import Clock
from orchestrator_core.agents import AgentContext, AgentRegistry
from orchestrator_core.checkpoints import RunWriter
from orchestrator_core.dag import Node
from orchestrator_core.errors import (
    AgentOutputError,
    AgentRestarted,
    InvalidState,
    NodeTimeout,
    OrchestratorError,
    StaleFencingToken,
)
from orchestrator_core.events import (
    EngineObserver,
    ExecutionEvent,
    LogEvent,
    NodeAttemptEvent,
    NodeTimeoutEvent,
    RetryEvent,
)
from orchestrator_core.hashing import NO_OUTPUT_HASH, canonical_json, sha256_hex
from orchestrator_core.plan import RunPlan
from orchestrator_core.policies import (
    backoff_delay,
    describe_error,
    is_retryable,
    jitter_rng,
    retry_delay,
)
from orchestrator_core.provenance import ChainBuilder, genesis_hash
from orchestrator_core.records import CheckpointRecord, ExecutionRecord, NodeTrace
from orchestrator_core.store import RunData, Store, WriteBatch

FINISH_ATTEMPTS = 5  # tries to record a run's final status before giving up (the run stays resumable)
FAILED_NODE_STATUSES = frozenset({"failed", "timed_out"})
TERMINAL_NODE_STATUSES = frozenset({"completed", "failed", "skipped", "timed_out", "cancelled"})


class Slots:
    """A counting semaphore whose limit is read from a callable on every acquire (live-adjustable).

    Lowering the limit never stops holders; new acquirers wait until usage drops below it. FIFO.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot at once if one is free and nobody is queued (what `acquire` does first)."""
        if not self._waiters and self.in_use < self._limit():
            self.in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # we were granted a slot but will not use it
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self.wake()

    def wake(self) -> None:
        """Grant slots to waiters while usage is under the (possibly new) limit."""
        while self._waiters and self.in_use < self._limit():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)


@dataclass(slots=True)
class _NodeState:
    node: Node
    level: int
    status: str = "pending"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    attempt_count: int = 0
    error: str | None = None
    input_hash: str | None = None
    output_hash: str | None = None
    started_mono: float = 0.0

    # The rest of `store.TraceFields`, so that the final write of a run can take the states as they are.
    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def agent_id(self) -> str:
        return self.node.agent_id

    @property
    def timeout_seconds(self) -> float | None:
        return self.node.timeout_policy.timeout_seconds

    def snapshot(self) -> NodeTrace:
        return NodeTrace(
            node_id=self.node.node_id,
            agent_id=self.node.agent_id,
            status=self.status,
            level=self.level,
            started_at=self.started_at,
            completed_at=self.completed_at,
            duration_ms=self.duration_ms,
            attempt_count=self.attempt_count,
            error=self.error,
            input_hash=self.input_hash,
            timeout_seconds=self.node.timeout_policy.timeout_seconds,
        )


class _StopRun(Exception):
    """Internal: the run stops at this level boundary (fail_fast / compensate)."""


class _Level:
    """The nodes of one level not started yet, and the worker tasks that start them."""

    def __init__(self, executor: Executor, node_ids: list[str]) -> None:
        self.executor = executor
        self.queue: deque[str] = deque(node_ids)
        self.workers: list[asyncio.Task[None]] = []
        self.unstarted = 0  # workers created that have not taken their first node yet
        self.check_scheduled = False

    def spawn(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            self.unstarted += 1
            self.workers.append(loop.create_task(self.executor._work(self), name="level-worker"))

    def check(self) -> None:
        """Runs once every worker has yielded: nodes still queued then mean workers are waiting."""
        self.check_scheduled = False
        waiting = len(self.queue) - self.unstarted
        if waiting > 0:
            self.spawn(waiting)


class Executor:
    """Runs one claimed execution to an end. Use once: `await executor.run()`."""

    def __init__(
        self,
        *,
        store: Store,
        registry: AgentRegistry,
        observer: EngineObserver,
        clock: Clock,
        plan: RunPlan,
        record: ExecutionRecord,
        parallel_limit: Callable[[], int],
        resume_from: RunData | None = None,
        checkpoint_base_delay: float = 0.1,
        checkpoint_max_delay: float = 5.0,
    ) -> None:
        """`resume_from`: what a resumed run continues from (None for a run's first start)."""
        self.store = store
        self.registry = registry
        self.observer = observer
        # Hot-path events are only built when someone listens (the bare base class ignores them).
        self._observing = type(observer) is not EngineObserver
        self.clock = clock
        self.dag = dag = plan.dag
        self.record = record
        self.execution_id = record.execution_id
        self.token = record.fencing_token
        self.options = record.options
        self.deterministic = record.options.deterministic_mode
        self.persist = record.options.checkpoint_enabled
        self.resumed = resume_from is not None
        self._plan = plan
        self.levels = plan.level_lists()
        dag_limit = dag.max_parallel_nodes

        def limit() -> int:
            live = parallel_limit()
            return min(live, dag_limit) if dag_limit is not None else live

        self.slots = Slots(limit)
        self.writer = RunWriter(
            store,
            self.execution_id,
            self.token,
            observer=observer,
            clock=clock,
            base_delay=checkpoint_base_delay,
            max_delay=checkpoint_max_delay,
            on_fatal=self._on_fatal,
        )
        self.input_data = record.input_data
        self._input_data_hash = sha256_hex(canonical_json(record.input_data))
        self.chain = ChainBuilder(
            genesis_hash(dag.dag_id, record.input_data), resume_from.chain if resume_from else []
        )
        self._finishing = False
        self.final_record: ExecutionRecord | None = None  # as stored by the final write, once it lands
        self.outputs: dict[str, Any] = {}
        # The output hash of every node in `outputs` (a skipped node's is NO_OUTPUT_HASH).
        self.output_hashes: dict[str, str] = {}
        self.states: dict[str, _NodeState] = {}
        previous = resume_from.traces if resume_from else {}
        for level_index, level in enumerate(self.levels):
            for node_id in level:
                self.states[node_id] = _NodeState(dag.nodes[node_id], level_index)
        self.skipped_from_checkpoint: list[str] = []
        for cp in resume_from.checkpoints if resume_from else []:
            if cp.status != "completed" or cp.node_id not in self.states:
                continue
            state = self.states[cp.node_id]
            old = previous.get(cp.node_id)
            state.status = "completed"
            state.output_hash = cp.output_hash
            state.input_hash = cp.input_hash
            state.completed_at = cp.created_at
            if old is not None:
                state.started_at, state.duration_ms = old.started_at, old.duration_ms
                state.attempt_count = old.attempt_count
            self.outputs[cp.node_id] = cp.output
            self.output_hashes[cp.node_id] = cp.output_hash
            self.skipped_from_checkpoint.append(cp.node_id)
        self.skipped_from_checkpoint.sort(key=lambda n: (self.states[n].level, n))
        self.completion_order: list[str] = []
        self._stop_mode: str | None = None
        self._stop_reason: str | None = None
        self._task: asyncio.Task[Any] | None = None
        self._node_tasks: dict[str, asyncio.Task[None]] = {}  # running node -> the task running it
        self._level: _Level | None = None  # the level being run by workers, if any
        self._level_failed = False
        self._processed: set[str] = set()  # nodes this run executed or skipped (sealed at their level)
        self.node_start_order: list[str] = []

    # -- public ------------------------------------------------------------------------------------

    @property
    def nodes_remaining(self) -> list[str]:
        return [n for level in self.levels for n in level if n not in self.outputs]

    def start(self) -> asyncio.Task[ExecutionRecord]:
        """Run in a background task (what the engine does)."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"execution:{self.execution_id}")
        return self._task

    @property
    def task(self) -> asyncio.Task[ExecutionRecord] | None:
        return self._task

    def stop(self, mode: str, reason: str) -> None:
        """Ask the run to stop: `cancel`, `interrupt` or `detach` (see module docstring)."""
        if self._stop_mode is None or mode == "detach":
            self._stop_mode, self._stop_reason = mode, reason
        if self._finishing:
            return  # the final status is being written; let it land
        if self._task is not None and not self._task.done():
            self._task.cancel(reason)

    def snapshot(self) -> dict[str, NodeTrace]:
        return {node_id: state.snapshot() for node_id, state in self.states.items()}

    # -- the run -----------------------------------------------------------------------------------

    async def run(self) -> ExecutionRecord:
        """Execute every level; return the final stored record (or the last known one if detached)."""
        if self._task is None:
            self._task = asyncio.current_task()
        self.observer.execution_started(
            ExecutionEvent(
                execution_id=self.execution_id,
                dag_id=self.dag.dag_id,
                dag_version=self.dag.version,
                status="running",
                at=self.clock.now(),
                started_at=self.record.started_at,
                timeout_seconds=self.record.timeout_seconds,
                resumed=self.resumed,
            )
        )
        self._log(
            "INFO",
            f"execution {'resumed' if self.resumed else 'started'}: {len(self.states)} nodes, "
            f"{len(self.levels)} levels, {len(self.skipped_from_checkpoint)} from checkpoints",
        )
        status, error = "completed", None
        try:
            if self.persist and self.resumed:
                # Reset what the previous run left behind for nodes that will run again.
                for node_id, state in self.states.items():
                    if node_id not in self.outputs:
                        self.writer.trace(state.snapshot())
            try:
                for level_index, level in enumerate(self.levels):
                    await self._run_level(level_index, level)
            except _StopRun:
                pass
            status, error = self._final_status()
            if self.dag.on_failure == "compensate" and status == "failed":
                compensated = await self._compensate()
                if compensated:
                    error = f"{error}; compensated: {', '.join(compensated)}"
        except asyncio.CancelledError:
            mode = self._stop_mode or "interrupt"
            self._finishing = mode != "detach"  # a second stop() must not cancel the final write
            self._cancel_running(f"execution {mode}: {self._stop_reason or 'stopped'}")
            if mode == "detach":
                await self.writer.close()
                self._finished_event("interrupted", self._stop_reason)
                return self.record
            status = "cancelled" if mode == "cancel" else "interrupted"
            error = self._stop_reason
            uncancel = asyncio.current_task()
            if uncancel is not None:
                uncancel.uncancel()
        except (StaleFencingToken, InvalidState) as exc:
            self._cancel_running(f"execution stopped: {exc}")
            await self.writer.close()
            self._finished_event("interrupted", str(exc))
            return self.record
        return await self._finish(status, error)

    async def _finish(self, status: str, error: str | None) -> ExecutionRecord:
        """Write the final status together with everything still queued, in one fenced transaction.

        Retried a few times with backoff when the store fails; if it still fails the run is left as
        stored (`running`), reported `interrupted` to the observer, and resumable by a takeover.
        """
        self._finishing = True
        if self.writer.fatal is not None:
            await self.writer.close()
            self._finished_event("interrupted", str(self.writer.fatal))
            return self.record
        await self.writer.drain(within=self.store.timeout_seconds)
        if self.persist:
            batch = self.writer.take_pending()
        else:
            # Without checkpoints nothing was written along the way: the final states themselves (the
            # run is over; they no longer change) and the whole chain go in as one run document.
            batch = WriteBatch(
                traces=list(self.states.values()), provenance=self.chain.entries, whole_run=True
            )
        attempt = 0
        while True:
            attempt += 1
            try:
                final = await self.store.executions.finish(
                    self.execution_id, self.token, status=status, error=error, batch=batch
                )
                break
            except (StaleFencingToken, InvalidState) as exc:
                self.writer.resolve_waiters(exc)
                self._finished_event("interrupted", str(exc))
                return self.record
            except OrchestratorError as exc:
                if attempt >= FINISH_ATTEMPTS:
                    self.writer.resolve_waiters(exc)
                    self._log("ERROR", f"could not record the end of the run ({status}): {exc}")
                    self._finished_event("interrupted", str(exc))
                    return self.record
                delay = backoff_delay(attempt, self.writer.base_delay, self.writer.max_delay)
                self._log(
                    "ERROR", f"recording the end of the run failed (attempt {attempt}), retry in {delay}s"
                )
                await self.clock.sleep(delay)
        self.writer.resolve_waiters()
        self.record = self.final_record = final
        self._finished_event(final.status, final.error)
        return final

    def _final_status(self) -> tuple[str, str | None]:
        failed = [n for n, s in self.states.items() if s.status in FAILED_NODE_STATUSES]
        if failed:
            first = self.states[failed[0]]
            detail = f"node {failed[0]} {first.status}: {first.error}"
            more = f" (+{len(failed) - 1} more: {', '.join(failed[1:])})" if len(failed) > 1 else ""
            return "failed", detail + more
        return "completed", None

    async def _run_level(self, level_index: int, level: list[str]) -> None:
        self._level_failed = False
        to_run: list[str] = []
        outputs = self.outputs
        dependencies = self._plan.dependencies
        for node_id in level:
            state = self.states[node_id]
            if node_id in outputs and state.status == "completed":
                continue
            self._processed.add(node_id)
            # After the barrier every dependency is terminal; only completed nodes and nodes skipped
            # on timeout (`on_timeout=skip`, output None) have an entry in `outputs`.
            if dependencies[node_id] <= outputs.keys():
                to_run.append(node_id)
                continue
            blocked = next(dep for dep in state.node.depends_on if dep not in outputs)
            state.status = "skipped"
            state.error = f"upstream {blocked} did not complete ({self.states[blocked].status})"
            state.completed_at = self.clock.now()
            if self.persist:
                self.writer.trace(state.snapshot())
        if len(to_run) == 1:
            # A level of one node runs in the execution's own task: no siblings to cancel, nothing
            # to wait for but the node (chains are levels of one).
            assert self._task is not None
            await self._run_node(to_run[0], self._task)
        elif to_run:
            await self._run_workers(to_run)
        # Every completed node of the level already waited for its checkpoint commit, so the level may
        # advance. The level's provenance records ride along with the next commit: if the process dies
        # first, a resume re-seals this (fully checkpointed) level in the same order.
        self._seal_level(level)
        if self._level_failed and self.dag.on_failure in ("fail_fast", "compensate"):
            raise _StopRun

    async def _run_workers(self, to_run: list[str]) -> None:
        """Run the level's nodes in worker tasks, in node-id order, and wait for all of them.

        One worker takes the nodes one after the other for as long as they finish without waiting
        (an agent that returns at once costs no task of its own). When a node does wait, `_Level.check`
        (scheduled with `call_soon`, so it runs only once the worker has yielded) starts one more
        worker per node still queued: from then on every waiting node has a task, as if each node had
        been started in its own task, and `Slots` keeps at most the limit running.
        """
        self._level = level = _Level(self, to_run)
        level.spawn(1)
        results: list[BaseException | None] = []
        finished = 0
        try:
            while finished < len(level.workers):  # workers started while we wait join the wait
                batch = level.workers[finished:]
                finished = len(level.workers)
                results.extend(await asyncio.gather(*batch, return_exceptions=True))
        except asyncio.CancelledError:
            level.queue.clear()
            for worker in level.workers:
                worker.cancel()
            await asyncio.gather(*level.workers, return_exceptions=True)
            raise
        finally:
            self._node_tasks.clear()
            self._level = None
        for result in results:
            # Workers cancelled by fail_fast end as CancelledError; anything else is a real error (a
            # fenced-out checkpoint write), which stops the run.
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    async def _work(self, level: _Level) -> None:
        """One worker: take the level's next node and run it, until none is left."""
        level.unstarted -= 1
        task = asyncio.current_task()
        assert task is not None
        queue = level.queue
        while queue:
            node_id = queue.popleft()
            if not level.check_scheduled:
                level.check_scheduled = True
                asyncio.get_running_loop().call_soon(level.check)
            self._node_tasks[node_id] = task
            try:
                await self._run_node(node_id, task)
            finally:
                self._node_tasks.pop(node_id, None)

    def _seal_level(self, level: list[str]) -> None:
        recorded = self.chain.recorded_nodes()
        new = []
        for node_id in level:
            state = self.states[node_id]
            if state.status not in TERMINAL_NODE_STATUSES:
                continue
            if node_id in recorded and node_id not in self._processed:
                continue  # sealed by the run before a resume, not run again here
            new.append(
                self.chain.append(
                    node_id,
                    state.input_hash or NO_OUTPUT_HASH,
                    state.output_hash or NO_OUTPUT_HASH,
                    state.status,
                )
            )
        if new and self.persist:
            self.writer.add_provenance(new)

    def _cancel_running(self, reason: str) -> None:
        now = self.clock.now()
        for task in self._node_tasks.values():
            task.cancel(reason)
        for state in self.states.values():
            if state.status == "running":
                state.status = "cancelled"
                state.error = reason
                state.completed_at = now
                if state.started_at is not None:
                    state.duration_ms = (self.clock.monotonic() - state.started_mono) * 1000
                if self.persist:
                    self.writer.trace(state.snapshot())

    def _on_fatal(self, exc: BaseException) -> None:
        self._log("ERROR", f"execution lost: {exc}; stopping without further writes")
        self.stop("detach", str(exc))

    # -- one node ----------------------------------------------------------------------------------

    async def _run_node(self, node_id: str, task: asyncio.Task[Any]) -> None:
        """Run one node to its end (retries included) in `task`, the task this runs in."""
        state = self.states[node_id]
        node = state.node
        upstream = {dep: self.outputs.get(dep) for dep in node.depends_on}
        state.input_hash = self._plan.input_hashers[node_id](self._input_data_hash, self.output_hashes)
        rng = None
        policy = node.retry_policy
        timeout = node.timeout_policy.timeout_seconds
        attempt = 0
        first = True
        while True:
            attempt += 1
            if not self.slots.try_acquire():  # the common case needs no coroutine
                await self.slots.acquire()
            try:
                if first:
                    first = False
                    self.node_start_order.append(node_id)
                    state.status = "running"
                    state.started_at = now = self.clock.now()
                    state.started_mono = self.clock.monotonic()
                    state.error = None
                    if self.persist:
                        self.writer.trace(state.snapshot())
                else:
                    now = self.clock.now()
                state.attempt_count = attempt
                outcome, value, exc = await self._attempt(state, attempt, upstream, timeout, now, task)
            finally:
                self.slots.release()
            if exc is None:
                self._completed(state)
                if self.persist:  # the node is done only once its checkpoint is committed
                    await self._save_checkpoint(state, value)
                self.outputs[node_id] = value
                self.output_hashes[node_id] = state.output_hash or NO_OUTPUT_HASH
                self.completion_order.append(node_id)
                return
            if attempt <= policy.max_retries and is_retryable(policy, exc):
                if rng is None:
                    rng = jitter_rng(self.execution_id, node_id, self.deterministic)
                delay = retry_delay(policy, attempt, rng)
                self.observer.node_retry(
                    RetryEvent(
                        execution_id=self.execution_id,
                        dag_id=self.dag.dag_id,
                        node_id=node_id,
                        agent_id=node.agent_id,
                        attempt=attempt,
                        delay_seconds=delay,
                        error=describe_error(exc),
                        at=self.clock.now(),
                    )
                )
                state.error = describe_error(exc)
                if self.persist:
                    self.writer.trace(state.snapshot())
                self._log(
                    "WARNING",
                    f"attempt {attempt} failed ({describe_error(exc)}); retry in {delay:.3f}s",
                    node_id=node_id,
                    agent_id=node.agent_id,
                )
                if delay > 0:
                    await self.clock.sleep(delay)
                continue
            await self._failed(state, exc, outcome)
            return

    async def _attempt(
        self,
        state: _NodeState,
        attempt: int,
        upstream: dict[str, Any],
        timeout_s: float | None,
        now: datetime,
        task: asyncio.Task[Any],
    ) -> tuple[str, Any, BaseException | None]:
        node = state.node
        deadline = now + timedelta(seconds=timeout_s) if timeout_s is not None else None
        ctx = AgentContext(
            execution_id=self.execution_id,
            dag_id=self.dag.dag_id,
            node_id=node.node_id,
            agent_id=node.agent_id,
            attempt=attempt,
            params=node.params,
            input_data=self.input_data,
            upstream=upstream,
            deadline=deadline,
            observer=self.observer,
            now=self.clock.now,
        )
        if self._observing:
            self.observer.node_attempt_started(
                NodeAttemptEvent(
                    self.execution_id, self.dag.dag_id, node.node_id, node.agent_id, attempt, now
                )
            )
        started = self.clock.monotonic()
        exc: BaseException | None = None
        value: Any = None
        outcome = "completed"
        try:
            if timeout_s is None:
                value = await self.registry.invoke(ctx, task)
            else:
                try:
                    async with asyncio.timeout(timeout_s) as scope:
                        value = await self.registry.invoke(ctx, task)
                except TimeoutError as timeout_exc:
                    if not scope.expired():
                        raise
                    raise NodeTimeout(
                        f"node {node.node_id} attempt {attempt} exceeded {timeout_s}s "
                        f"(on_timeout={node.timeout_policy.on_timeout})"
                    ) from timeout_exc
            try:
                state.output_hash = NO_OUTPUT_HASH if value is None else sha256_hex(canonical_json(value))
            except (TypeError, ValueError) as json_exc:
                raise AgentOutputError(
                    f"agent {node.agent_id} returned a non-JSON value: {json_exc}"
                ) from None
        except asyncio.CancelledError:
            self._attempt_finished(state, attempt, started, "cancelled", None)
            raise
        except Exception as error:  # agent code may raise anything; it is recorded, never propagated
            exc = error
            if isinstance(error, NodeTimeout):
                outcome = "timed_out"
                self.observer.node_timeout(
                    NodeTimeoutEvent(
                        execution_id=self.execution_id,
                        dag_id=self.dag.dag_id,
                        node_id=node.node_id,
                        agent_id=node.agent_id,
                        attempt=attempt,
                        timeout_seconds=timeout_s or 0.0,
                        on_timeout=node.timeout_policy.on_timeout,
                        at=self.clock.now(),
                    )
                )
            else:
                outcome = "restarted" if isinstance(error, AgentRestarted) else "failed"
        self._attempt_finished(state, attempt, started, outcome, None if exc is None else describe_error(exc))
        return outcome, value, exc

    def _attempt_finished(
        self, state: _NodeState, attempt: int, started: float, outcome: str, error: str | None
    ) -> None:
        if not self._observing:
            return
        node = state.node
        self.observer.node_attempt_finished(
            NodeAttemptEvent(
                execution_id=self.execution_id,
                dag_id=self.dag.dag_id,
                node_id=node.node_id,
                agent_id=node.agent_id,
                attempt=attempt,
                at=self.clock.now(),
                outcome=outcome,
                duration_seconds=self.clock.monotonic() - started,
                error=error,
            )
        )

    def _completed(self, state: _NodeState) -> None:
        state.status = "completed"
        state.error = None
        state.completed_at = self.clock.now()
        state.duration_ms = (self.clock.monotonic() - state.started_mono) * 1000

    async def _save_checkpoint(self, state: _NodeState, value: Any) -> None:
        assert state.completed_at is not None
        checkpoint = CheckpointRecord(
            execution_id=self.execution_id,
            node_id=state.node.node_id,
            status="completed",
            output=value,
            input_hash=state.input_hash or "",
            output_hash=state.output_hash or NO_OUTPUT_HASH,
            created_at=state.completed_at,
        )
        await self.writer.save_checkpoint(checkpoint, state.snapshot())

    async def _failed(self, state: _NodeState, exc: BaseException, outcome: str) -> None:
        node = state.node
        state.completed_at = self.clock.now()
        state.duration_ms = (self.clock.monotonic() - state.started_mono) * 1000
        state.error = describe_error(exc)
        state.output_hash = None
        on_timeout = node.timeout_policy.on_timeout
        if isinstance(exc, NodeTimeout) and on_timeout == "skip":
            state.status = "skipped"
            self.outputs[node.node_id] = None
            self.output_hashes[node.node_id] = NO_OUTPUT_HASH
            self._log(
                "WARNING",
                f"node timed out and was skipped: {state.error}",
                node_id=node.node_id,
                agent_id=node.agent_id,
            )
        else:
            state.status = "timed_out" if isinstance(exc, NodeTimeout) else "failed"
            if isinstance(exc, NodeTimeout) and on_timeout == "compensate":
                note = await self._run_compensation(node, None)
                state.error = f"{state.error}; {note}"
            self._log(
                "ERROR", f"node {state.status}: {state.error}", node_id=node.node_id, agent_id=node.agent_id
            )
            self._level_failed = True
            if self.dag.on_failure in ("fail_fast", "compensate"):
                for other_id, task in list(self._node_tasks.items()):
                    other = self.states[other_id]
                    if (
                        other_id != node.node_id
                        and not task.done()
                        and other.status in ("pending", "running")
                    ):
                        task.cancel(f"fail_fast: node {node.node_id} {state.status}")
                        self._mark_cancelled(
                            other_id, f"cancelled: node {node.node_id} {state.status} (fail_fast)"
                        )
                if self._level is not None:  # nodes not started yet never start
                    while self._level.queue:
                        self._mark_cancelled(
                            self._level.queue.popleft(),
                            f"cancelled: node {node.node_id} {state.status} (fail_fast)",
                        )
        if self.persist:
            self.writer.trace(state.snapshot())

    def _mark_cancelled(self, node_id: str, reason: str) -> None:
        state = self.states[node_id]
        if state.status in TERMINAL_NODE_STATUSES:
            return
        state.status = "cancelled"
        state.error = reason
        state.completed_at = self.clock.now()
        if state.started_at is not None:
            state.duration_ms = (self.clock.monotonic() - state.started_mono) * 1000
        if self.persist:
            self.writer.trace(state.snapshot())

    # -- compensation ------------------------------------------------------------------------------

    async def _compensate(self) -> list[str]:
        """Run compensation agents of completed nodes in reverse completion order."""
        done = []
        for node_id in reversed(self.completion_order):
            node = self.dag.nodes[node_id]
            if node.compensation is None:
                continue
            note = await self._run_compensation(node, self.outputs.get(node_id))
            done.append(node_id if note.startswith("compensated") else f"{node_id} ({note})")
        return done

    async def _run_compensation(self, node: Node, output: Any) -> str:
        if node.compensation is None:
            return "no compensation agent"
        ctx = AgentContext(
            execution_id=self.execution_id,
            dag_id=self.dag.dag_id,
            node_id=node.node_id,
            agent_id=node.compensation,
            attempt=1,
            params=node.params,
            input_data=self.input_data,
            upstream={dep: self.outputs.get(dep) for dep in node.depends_on},
            deadline=None,
            observer=self.observer,
            now=self.clock.now,
            node_output=output,
            compensating=True,
        )
        try:
            await self.registry.invoke(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed compensation is reported, the others still run
            self._log(
                "ERROR",
                f"compensation {node.compensation} failed: {describe_error(exc)}",
                node_id=node.node_id,
                agent_id=node.compensation,
            )
            return f"compensation failed: {describe_error(exc)}"
        self._log(
            "INFO", f"compensated by {node.compensation}", node_id=node.node_id, agent_id=node.compensation
        )
        return f"compensated by {node.compensation}"

    # -- events ------------------------------------------------------------------------------------

    def _finished_event(self, status: str, error: str | None) -> None:
        self.observer.execution_finished(
            ExecutionEvent(
                execution_id=self.execution_id,
                dag_id=self.dag.dag_id,
                dag_version=self.dag.version,
                status=status,
                at=self.clock.now(),
                started_at=self.record.started_at,
                timeout_seconds=self.record.timeout_seconds,
                error=error,
                resumed=self.resumed,
            )
        )

    def _log(
        self, level: str, message: str, *, node_id: str | None = None, agent_id: str | None = None
    ) -> None:
        self.observer.log(
            LogEvent(
                level=level,
                message=message,
                at=self.clock.now(),
                execution_id=self.execution_id,
                node_id=node_id,
                agent_id=agent_id,
            )
        )
