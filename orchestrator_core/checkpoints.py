"""Checkpoint and trace persistence for one running execution: batched, fenced, retried, blocking.

Where it sits: `executor.Executor` owns one `RunWriter` per run. A completed node calls
`await writer.save_checkpoint(...)`, which returns only once the checkpoint is committed — so the
node (and therefore its level's barrier) does not count as done before its result is durable; with no
commit under way and a store that can commit at once, the commit runs right there, in the node's task.
(A node of a wider level calls `queue_checkpoint` instead and counts as done once the returned future
is; its level's barrier waits for those futures: `nodes.NodeRunner.done_when_durable`.) Trace
updates (`writer.trace`) and provenance records (`writer.add_provenance`) are write-behind and ride
along in the next commit; `flush()` waits for everything queued.

Batching: writes queued while a commit is in flight go into the next commit, so a burst of 2,000
completions costs a handful of transactions instead of 2,000.

Failures: a failed commit (`StoreError`) is counted (`checkpoint_operation(save, error)` to the
observer, plus a log line) and retried with exponential backoff, forever — until it succeeds or the
run is stopped; meanwhile waiting nodes stay blocked, so progress stops rather than a result being lost.
`StaleFencingToken`/`InvalidState` (another owner took the run, or it was cancelled elsewhere) are not
retried: every waiter gets the error and `on_fatal` tells the executor to stop without writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from gl_common.clock import Clock
from orchestrator_core.errors import InvalidState, OrchestratorError, StaleFencingToken, StoreError
from orchestrator_core.events import CheckpointEvent, EngineObserver, LogEvent
from orchestrator_core.policies import backoff_delay
from orchestrator_core.records import CheckpointRecord, NodeTrace, ProvenanceEntry
from orchestrator_core.store import Store, WriteBatch
from orchestrator_core.store.rundata import TraceFields


class LiveTrace(TraceFields, Protocol):
    """A node's live state (`run_state.NodeState`): its trace is taken when its batch is (a snapshot,
    or the state itself for a commit made at once)."""

    def snapshot(self) -> NodeTrace: ...


class RunWriter:
    """Serialises one execution's writes into batched, fenced transactions."""

    __slots__ = (
        "_checkpoints",
        "_committing",
        "_provenance",
        "_task",
        "_traces",
        "_waiters",
        "base_delay",
        "clock",
        "execution_id",
        "failures",
        "fatal",
        "max_delay",
        "observer",
        "observing",
        "on_fatal",
        "store",
        "token",
    )

    def __init__(
        self,
        store: Store,
        execution_id: str,
        token: int,
        *,
        observer: EngineObserver,
        clock: Clock,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.execution_id = execution_id
        self.token = token
        self.observer = observer
        # A commit's event is only built when someone listens (the bare base class ignores them).
        self.observing = type(observer) is not EngineObserver
        self.clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.on_fatal = on_fatal
        # Per node, its latest trace: a snapshot, or the live node state (snapshotted when taken).
        self._traces: dict[str, NodeTrace | LiveTrace] = {}
        self._checkpoints: list[CheckpointRecord] = []
        self._provenance: list[ProvenanceEntry] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._committing = False  # the writer task is inside a commit
        self.fatal: BaseException | None = None
        self.failures = 0

    # -- queueing ----------------------------------------------------------------------------------

    def trace(self, trace: NodeTrace | LiveTrace) -> None:
        """Queue a trace update (write-behind; the latest state of a node wins). A live node state is
        read when the batch is taken for its commit, as the node is then."""
        self._traces[trace.node_id] = trace
        self._kick()

    def add_provenance(self, entries: list[ProvenanceEntry]) -> None:
        self._provenance.extend(entries)
        self._kick()

    async def save_checkpoint(self, checkpoint: CheckpointRecord, trace: NodeTrace | LiveTrace) -> None:
        """Queue a checkpoint and wait until it is committed (raises the fatal error if fenced out).

        With no commit under way, it is first tried at once in the caller's task (`_commit_now`): no
        writer task, no turn of the event loop. For a node that is alone at its level (nobody could
        join its commit); the nodes of a wider level use `queue_checkpoint` and commit together.
        """
        if self.fatal is not None:
            raise self.fatal
        self._checkpoints.append(checkpoint)
        self._traces[trace.node_id] = trace
        if not self._commit_now():
            await self._waiter()

    def queue_checkpoint(
        self, checkpoint: CheckpointRecord, trace: NodeTrace | LiveTrace
    ) -> asyncio.Future[None]:
        """Queue a checkpoint; the future is done once it is committed (or with the fatal error if
        fenced out; cancelled if the writer is closed first). Raises the fatal error at once if any."""
        if self.fatal is not None:
            raise self.fatal
        self._checkpoints.append(checkpoint)
        self._traces[trace.node_id] = trace
        return self._waiter()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if not (self._traces or self._checkpoints or self._provenance) and (
            self._task is None or self._task.done()
        ):
            if self.fatal is not None:
                raise self.fatal
            return
        await self._wait()

    def _commit_now(self) -> bool:
        """Commit everything queued now if the store can without waiting (`commits.write_batch_now`);
        False, with everything left queued, when it cannot or fails: the writer task then commits it
        as always (retrying, counting, stopping the run when fenced out)."""
        if self._committing:
            return False  # the writer task's commit is under way; ours joins the next one
        # Everything queued, node states as they are (no snapshots): this commit is made at once, in
        # this call, before anything can change them. It stays queued unless the commit is made.
        batch = WriteBatch(list(self._traces.values()), list(self._checkpoints), list(self._provenance))
        try:
            done = self.store.commits.write_batch_now(self.execution_id, self.token, batch)
        except OrchestratorError:
            done = False
        if not done:
            return False
        waiters = self._waiters
        self._traces, self._checkpoints, self._provenance, self._waiters = {}, [], [], []
        if batch.checkpoints and self.observing:
            self._event("ok", len(batch.checkpoints), None)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return True

    def take_pending(self) -> WriteBatch:
        """Hand over whatever is queued and not yet being written (used by the final status write)."""
        traces = [t if isinstance(t, NodeTrace) else t.snapshot() for t in self._traces.values()]
        batch = WriteBatch(traces, list(self._checkpoints), list(self._provenance))
        self._traces, self._checkpoints, self._provenance = {}, [], []
        return batch

    async def drain(self, within: float) -> None:
        """Let the flusher finish what it is doing (at most `within` seconds), then stop it.

        Whatever is still queued afterwards stays queued: the caller writes it with `take_pending()`
        in its final transaction and then calls `resolve_waiters()`.
        """
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=within)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def resolve_waiters(self, exc: BaseException | None = None) -> None:
        """Release everyone still waiting for a commit (after the final transaction, or on failure)."""
        for waiter in self._waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
        self._waiters = []

    async def close(self) -> None:
        """Stop the background flusher at once; waiters are cancelled (used when nothing may be written)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters = []

    def _requeue(self, batch: WriteBatch) -> None:
        newer = self._traces
        # `take_pending`'s batch: every trace in it is a snapshot
        self._traces = {t.node_id: t for t in batch.traces if isinstance(t, NodeTrace)}
        self._traces.update(newer)
        self._checkpoints = [*batch.checkpoints, *self._checkpoints]
        self._provenance = sorted([*batch.provenance, *self._provenance], key=lambda p: p.seq)

    # -- flushing ----------------------------------------------------------------------------------

    async def _wait(self) -> None:
        if self.fatal is not None:
            raise self.fatal
        await self._waiter()

    def _waiter(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick()
        return waiter

    def _kick(self) -> None:
        if self.fatal is None and (self._task is None or self._task.done()):
            self._task = task = asyncio.get_running_loop().create_task(
                self._run(), name=f"checkpoint-writer:{self.execution_id}"
            )
            task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        """Drop a flusher that ended (with its coroutine: ~1 KB per run that waits on a node)."""
        if self._task is task:
            self._task = None

    async def _run(self) -> None:
        while self._traces or self._checkpoints or self._provenance or self._waiters:
            await asyncio.sleep(0)  # let the rest of a completion burst queue up
            waiters, self._waiters = self._waiters, []
            batch = self.take_pending()
            self._committing = True
            try:
                if batch:
                    await self._commit(batch)
            except asyncio.CancelledError:
                # Stopped mid-commit (drain timed out, or the run is being torn down): put the batch and
                # its waiters back, so the run's final transaction writes them (writes are idempotent).
                self._requeue(batch)
                self._waiters = waiters + self._waiters
                raise
            except (StaleFencingToken, InvalidState) as exc:
                self.fatal = exc
                for waiter in waiters + self._waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                self._waiters = []
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return
            finally:
                self._committing = False
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _commit(self, batch: WriteBatch) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.store.commits.write_batch(self.execution_id, self.token, batch)
            except StoreError as exc:
                self.failures += 1
                delay = backoff_delay(attempt, self.base_delay, self.max_delay)
                self._event("error", len(batch.checkpoints), str(exc))
                self.observer.log(
                    LogEvent(
                        level="ERROR",
                        message=(
                            f"checkpoint save failed for {len(batch.checkpoints)} node(s) "
                            f"(attempt {attempt}), retrying in {delay:.2f}s: {exc}"
                        ),
                        at=self.clock.now(),
                        execution_id=self.execution_id,
                        extra={"operation": "save", "attempt": attempt},
                    )
                )
                await self.clock.sleep(delay)
                continue
            if batch.checkpoints and self.observing:
                self._event("ok", len(batch.checkpoints), None)
            return

    def _event(self, status: str, nodes: int, error: str | None) -> None:
        self.observer.checkpoint_operation(
            CheckpointEvent(
                execution_id=self.execution_id,
                operation="save",
                status=status,
                nodes=nodes,
                at=self.clock.now(),
                error=error,
            )
        )
