"""Level scheduling: one level at a time, the barrier, worker tasks, `on_failure`, sealing the chain.

Where it sits: `executor.Executor.run` calls `LevelRunner.run_level` for each level of the plan in
order; the level runner starts the level's nodes through `nodes.NodeRunner.run_node` and, once every node
of the level has ended, seals the level's provenance records (`provenance.ChainBuilder`). The node
runner calls back `node_failed` when a node fails, and the executor calls `cancel_running` when the
run is stopped.

- Level k+1 starts only when every node of level k has completed, been skipped, or failed per
  `on_failure` (`fail_fast` and `compensate` stop after the level: `StopRun`) — and every completed
  node's checkpoint is committed. A level of one node waits for its commit in the node; the nodes of a
  wider level queue theirs and go on (a worker is not held up by a commit, so a level of agents that
  return at once runs in one worker and one commit), and the level waits for them all at its barrier.
  One hung node therefore stalls the run at its level: by design.
- A node whose dependency did not complete (and was not skipped on timeout) is `skipped`.
- Nodes start in node-id order. A level of one node runs in the execution's own task; a wider level is
  run by worker tasks (`run_workers`): nodes that return without waiting share one worker, and every
  node that waits gets a task of its own, so a level behaves as if each node had its own task.
- A level's records are sealed after its barrier, in node-id order (never in completion order), so the
  same DAG and input give the same chain; a resumed run seals the levels it finishes.
"""

from __future__ import annotations

import asyncio
from collections import deque

from orchestrator_core.hashing import NO_OUTPUT_HASH
from orchestrator_core.nodes import NodeRunner
from orchestrator_core.run_state import TERMINAL_NODE_STATUSES, RunState


class StopRun(Exception):
    """The run stops at this level boundary (fail_fast / compensate)."""


class _Level:
    """The nodes of one level not started yet, and the worker tasks that start them."""

    def __init__(self, runner: LevelRunner, node_ids: list[str]) -> None:
        self.runner = runner
        self.queue: deque[str] = deque(node_ids)
        self.workers: list[asyncio.Task[None]] = []
        self.unstarted = 0  # workers created that have not taken their first node yet
        self.check_scheduled = False

    def spawn(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            self.unstarted += 1
            self.workers.append(loop.create_task(self.runner.work(self), name="level-worker"))

    def check(self) -> None:
        """Runs once every worker has yielded: nodes still queued then mean workers are waiting."""
        self.check_scheduled = False
        waiting = len(self.queue) - self.unstarted
        if waiting > 0:
            self.spawn(waiting)


class LevelRunner:
    """Runs the levels of one run (see the module docstring)."""

    __slots__ = ("_earlier", "_fresh", "_level", "_level_failed", "node_tasks", "nodes", "run")

    def __init__(self, run: RunState, nodes: NodeRunner) -> None:
        self.run = run
        self.nodes = nodes
        self.node_tasks: dict[str, asyncio.Task[None]] = {}  # running node -> the task running it
        self._level: _Level | None = None  # the level being run by workers, if any
        self._level_failed = False
        # A run that restored no node has outputs only of the levels it ran, one per node that
        # completed (or was skipped on timeout): while their count is the number of nodes in the
        # earlier levels (`_earlier`), every node of the next level may run.
        self._fresh = not run.outputs
        self._earlier = 0
        nodes.on_failed = self.node_failed

    async def run_level(self, level: tuple[str, ...], task: asyncio.Task[object]) -> None:
        """Run one level to its barrier in `task` (the execution's task); `StopRun` per `on_failure`."""
        run = self.run
        self._level_failed = False
        # Nothing restored, and every node of the earlier levels has an output: the whole level runs,
        # without a check per node.
        clear = self._fresh and len(run.outputs) == self._earlier
        to_run = list(level) if clear else self._runnable(level)
        self._earlier += len(level)
        if len(to_run) == 1:
            # A level of one node runs in the execution's own task: no siblings to cancel, nothing
            # to wait for but the node (chains are levels of one).
            await self.nodes.run_node(to_run[0], task)
        elif to_run:
            try:
                await self.run_workers(to_run)
            except BaseException:
                self.nodes.forget_deferred()
                raise
            await self.nodes.done_when_durable()  # each node is done once its own commit landed
        # Every completed node of the level is durable (its checkpoint is committed), so the level may
        # advance. The level's provenance records ride along with the next commit: if the process dies
        # first, a resume re-seals this (fully checkpointed) level in the same order.
        self.seal(level)
        if self._level_failed and run.dag.on_failure in ("fail_fast", "compensate"):
            raise StopRun

    def _runnable(self, level: tuple[str, ...]) -> list[str]:
        """The nodes of the level to run: not restored from a checkpoint, and every dependency
        completed (or skipped on timeout); the others are marked `skipped` here."""
        run = self.run
        to_run: list[str] = []
        outputs = run.outputs
        dependencies = run.plan.dependencies
        for node_id in level:
            state = run.states[node_id]
            if node_id in outputs and state.status == "completed":
                continue
            # After the barrier every dependency is terminal; only completed nodes and nodes skipped
            # on timeout (`on_timeout=skip`, output None) have an entry in `outputs`.
            if dependencies[node_id] <= outputs.keys():
                to_run.append(node_id)
                continue
            blocked = next(dep for dep in state.node.depends_on if dep not in outputs)
            run.end_node(
                state, "skipped", f"upstream {blocked} did not complete ({run.states[blocked].status})"
            )
        return to_run

    async def run_workers(self, to_run: list[str]) -> None:
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
            self.node_tasks.clear()
            self._level = None
        for result in results:
            # Workers cancelled by fail_fast end as CancelledError; anything else is a real error (a
            # fenced-out checkpoint write), which stops the run.
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    async def work(self, level: _Level) -> None:
        """One worker: take the level's next node and run it, until none is left."""
        level.unstarted -= 1
        task = asyncio.current_task()
        assert task is not None
        queue, node_tasks, run_node = level.queue, self.node_tasks, self.nodes.run_node
        while queue:
            node_id = queue.popleft()
            if not level.check_scheduled:
                level.check_scheduled = True
                asyncio.get_running_loop().call_soon(level.check)
            node_tasks[node_id] = task
            try:
                await run_node(node_id, task, defer_commit=True)
            finally:
                node_tasks.pop(node_id, None)

    def node_failed(self, node_id: str, status: str) -> None:
        """A node of the level failed: with `fail_fast`/`compensate`, its siblings stop at once."""
        self._level_failed = True
        if self.run.dag.on_failure not in ("fail_fast", "compensate"):
            return
        reason = f"cancelled: node {node_id} {status} (fail_fast)"
        for other_id, task in list(self.node_tasks.items()):
            other = self.run.states[other_id]
            if other_id != node_id and not task.done() and other.status in ("pending", "running"):
                task.cancel(f"fail_fast: node {node_id} {status}")
                self._mark_cancelled(other_id, reason)
        if self._level is not None:  # nodes not started yet never start
            while self._level.queue:
                self._mark_cancelled(self._level.queue.popleft(), reason)

    def _mark_cancelled(self, node_id: str, reason: str) -> None:
        state = self.run.states[node_id]
        if state.status not in TERMINAL_NODE_STATUSES:
            self.run.end_node(state, "cancelled", reason)

    def cancel_running(self, reason: str) -> None:
        """The run is stopping: cancel the running nodes' tasks and mark them `cancelled`."""
        for task in self.node_tasks.values():
            task.cancel(reason)
        for state in self.run.states.values():
            if state.status == "running":
                self.run.end_node(state, "cancelled", reason)

    def seal(self, level: tuple[str, ...]) -> None:
        """Append the level's chain records, in node-id order; queue them with the next commit."""
        run = self.run
        recorded = run.chain.continued_nodes()
        new = []
        for node_id in level:
            state = run.states[node_id]
            if state.status not in TERMINAL_NODE_STATUSES:
                continue
            if state.restored and node_id in recorded:
                continue  # sealed by the run before a resume, not run again here
            new.append(
                run.chain.append(
                    node_id,
                    state.input_hash or NO_OUTPUT_HASH,
                    state.output_hash or NO_OUTPUT_HASH,
                    state.status,
                )
            )
        if new and run.persist:
            run.writer.add_provenance(new)
