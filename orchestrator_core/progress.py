"""The engine's stuck-run signals: progress reports, the running nodes of every replica, and the
node-duration history (`node_history.NodeHistory`).

Where it sits: `engine.Engine` builds one `RunSignals` and gives it to every run it launches (the
`signals.NodeSignals` of its `RunState`): the node runner tells it when a node starts running
(into the run's `started_nodes`) and when one completes (`node_completed`, its duration into the history);
in-process agents report progress through `AgentContext.report_progress` (`progress`), HTTP agents
through `POST /executions/{id}/nodes/{node_id}/progress` (`report`). The service's maintenance tick
calls `flush`; the API reads `running_page`, `progress_of` and the history.

- Progress is kept in memory: per node, how many reports this replica took and the last one (time,
  message, fraction). Each flush adds them to the node's `running_nodes` row as deltas, so reports
  that reached several replicas (HTTP agents call through the Service) add up. A delta whose row is
  not written yet (its owner writes it on its own next tick) waits up to `MISSING_ROW_FLUSHES`
  flushes.
- Running nodes: this replica tracks the nodes its runs started and, at each flush, writes the new
  ones (and a new attempt of a retried one) and deletes those that ended: changes only, in one
  transaction, whatever the number of runs. Readers (`GET /running-nodes`, the trace) flush this
  replica first, then read the store, which holds every replica's running nodes as of its last tick.
- Each progress report is counted in `gl_orchestrator_node_progress_reports_total{dag_id,node_id}`
  (the observer's `node_progress`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from gl_common.clock import Clock
from orchestrator_core.errors import InvalidState, NotFound
from orchestrator_core.events import EngineObserver, NodeProgressEvent
from orchestrator_core.node_history import NodeHistory
from orchestrator_core.signals import NodeSignals, RunIdentity, RunningNode, check_progress
from orchestrator_core.store import Store
from orchestrator_core.store.signals import (
    DurationKey,
    NodeKey,
    ProgressDelta,
    RunningFilter,
    RunningPage,
    RunningPosition,
    RunningRow,
)

log = logging.getLogger(__name__)

MISSING_ROW_FLUSHES = 5  # flushes a progress delta waits for its node's row before it is dropped
PRUNE_EVERY = 20  # flushes between two prunes of rows no run answers for


@dataclass(eq=False, slots=True)
class _RunNodes:
    """The nodes one run of this replica started (a dict entry per node start: the run's hot path),
    which of them the store has a row of (at which attempt), and the reports this replica took."""

    run: RunIdentity
    states: dict[str, RunningNode] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    reports: dict[str, int] = field(default_factory=dict)

    def running(self, node_id: str) -> bool:
        state = self.states.get(node_id)
        return state is not None and state.status == "running"

    def count_report(self, node_id: str) -> int:
        self.reports[node_id] = count = self.reports.get(node_id, 0) + 1
        return count


@dataclass(frozen=True)
class ProgressAck:
    """The route's answer: when the report was taken, and the node's reports as far as this replica
    knows (its own, plus the store's for a node another replica runs)."""

    execution_id: str
    node_id: str
    progress_at: datetime
    reports: int


# What the engine says about a run's node when the run executes here: the node's status, or None
# when the run does not execute here; `NotFound` when its DAG has no such node.
LocalStatus = Callable[[str, str], str | None]


class RunSignals(NodeSignals):
    """The signals of every run of one engine (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        observer: EngineObserver,
        *,
        is_local: Callable[[RunIdentity], bool],
        local_status: LocalStatus,
    ) -> None:
        self.store = store
        self.clock = clock
        self.observer = observer
        self.history = NodeHistory(store.signals)
        self._is_local = is_local
        self._local_status = local_status
        self._running: dict[str, _RunNodes] = {}  # by execution
        self._deleted: set[NodeKey] = set()
        self._progress: dict[NodeKey, ProgressDelta] = {}
        self._waiting: dict[NodeKey, int] = {}  # flushes a delta has waited for its row
        self._flush_lock = asyncio.Lock()
        self._flushes = 0

    # -- from the runs (NodeSignals) ---------------------------------------------------------------

    def started_nodes(self, run: RunIdentity) -> MutableMapping[str, RunningNode]:
        nodes = self._running.get(run.execution_id)
        if nodes is not None:  # an earlier claim of the run still ending here
            self.run_ended(nodes.run)
        nodes = self._running[run.execution_id] = _RunNodes(run)
        return nodes.states

    def run_ended(self, run: RunIdentity) -> None:
        """`run` no longer executes here (the engine calls this as its task ends): forget its nodes;
        their rows go at the next flush. Keeps an engine without maintenance ticks (the CLI, a test)
        from holding every node it ever ran."""
        nodes = self._running.get(run.execution_id)
        if nodes is not None and nodes.run is run:
            del self._running[run.execution_id]
            self._deleted.update((run.execution_id, node_id) for node_id in nodes.written)

    @property
    def tracked_nodes(self) -> int:
        """Nodes of runs executing here that this replica tracks (running, or ended since its last flush)."""
        return sum(len(nodes.states) for nodes in self._running.values())

    def node_completed(self, key: DurationKey, seconds: float) -> None:
        self.history.add(key, seconds)

    def progress(self, execution_id: str, node_id: str, message: str | None, fraction: float | None) -> None:
        nodes = self._running.get(execution_id)
        if nodes is not None and nodes.running(node_id):
            nodes.count_report(node_id)
            self._take(execution_id, nodes.run.dag_id, node_id, message, fraction)

    # -- the route ---------------------------------------------------------------------------------

    async def report(
        self, execution_id: str, node_id: str, message: str | None, fraction: float | None
    ) -> ProgressAck:
        """Take a progress report for a running node of any replica's run. `NotFound` for an unknown
        run or node, `InvalidState` (naming the status) when the run or the node is not running,
        ValueError for a bad message or fraction."""
        check_progress(message, fraction)
        nodes = self._running.get(execution_id)
        if nodes is not None and self._is_local(nodes.run) and nodes.running(node_id):
            reports = nodes.count_report(node_id)
            at = self._take(execution_id, nodes.run.dag_id, node_id, message, fraction)
            return ProgressAck(execution_id, node_id, at, reports)
        dag_id, stored = await self._check_running(execution_id, node_id)
        at = self._take(execution_id, dag_id, node_id, message, fraction)
        pending = self._progress[(execution_id, node_id)].reports
        return ProgressAck(execution_id, node_id, at, stored + pending)

    async def _check_running(self, execution_id: str, node_id: str) -> tuple[str, int]:
        """The run's DAG id and the node's stored report count, once the store says the node may be
        running (see `report` for the errors)."""
        record = await self.store.executions.get(execution_id)
        dag = await self.store.dags.get(record.dag_id, record.dag_version)
        if node_id not in dag.nodes:
            raise NotFound(f"execution {execution_id} (DAG {dag.dag_id}) has no node {node_id!r}")
        local = self._local_status(execution_id, node_id)
        if local is not None and local != "running":
            raise InvalidState(f"node {node_id} of execution {execution_id} is {local}, not running")
        if record.status != "running":
            raise InvalidState(
                f"execution {execution_id} is {record.status}: progress is taken for running nodes only"
            )
        rows = {row.node_id: row for row in await self.store.signals.running_of(execution_id)}
        if node_id in rows:
            return dag.dag_id, rows[node_id].progress_reports
        trace = (await self.store.runs.traces(execution_id)).get(node_id)
        if trace is not None and trace.status != "running":
            raise InvalidState(f"node {node_id} of execution {execution_id} is {trace.status}, not running")
        return dag.dag_id, 0  # started, its owner has not written it yet (or the run keeps no traces)

    def _take(
        self, execution_id: str, dag_id: str, node_id: str, message: str | None, fraction: float | None
    ) -> datetime:
        at = self.clock.now()
        key = (execution_id, node_id)
        delta = ProgressDelta(execution_id, node_id, 1, at, message, fraction)
        earlier = self._progress.get(key)
        self._progress[key] = delta if earlier is None else earlier.then(delta)
        self.observer.node_progress(NodeProgressEvent(execution_id, dag_id, node_id, at, message, fraction))
        return at

    # -- flushing ----------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write this replica's running-node changes and progress (one transaction), then merge its
        new durations into the stored history. Store errors are raised; nothing is lost by them."""
        await self.flush_running()
        await self.history.flush()

    async def flush_running(self) -> None:
        """The running-node part of `flush` (what readers of every run's nodes call before they read)."""
        async with self._flush_lock:
            upserts, deletes = self._changes()
            progress, self._progress = list(self._progress.values()), {}
            missing: list[ProgressDelta] = []
            if upserts or deletes or progress:  # else no transaction: the usual tick with long nodes
                try:
                    missing = await self.store.signals.sync_running(upserts, deletes, progress)
                except BaseException:
                    self._deleted |= deletes
                    for delta in progress:
                        self._merge_back(delta)
                    raise
            for row in upserts:
                nodes = self._running.get(row.execution_id)
                if nodes is not None and nodes.run.fencing_token == row.fencing_token:
                    nodes.written[row.node_id] = row.attempt
            self._wait_for_rows(missing)
            self._flushes += 1
            if self._flushes % PRUNE_EVERY == 0:
                await self.store.signals.prune_running()

    async def flush_running_of(self, execution_id: str) -> None:
        """What a reader of one run's running nodes calls before it reads: `flush_running` when this
        replica holds a change of that run the store does not have yet (or a flush is under way),
        nothing otherwise. A trace read thus costs neither a pass over every run held here nor a write
        transaction (issue 11: at 10,000 running runs each trace read scanned them all, one reader at
        a time, 14.5 ms instead of 2.7 ms, and 30 reads at once 837 ms)."""
        if self._flush_lock.locked() or self._unwritten(execution_id):
            await self.flush_running()

    def _unwritten(self, execution_id: str) -> bool:
        """Whether `_changes` (or the pending progress) holds anything of `execution_id`: its nodes'
        side of `_changes`, for one run."""
        nodes = self._running.get(execution_id)
        if nodes is not None:
            if not self._is_local(nodes.run):
                return True
            for node_id, state in nodes.states.items():
                if state.status != "running":
                    if node_id in nodes.written:
                        return True
                elif nodes.written.get(node_id) != state.attempt_count and state.started_at is not None:
                    return True
        return any(key[0] == execution_id for key in self._deleted) or any(
            key[0] == execution_id for key in self._progress
        )

    def _changes(self) -> tuple[list[RunningRow], set[NodeKey]]:
        """The rows to write (started or retried nodes) and to delete (ended ones) since the last flush."""
        upserts: list[RunningRow] = []
        deletes, self._deleted = self._deleted, set()
        for execution_id, nodes in list(self._running.items()):
            if not self._is_local(nodes.run):  # stopped here (cancelled elsewhere, fenced)
                self.run_ended(nodes.run)
                deletes |= self._deleted
                self._deleted = set()
                continue
            for node_id, state in list(nodes.states.items()):
                if state.status != "running":
                    del nodes.states[node_id]
                    nodes.reports.pop(node_id, None)
                    if nodes.written.pop(node_id, None) is not None:
                        deletes.add((execution_id, node_id))
                elif nodes.written.get(node_id) != state.attempt_count and state.started_at is not None:
                    upserts.append(self._row(nodes.run, state, state.started_at))
        deletes -= {(row.execution_id, row.node_id) for row in upserts}
        return upserts, deletes

    @staticmethod
    def _row(run: RunIdentity, state: RunningNode, started_at: datetime) -> RunningRow:
        return RunningRow(
            run.execution_id,
            state.node_id,
            run.dag_id,
            state.agent_id,
            run.owner,
            run.fencing_token,
            state.attempt_count,
            started_at,
        )

    def _merge_back(self, delta: ProgressDelta) -> None:
        key = (delta.execution_id, delta.node_id)
        newer = self._progress.get(key)
        self._progress[key] = delta if newer is None else delta.then(newer)

    def _wait_for_rows(self, missing: list[ProgressDelta]) -> None:
        waited, self._waiting = self._waiting, {}
        for delta in missing:
            key = (delta.execution_id, delta.node_id)
            flushes = waited.get(key, 0) + 1
            if flushes > MISSING_ROW_FLUSHES:
                log.warning(
                    "progress of node %s of execution %s dropped: no running node row after %d flushes",
                    delta.node_id,
                    delta.execution_id,
                    MISSING_ROW_FLUSHES,
                )
                continue
            self._waiting[key] = flushes
            self._merge_back(delta)

    async def close(self) -> None:
        """The last flush (shutdown); failures are logged: the store may be what is going away."""
        try:
            await self.flush()
        except Exception as exc:  # at shutdown: report, and let the close go on
            log.warning("stuck-run signals not flushed at shutdown: %s", exc)

    # -- reading -----------------------------------------------------------------------------------

    async def running_page(
        self, where: RunningFilter, *, after: RunningPosition | None, limit: int
    ) -> RunningPage:
        """A page of the running nodes of every replica (this one's written first)."""
        await self.flush_running()
        return await self.store.signals.page_running(where, after=after, limit=limit)
