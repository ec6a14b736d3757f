"""The state of one run that the executor's parts share: node states, outputs, chain, writer, slots.

Where it sits: `executor.Executor` builds one `RunState` per run (from the claimed record, the DAG
version's `plan.RunPlan` and, for a resume, the stored `store.RunData`) and hands it to its parts:
`levels.LevelRunner` (levels, the barrier, workers, sealing the chain), `nodes.NodeRunner` (one
node's attempts, retries and timeouts) and `compensation.Compensator`. Nothing here runs anything;
it holds what they share and the two things they all do: log a line of the run, queue a node's trace.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gl_common.clock import Clock
from orchestrator_core.agents import AgentRegistry
from orchestrator_core.checkpoints import RunWriter
from orchestrator_core.dag import Node
from orchestrator_core.events import EngineObserver, LogEvent
from orchestrator_core.hashing import canonical_json, json_string, sha256_hex
from orchestrator_core.plan import RunPlan
from orchestrator_core.provenance import ChainBuilder, genesis_hash
from orchestrator_core.records import ExecutionRecord, NodeTrace
from orchestrator_core.signals import NO_SIGNALS, NodeSignals, RunningNode
from orchestrator_core.store import RunData

FAILED_NODE_STATUSES = frozenset({"failed", "timed_out"})
TERMINAL_NODE_STATUSES = frozenset({"completed", "failed", "skipped", "timed_out", "cancelled"})


class Slots:
    """A counting semaphore whose limit can change while it is held (`set_limit`: live limits).

    Lowering the limit never stops holders; new acquirers wait until usage drops below it. FIFO.
    The queue of waiters is made when the first one comes (an empty deque is ~750 bytes, per run).
    """

    __slots__ = ("_waiters", "in_use", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] | None = None

    def try_acquire(self) -> bool:
        """Take a slot at once if one is free and nobody is queued (what `acquire` does first)."""
        if not self._waiters and self.in_use < self.limit:
            self.in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # we were granted a slot but will not use it
            else:
                waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        if self._waiters:
            self.wake()

    def set_limit(self, limit: int) -> None:
        """A new limit, at once: more room wakes waiters; less stops none of the holders."""
        self.limit = limit
        self.wake()

    def wake(self) -> None:
        """Grant slots to waiters while usage is under the limit."""
        waiters = self._waiters
        while waiters and self.in_use < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)


@dataclass(slots=True, init=False)
class NodeState:
    """One node of a run, as it goes (what its trace shows).

    `node_id`, `agent_id` and `timeout_seconds` (the rest of `store.TraceFields`, so that the final
    write of a run can take the states as they are) are copied from the node once, at the start of
    the run: read for every node by the run document and the signals, a property each was a call."""

    node: Node
    level: int
    node_id: str
    agent_id: str
    timeout_seconds: float | None
    status: str
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: float | None
    attempt_count: int
    error: str | None
    input_hash: str | None
    output_hash: str | None
    started_mono: float
    restored: bool  # completed before a resume (from its checkpoint), not run again here

    def __init__(self, node: Node, level: int) -> None:
        self.node = node
        self.level = level
        self.node_id = node.node_id
        self.agent_id = node.agent_id
        self.timeout_seconds = node.timeout_policy.timeout_seconds
        self.status = "pending"
        self.started_at = self.completed_at = None
        self.duration_ms = None
        self.attempt_count = 0
        self.error = self.input_hash = self.output_hash = None
        self.started_mono = 0.0
        self.restored = False

    def snapshot(self) -> NodeTrace:
        return NodeTrace(
            node_id=self.node_id,
            agent_id=self.agent_id,
            status=self.status,
            level=self.level,
            started_at=self.started_at,
            completed_at=self.completed_at,
            duration_ms=self.duration_ms,
            attempt_count=self.attempt_count,
            error=self.error,
            input_hash=self.input_hash,
            timeout_seconds=self.timeout_seconds,
        )


class RunState:
    """What the parts of one run's executor share (see the module docstring)."""

    __slots__ = (
        "chain",
        "clock",
        "completion_order",
        "dag",
        "dag_id",
        "deterministic",
        "execution_id",
        "fencing_token",
        "input_data",
        "input_data_hash",
        "input_data_hash_json",
        "node_start_order",
        "observer",
        "observing",
        "output_hashes",
        "outputs",
        "owner",
        "persist",
        "plan",
        "record",
        "registry",
        "signals",
        "skipped_from_checkpoint",
        "slots",
        "started",
        "states",
        "writer",
    )

    def __init__(
        self,
        *,
        plan: RunPlan,
        record: ExecutionRecord,
        registry: AgentRegistry,
        observer: EngineObserver,
        clock: Clock,
        writer: RunWriter,
        slots: Slots,
        resume_from: RunData | None,
        signals: NodeSignals = NO_SIGNALS,
    ) -> None:
        self.plan = plan
        self.dag = plan.dag
        self.record = record
        self.execution_id = record.execution_id
        # Who runs it under which token, and where its nodes' starts, completions and progress go.
        self.dag_id = self.dag.dag_id
        self.owner = record.owner
        self.fencing_token = record.fencing_token
        self.signals = signals
        self.deterministic = record.options.deterministic_mode
        self.persist = record.options.checkpoint_enabled
        self.registry = registry
        self.observer = observer
        # Hot-path events are only built when someone listens (the bare base class ignores them).
        self.observing = type(observer) is not EngineObserver
        self.clock = clock
        self.writer = writer
        self.slots = slots
        self.input_data = record.input_data
        self.input_data_hash = sha256_hex(canonical_json(record.input_data))
        self.input_data_hash_json = json_string(self.input_data_hash)  # encoded once for every node
        self.chain = ChainBuilder(
            genesis_hash(self.dag.dag_id, record.input_data), resume_from.chain if resume_from else []
        )
        self.states: dict[str, NodeState] = {
            node.node_id: NodeState(node, level) for node, level in plan.placed
        }
        self.outputs: dict[str, Any] = {}
        # The output hash of every node in `outputs` (a skipped node's is NO_OUTPUT_HASH).
        self.output_hashes: dict[str, str] = {}
        self.completion_order: list[str] = []
        self.node_start_order: list[str] = []
        self.skipped_from_checkpoint = self._restore(resume_from) if resume_from else []
        # Each node that starts running goes in here (the signals' running nodes of this run).
        self.started: MutableMapping[str, RunningNode] = signals.started_nodes(self)

    def _restore(self, data: RunData) -> list[str]:
        """Take the checkpointed nodes as completed; their ids in level order."""
        restored = []
        for cp in data.checkpoints:
            if cp.status != "completed" or cp.node_id not in self.states:
                continue
            state = self.states[cp.node_id]
            old = data.traces.get(cp.node_id)
            state.status = "completed"
            state.restored = True
            state.output_hash = cp.output_hash
            state.input_hash = cp.input_hash
            state.completed_at = cp.created_at
            if old is not None:
                state.started_at, state.duration_ms = old.started_at, old.duration_ms
                state.attempt_count = old.attempt_count
            self.outputs[cp.node_id] = cp.output
            self.output_hashes[cp.node_id] = cp.output_hash
            restored.append(cp.node_id)
        restored.sort(key=lambda n: (self.states[n].level, n))
        return restored

    def save_trace(self, state: NodeState) -> None:
        """Queue the node's trace (write-behind) when the run persists as it goes."""
        if self.persist:
            self.writer.trace(state.snapshot())

    def end_node(self, state: NodeState, status: str, error: str | None) -> None:
        """Mark a node ended now (its duration counted from its start, if it started) and queue it."""
        state.status = status
        state.error = error
        state.completed_at = self.clock.now()
        if state.started_at is not None:
            state.duration_ms = (self.clock.monotonic() - state.started_mono) * 1000
        self.save_trace(state)

    def log(
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
