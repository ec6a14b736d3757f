"""One node of a run, to its end: attempts, per-attempt timeout, retries, the final outcome.

Where it sits: `levels.LevelRunner` calls `NodeRunner.run_node(node_id, task)` for each node it starts
(in the task that runs the node). The node runner takes a parallelism slot (`run_state.Slots`) per
attempt, calls the agent through `agents.AgentRegistry.invoke`, hands a completed node's checkpoint to
the run's `checkpoints.RunWriter` and counts the node as done only once it is committed (in a level of
one it waits for that in `save_checkpoint`; in a wider one it queues it with `queue_checkpoint` and the
level's barrier waits: `done_when_durable`), reports each step to the `EngineObserver`, and tells the
level runner about a failure (`on_failed`).

- Per attempt: `timeout_policy.timeout_seconds` (a `NodeTimeout`); retries per `retry_policy`
  (`policies.is_retryable`, `policies.retry_delay`, jitter seeded from the execution id in
  deterministic mode), sleeping on the injected clock.
- The final outcome per `on_timeout`: `fail` → `timed_out`; `skip` → `skipped`, and downstream gets
  `None`; `compensate` → the node's compensation agent runs (`compensation.Compensator`), then
  `timed_out`. Any other failure → `failed`.
- A node's input hash is its plan's `hashing.InputHasher` over the run input's hash and its
  dependencies' output hashes; its output hash is that of its canonical JSON output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from orchestrator_core.agents import AgentContext
from orchestrator_core.compensation import Compensator
from orchestrator_core.dag import Node
from orchestrator_core.errors import AgentOutputError, AgentRestarted, NodeTimeout
from orchestrator_core.events import NodeAttemptEvent, NodeTimeoutEvent, RetryEvent
from orchestrator_core.hashing import NO_OUTPUT_HASH, canonical_json, sha256_hex
from orchestrator_core.policies import describe_error, is_retryable, jitter_rng, retry_delay
from orchestrator_core.records import CheckpointRecord
from orchestrator_core.run_state import NodeState, RunState


def ignore_failure(node_id: str, status: str) -> None:
    """`NodeRunner.on_failed` while no level runner listens (before it is built, after the run)."""


def _without_tracebacks(error: Exception) -> Exception:
    """`error` with no traceback on it or on its causes: only their types and messages are recorded,
    and a traceback holds the attempt's frame, which holds the error, so it would tie the run's objects
    into a reference cycle that outlives the run (freed only by the cyclic collector)."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a dropped future's error as seen (asyncio logs errors nobody retrieved)."""
    if not future.cancelled():
        future.exception()


class NodeRunner:
    """Runs single nodes of one run (see the module docstring)."""

    __slots__ = ("compensator", "deferred", "on_failed", "run")

    def __init__(self, run: RunState, compensator: Compensator) -> None:
        self.run = run
        self.compensator = compensator
        # Told when a node ends failed or timed out (not when skipped on timeout): the level runner.
        self.on_failed: Callable[[str, str], None] = ignore_failure
        # Completed nodes whose checkpoint commit is under way (`defer_commit`), in completion order.
        self.deferred: list[tuple[NodeState, Any, asyncio.Future[None]]] = []

    async def run_node(self, node_id: str, task: asyncio.Task[Any], *, defer_commit: bool = False) -> None:
        """Run one node to its end (retries included) in `task`, the task this runs in.

        A completed node counts as done (`outputs`, `completion_order`) once its checkpoint is
        committed: this waits for that, or with `defer_commit` returns at once and the caller's barrier
        makes the node done once its commit landed (`done_when_durable`)."""
        run = self.run
        state = run.states[node_id]
        node = state.node
        output_of = run.outputs.get  # closed over by the comprehension, so `run` stays a plain local
        upstream = {dep: output_of(dep) for dep in node.depends_on}
        hasher = run.plan.input_hashers[node_id]
        state.input_hash = hasher.with_encoded_input(run.input_data_hash_json, run.output_hashes)
        rng = None
        timeout = state.timeout_seconds
        slots, clock = run.slots, run.clock
        attempt = 0
        first = True
        while True:
            attempt += 1
            if not slots.try_acquire():  # the common case needs no coroutine
                await slots.acquire()
            try:
                if first:
                    first = False
                    run.node_start_order.append(node_id)
                    state.status = "running"
                    state.started_at = now = clock.now()
                    state.started_mono = clock.monotonic()
                    state.error = None
                    if run.persist:
                        run.writer.trace(state)  # read when its commit is taken
                    run.started[node_id] = state  # the signals' (`NodeSignals.started_nodes`)
                else:
                    now = clock.now()
                state.attempt_count = attempt
                value, exc = await self._attempt(state, attempt, upstream, timeout, now, task)
            finally:
                slots.release()
            if exc is None:
                state.status = "completed"
                state.error = None
                state.completed_at = clock.now()
                state.duration_ms = (clock.monotonic() - state.started_mono) * 1000
                run.signals.node_completed(run.plan.history_keys[node_id], state.duration_ms / 1000)
                if run.persist:  # the node is done only once its checkpoint is committed
                    checkpoint = self._checkpoint(state, value)
                    if defer_commit:
                        committed = run.writer.queue_checkpoint(checkpoint, state)
                        self.deferred.append((state, value, committed))
                        return
                    await run.writer.save_checkpoint(checkpoint, state)
                self._done(state, value)
                return
            policy = node.retry_policy
            if attempt <= policy.max_retries and is_retryable(policy, exc):
                if rng is None:
                    rng = jitter_rng(run.execution_id, node_id, run.deterministic)
                delay = retry_delay(policy, attempt, rng)
                error = describe_error(exc)
                run.observer.node_retry(
                    RetryEvent(*self._ids(node, attempt), delay_seconds=delay, error=error, at=clock.now())
                )
                state.error = error
                run.save_trace(state)
                run.log(
                    "WARNING",
                    f"attempt {attempt} failed ({error}); retry in {delay:.3f}s",
                    node_id=node_id,
                    agent_id=node.agent_id,
                )
                if delay > 0:
                    await clock.sleep(delay)
                continue
            await self._failed(state, exc)
            return

    async def _attempt(
        self,
        state: NodeState,
        attempt: int,
        upstream: dict[str, Any],
        timeout_s: float | None,
        now: datetime,
        task: asyncio.Task[Any],
    ) -> tuple[Any, BaseException | None]:
        run = self.run
        node = state.node
        deadline = now + timedelta(seconds=timeout_s) if timeout_s is not None else None
        # Every field positionally, in `AgentContext`'s order: a class called with keywords packs them
        # into a dict first, which cost twice the call itself on every attempt.
        ctx = AgentContext(
            run.execution_id,  # execution_id
            run.dag_id,  # dag_id
            state.node_id,  # node_id
            state.agent_id,  # agent_id
            attempt,  # attempt
            node.params,  # params
            run.input_data,  # input_data
            upstream,  # upstream
            deadline,  # deadline
            run.observer,  # observer
            run.clock.now,  # now
            {},  # state: the agent worker's, set by `AgentRegistry.invoke`
            None,  # node_output (compensation only)
            False,  # compensating
            run.signals,  # signals
        )
        started = 0.0  # only events need the attempt's own duration
        if run.observing:
            run.observer.node_attempt_started(NodeAttemptEvent(*self._ids(node, attempt), at=now))
            started = run.clock.monotonic()
        exc: BaseException | None = None
        value: Any = None
        outcome = "completed"
        try:
            if timeout_s is None:
                value = await run.registry.invoke(ctx, task)
            else:
                try:
                    async with asyncio.timeout(timeout_s) as scope:
                        value = await run.registry.invoke(ctx, task)
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
            exc = _without_tracebacks(error)
            if isinstance(error, NodeTimeout):
                outcome = "timed_out"
                run.observer.node_timeout(
                    NodeTimeoutEvent(
                        *self._ids(node, attempt),
                        timeout_seconds=timeout_s or 0.0,
                        on_timeout=node.timeout_policy.on_timeout,
                        at=run.clock.now(),
                    )
                )
            else:
                outcome = "restarted" if isinstance(error, AgentRestarted) else "failed"
        if run.observing:
            self._attempt_finished(
                state, attempt, started, outcome, None if exc is None else describe_error(exc)
            )
        return value, exc

    def _attempt_finished(
        self, state: NodeState, attempt: int, started: float, outcome: str, error: str | None
    ) -> None:
        run = self.run
        if not run.observing:
            return
        run.observer.node_attempt_finished(
            NodeAttemptEvent(
                *self._ids(state.node, attempt),
                at=run.clock.now(),
                outcome=outcome,
                duration_seconds=run.clock.monotonic() - started,
                error=error,
            )
        )

    def _ids(self, node: Node, attempt: int) -> tuple[str, str, str, str, int]:
        """What every node event starts with: execution, DAG, node, agent, attempt."""
        return self.run.execution_id, self.run.dag.dag_id, node.node_id, node.agent_id, attempt

    async def done_when_durable(self) -> None:
        """Wait for the commits of the nodes that deferred theirs, in the order they completed, each
        node done once its own landed (raises a commit's fatal error, as the node itself would have)."""
        deferred = self.deferred
        for index, (state, value, committed) in enumerate(deferred):
            try:
                await committed
            except BaseException:
                self.deferred = deferred[index:]
                self.forget_deferred()
                raise
            self._done(state, value)
        self.deferred = []

    def forget_deferred(self) -> None:
        """Drop the deferred commits (the level is being abandoned); their outcome is not needed."""
        for _, _, committed in self.deferred:
            committed.add_done_callback(_retrieve)
        self.deferred = []

    def _done(self, state: NodeState, value: Any) -> None:
        """The node is done: downstream sees its output."""
        run, node_id = self.run, state.node_id
        run.outputs[node_id] = value
        run.output_hashes[node_id] = state.output_hash or NO_OUTPUT_HASH
        run.completion_order.append(node_id)

    def _checkpoint(self, state: NodeState, value: Any) -> CheckpointRecord:
        assert state.completed_at is not None
        return CheckpointRecord(  # positionally, in field order (see the agent context in `_attempt`)
            self.run.execution_id,  # execution_id
            state.node_id,  # node_id
            "completed",  # status
            value,  # output
            state.input_hash or "",  # input_hash
            state.output_hash or NO_OUTPUT_HASH,  # output_hash
            state.completed_at,  # created_at
        )

    async def _failed(self, state: NodeState, exc: BaseException) -> None:
        run = self.run
        node = state.node
        state.completed_at = run.clock.now()
        state.duration_ms = (run.clock.monotonic() - state.started_mono) * 1000
        state.error = describe_error(exc)
        state.output_hash = None
        on_timeout = node.timeout_policy.on_timeout
        if isinstance(exc, NodeTimeout) and on_timeout == "skip":
            state.status = "skipped"
            run.outputs[node.node_id] = None
            run.output_hashes[node.node_id] = NO_OUTPUT_HASH
            run.log(
                "WARNING",
                f"node timed out and was skipped: {state.error}",
                node_id=node.node_id,
                agent_id=node.agent_id,
            )
        else:
            state.status = "timed_out" if isinstance(exc, NodeTimeout) else "failed"
            if isinstance(exc, NodeTimeout) and on_timeout == "compensate":
                note = await self.compensator.compensate_node(node, None)
                state.error = f"{state.error}; {note}"
            run.log(
                "ERROR", f"node {state.status}: {state.error}", node_id=node.node_id, agent_id=node.agent_id
            )
            self.on_failed(node.node_id, state.status)
        run.save_trace(state)
