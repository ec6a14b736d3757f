"""Runs one execution to its end: the levels in order, stopping, compensating, the final write.

Where it sits: `engine.Engine._launch` builds one `Executor` per run started (or resumed) on this
replica and runs `Executor.run()` in a background task; `Engine.cancel/interrupt/detach` call
`Executor.stop`. The executor assembles the run's parts over one `run_state.RunState`:

    levels.LevelRunner      levels, the barrier, worker tasks, `on_failure`, sealing the chain
    nodes.NodeRunner        one node: attempts, timeouts, retries, its checkpoint
    compensation.Compensator  compensation agents
    checkpoints.RunWriter   batched, fenced writes of traces, checkpoints and chain records

and itself decides how the run ends and writes that end (`_finish`). Semantics the runbook depends on:

- Within a level at most `min(dag.max_parallel_nodes, live limit)` attempts run at once (`Slots`;
  `Engine.set_max_parallel_nodes` calls `set_parallel_limit` of every running run).
- `on_failure`: `fail_fast` cancels the failed node's running siblings and stops after the level;
  `continue` runs everything not downstream of a failure (those nodes end `skipped`) and the run ends
  `failed`; `compensate` stops like `fail_fast`, then runs the `compensation` agents of completed nodes
  in reverse completion order.
- `stop("cancel")` cancels running nodes at once: they end `cancelled`, the run `cancelled`, the
  checkpoints stay. `stop("interrupt")` is the same with status `interrupted`. `stop("detach")` stops
  without writing (ownership lost). The DAG-level `execution_timeout_seconds` is never enforced here.
- The end is written in one fenced transaction with everything still queued (a run without
  checkpoints writes its whole trace and chain there, as one run document); a failing write is retried
  a few times, after which the run stays `running` in the store, resumable by a takeover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gl_common.clock import Clock
from orchestrator_core.agents import AgentRegistry
from orchestrator_core.checkpoints import RunWriter
from orchestrator_core.compensation import Compensator
from orchestrator_core.errors import InvalidState, OrchestratorError, StaleFencingToken
from orchestrator_core.events import EngineObserver, ExecutionEvent
from orchestrator_core.levels import LevelRunner, StopRun
from orchestrator_core.nodes import NodeRunner, ignore_failure
from orchestrator_core.plan import RunPlan
from orchestrator_core.policies import backoff_delay
from orchestrator_core.records import ExecutionRecord, NodeTrace
from orchestrator_core.run_state import FAILED_NODE_STATUSES, NodeState, RunState, Slots
from orchestrator_core.signals import NO_SIGNALS, NodeSignals
from orchestrator_core.store import RunData, Store, WriteBatch

FINISH_ATTEMPTS = 5  # tries to record a run's final status before giving up (the run stays resumable)


class Executor:
    """Runs one claimed execution to an end. Use once: `await executor.run()` (or `start()`)."""

    __slots__ = (
        "_finishing",
        "_stop_mode",
        "_stop_reason",
        "_task",
        "chain",
        "clock",
        "compensator",
        "completion_order",
        "dag",
        "execution_id",
        "final_record",
        "level_runner",
        "levels",
        "node_start_order",
        "nodes",
        "observer",
        "outputs",
        "persist",
        "record",
        "resumed",
        "run_state",
        "skipped_from_checkpoint",
        "slots",
        "states",
        "store",
        "token",
        "writer",
    )

    def __init__(
        self,
        *,
        store: Store,
        registry: AgentRegistry,
        observer: EngineObserver,
        clock: Clock,
        plan: RunPlan,
        record: ExecutionRecord,
        parallel_limit: int,
        resume_from: RunData | None = None,
        checkpoint_base_delay: float = 0.1,
        checkpoint_max_delay: float = 5.0,
        signals: NodeSignals = NO_SIGNALS,
    ) -> None:
        """`parallel_limit`: the live node parallelism limit now; `resume_from`: what a resumed run
        continues from (None for a run's first start)."""
        self.store = store
        self.observer = observer
        self.clock = clock
        self.dag = plan.dag
        self.record = record
        self.execution_id = record.execution_id
        self.token = record.fencing_token
        self.persist = record.options.checkpoint_enabled
        self.resumed = resume_from is not None
        self.levels = plan.levels
        self.slots = Slots(self._within_dag(parallel_limit))
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
        self.run_state = run = RunState(
            plan=plan,
            record=record,
            registry=registry,
            observer=observer,
            clock=clock,
            writer=self.writer,
            slots=self.slots,
            resume_from=resume_from,
            signals=signals,
        )
        self.compensator = Compensator(run)
        self.nodes = NodeRunner(run, self.compensator)
        self.level_runner = LevelRunner(run, self.nodes)
        # The run's live state, shared with its parts (tests and the engine read it).
        self.states: dict[str, NodeState] = run.states
        self.outputs: dict[str, Any] = run.outputs
        self.chain = run.chain
        self.skipped_from_checkpoint: list[str] = run.skipped_from_checkpoint
        self.completion_order: list[str] = run.completion_order
        self.node_start_order: list[str] = run.node_start_order
        self.final_record: ExecutionRecord | None = None  # as stored by the final write, once it lands
        self._finishing = False
        self._stop_mode: str | None = None
        self._stop_reason: str | None = None
        self._task: asyncio.Task[Any] | None = None

    def _within_dag(self, live: int) -> int:
        """The run's node parallelism: the live limit, within the DAG's own."""
        dag_limit = self.dag.max_parallel_nodes
        return min(live, dag_limit) if dag_limit is not None else live

    def set_parallel_limit(self, live: int) -> None:
        """The live limit changed: applies at once (running nodes are never stopped)."""
        self.slots.set_limit(self._within_dag(live))

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
        try:
            return await self._run()
        finally:
            self._unlink()

    def _unlink(self) -> None:
        """The run is over: drop the two callbacks that tie its parts into reference cycles (the
        writer's `on_fatal`, the node runner's `on_failed`), so that the run's objects (a state and a
        chain record per node) are freed as soon as the engine lets go of the executor, instead of
        waiting for the cyclic collector, whose collections then traverse them all."""
        self.writer.on_fatal = None
        self.nodes.on_failed = ignore_failure

    async def _run(self) -> ExecutionRecord:
        if self._task is None:
            self._task = asyncio.current_task()
        assert self._task is not None
        self._event(self.observer.execution_started, "running", None)
        self.run_state.log(
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
                for level in self.run_state.plan.levels:
                    await self.level_runner.run_level(level, self._task)
            except StopRun:
                pass
            status, error = self._final_status()
            if self.dag.on_failure == "compensate" and status == "failed":
                compensated = await self.compensator.compensate_run()
                if compensated:
                    error = f"{error}; compensated: {', '.join(compensated)}"
        except asyncio.CancelledError:
            mode = self._stop_mode or "interrupt"
            self._finishing = mode != "detach"  # a second stop() must not cancel the final write
            self.level_runner.cancel_running(f"execution {mode}: {self._stop_reason or 'stopped'}")
            if mode == "detach":
                return await self._abandon(self._stop_reason)
            status = "cancelled" if mode == "cancel" else "interrupted"
            error = self._stop_reason
            uncancel = asyncio.current_task()
            if uncancel is not None:
                uncancel.uncancel()
        except (StaleFencingToken, InvalidState) as exc:
            self.level_runner.cancel_running(f"execution stopped: {exc}")
            return await self._abandon(str(exc))
        return await self._finish(status, error)

    async def _abandon(self, reason: str | None) -> ExecutionRecord:
        """Stop without writing anything more (the run is another owner's, or not ours to end)."""
        await self.writer.close()
        self._event(self.observer.execution_finished, "interrupted", reason)
        return self.record

    async def _finish(self, status: str, error: str | None) -> ExecutionRecord:
        """Write the final status together with everything still queued, in one fenced transaction.

        Retried a few times with backoff when the store fails; if it still fails the run is left as
        stored (`running`), reported `interrupted` to the observer, and resumable by a takeover.
        """
        self._finishing = True
        if self.writer.fatal is not None:
            return await self._abandon(str(self.writer.fatal))
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
                final = await self.store.commits.finish(
                    self.execution_id, self.token, status=status, error=error, batch=batch
                )
                break
            except (StaleFencingToken, InvalidState) as exc:
                self.writer.resolve_waiters(exc)
                self._event(self.observer.execution_finished, "interrupted", str(exc))
                return self.record
            except OrchestratorError as exc:
                if attempt >= FINISH_ATTEMPTS:
                    self.writer.resolve_waiters(exc)
                    self.run_state.log("ERROR", f"could not record the end of the run ({status}): {exc}")
                    self._event(self.observer.execution_finished, "interrupted", str(exc))
                    return self.record
                delay = backoff_delay(attempt, self.writer.base_delay, self.writer.max_delay)
                self.run_state.log(
                    "ERROR", f"recording the end of the run failed (attempt {attempt}), retry in {delay}s"
                )
                await self.clock.sleep(delay)
        self.writer.resolve_waiters()
        self.record = self.final_record = final
        if final.status == "failed":
            await self._record_failure()
        self._event(self.observer.execution_finished, final.status, final.error)
        return final

    async def _record_failure(self) -> None:
        """Count the node the run failed at into its failure streak (how a resume loop shows); a
        store failure is logged with the run, the run's end stands."""
        failed = next((n for n, s in self.states.items() if s.status in FAILED_NODE_STATUSES), None)
        if failed is None:
            return
        try:
            await self.store.executions.record_failure(self.execution_id, failed)
        except OrchestratorError as exc:
            self.run_state.log(
                "ERROR", f"could not record the failure at node {failed}: {exc}", node_id=failed
            )

    def _final_status(self) -> tuple[str, str | None]:
        failed = [n for n, s in self.states.items() if s.status in FAILED_NODE_STATUSES]
        if failed:
            first = self.states[failed[0]]
            detail = f"node {failed[0]} {first.status}: {first.error}"
            more = f" (+{len(failed) - 1} more: {', '.join(failed[1:])})" if len(failed) > 1 else ""
            return "failed", detail + more
        return "completed", None

    def _on_fatal(self, exc: BaseException) -> None:
        self.run_state.log("ERROR", f"execution lost: {exc}; stopping without further writes")
        self.stop("detach", str(exc))

    def _event(self, emit: Callable[[ExecutionEvent], None], status: str, error: str | None) -> None:
        emit(
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
