"""The sweep's search for runs stuck in ways the DAG timeout cannot see (issue 16): a stalling node, a
retry storm, a run queued too long, a cancel that never completes, a resume loop, an owner gone.

Where it sits: asked by `watchdog.sweeps.Sweeper` on every sweep of the leader, after the timeout
condition; it reads the orchestrator only (no store) and returns what it found, each with its cause,
severity and evidence (`watchdog_sdk.stuck`, the judgments diagnosis steps 1 and 3 share); the
sweeper opens the incidents. Every question is one server-side-filtered listing read to its last
page, so a sweep sees every candidate among any number of runs and reads only the candidates, except
the running nodes old enough to stall, which it reads whole (one paged call, `GET /running-nodes`:
the stall rule needs each node's own history, which no filter can apply):

- stalling nodes and retry storms: `GET /running-nodes?started_before=<now - min_node_age>`, every
  page: no younger node can be stalling (`min_node_age` is `max(floor_seconds, no_progress_seconds)`,
  10 minutes by default), so only the nodes old enough are read; a retry storm is therefore seen once
  its node (since its first attempt) is that old too;
- queued too long: `GET /executions?status=queued&queued_before=<now - queued_max_seconds>`;
- a cancel not completing: `status=running,queued&cancel_requested_before=<now - cancel_grace_seconds>`;
- a resume loop: `status=running,queued,failed,interrupted&min_resume_count=<resume_loop_count - 1>`
  (a run that failed N times in a row at one node was resumed N - 1 times);
- an owner gone: `status=running&owner_gone=true`.

Each answer is judged again here (the same judgment as the diagnosis), so an orchestrator that
ignores a filter is not trusted blindly. A question that fails (an orchestrator without the route or
the filter, a timeout) is logged and reported; the others still count. A run is reported once per
cause, with the first of its nodes that shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gl_common.clock import Clock
from watchdog_sdk.clients.orchestrator import ExecutionQuery, OrchestratorClient, RunningNode
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.stuck import (
    NodeSignals,
    StuckCause,
    StuckSettings,
    StuckState,
    execution_states,
    node_states,
)

log = logging.getLogger(__name__)

# The statuses in which a run can still be stuck in a resume loop (a completed or cancelled one is over).
RESUME_LOOP_STATUSES = "running,queued,failed,interrupted"


@dataclass(frozen=True)
class StuckRun:
    """One run found stuck, with its state (cause, severity, summary, evidence)."""

    execution_id: str
    dag_id: str | None
    state: StuckState

    @property
    def summary(self) -> str:
        """The incident's summary: `[severity] cause: what was seen`."""
        return f"[{self.state.severity}] {self.state.cause.value}: {self.state.summary}"

    def as_json(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "dag_id": self.dag_id, **self.state.as_json()}


@dataclass
class StuckSearch:
    """What one search found, and the questions that could not be answered."""

    runs: list[StuckRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class StuckRunDetector:
    """Asks the orchestrator for each kind of stuck run and judges the answers."""

    def __init__(self, orchestrator: OrchestratorClient, settings: StuckSettings, clock: Clock) -> None:
        self.orchestrator = orchestrator
        self.settings = settings
        self.clock = clock

    def min_node_age(self) -> timedelta:
        """No node younger than this can be stalling: its threshold is at least `floor_seconds`, and a
        node is quiet at most as long as it has run, which must reach `no_progress_seconds`."""
        stall = self.settings.stall
        return timedelta(seconds=max(stall.floor_seconds, stall.no_progress_seconds))

    async def search(self) -> StuckSearch:
        """Every stuck run of every kind, the most urgent kinds first (a run found for several causes
        is listed once per cause; the sweeper's first one opens its incident)."""
        now = self.clock.now()
        s = self.settings
        result = StuckSearch()
        questions = [
            (StuckCause.OWNER_GONE, ExecutionQuery("running", owner_gone=True)),
            (
                StuckCause.RESUME_LOOP,
                ExecutionQuery(RESUME_LOOP_STATUSES, min_resume_count=s.resume_loop_count - 1),
            ),
            (
                StuckCause.CANCEL_NOT_COMPLETING,
                ExecutionQuery(
                    "running,queued", cancel_requested_before=now - timedelta(seconds=s.cancel_grace_seconds)
                ),
            ),
        ]
        for cause, query in questions:
            await self._ask(result, cause.value, self._executions(query, cause))
        await self._ask(result, "running nodes", self._nodes())
        queued = ExecutionQuery("queued", queued_before=now - timedelta(seconds=s.queued_max_seconds))
        too_long = StuckCause.QUEUED_TOO_LONG
        await self._ask(result, too_long.value, self._executions(queued, too_long))
        return result

    async def _ask(self, result: StuckSearch, what: str, question: Awaitable[list[StuckRun]]) -> None:
        try:
            result.runs.extend(await question)
        except WatchdogError as exc:  # the other questions still count
            log.warning("sweep could not look for %s: %s", what, exc)
            result.errors.append(f"{what}: {exc}")

    async def _executions(self, query: ExecutionQuery, cause: StuckCause) -> list[StuckRun]:
        now = self.clock.now()
        found = []
        for execution in await self.orchestrator.list_matching(query, page_size=None):
            for state in execution_states(execution, now, self.settings):
                if state.cause is cause:
                    found.append(StuckRun(execution.execution_id, execution.dag_id, state))
        return found

    async def _nodes(self) -> list[StuckRun]:
        now = self.clock.now()
        found: list[StuckRun] = []
        seen: set[tuple[str, StuckCause]] = set()
        for node in await self.orchestrator.running_nodes(started_before=now - self.min_node_age()):
            for state in node_states(signals_of(node), now, self.settings):
                key = (node.execution_id, state.cause)
                if key not in seen:
                    seen.add(key)
                    found.append(StuckRun(node.execution_id, node.dag_id, state))
        # stalls before retry storms: a node that hangs is the more urgent news
        return sorted(found, key=lambda run: run.state.cause is not StuckCause.NODE_STALLING)


def signals_of(node: RunningNode) -> NodeSignals:
    """A running-nodes item as the node judgments read it."""
    return NodeSignals(
        node.node_id,
        node.agent_id,
        node.attempt,
        node.started_at,
        node.last_progress_at,
        node.normal_duration,
    )
