"""The alert condition: a running execution over its timeout, continuously for `for_duration`.

Evaluated by the sweeps (`watchdog.sweeps.Sweeper.sweep_once`) and by anyone who wants to know
which runs are stuck right now. It reads from one of two sources:

- Prometheus (when configured): the shipped alert expression `watchdog_sdk.constants.STUCK_EXPRESSION`,
  whose answer is the running executions whose duration exceeds their timeout;
- the orchestrator API (otherwise, and as the fallback when Prometheus is down or refuses the query):
  `GET /executions?status=running&over_timeout=true`, every page (oldest first, following
  `next_cursor`), so the answer is exactly the candidates however many runs are running; each is
  checked here again (`now - started_at > timeout_seconds`), which also covers an orchestrator
  before pagination, whose one answer is every running run, unfiltered.

The result names the source used and, after a fallback, why. Over that observation sits Prometheus'
`for` state machine, per execution, with an injected clock: the first evaluation that sees a run over
makes it *pending* (active since then); it turns *firing* once it has been seen over continuously for
`for_duration`; any evaluation that does not see it over (it finished, its timeout was raised, it
vanished from the answer) resets it to *inactive*.

After a restart or a leader change, an evaluator has no `for`-state. Prometheus restores its own
(`ALERTS_FOR_STATE`); from the API we know when a run went over (`started_at + timeout`: a running
run's duration only grows), so on an evaluator's *first* evaluation a run already over for at least
`for_duration` fires at once instead of waiting another `for_duration` (a sweep must not go blind
for ten minutes after every deploy or failover). Every other run starts from pending, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from gl_common.clock import Clock
from watchdog_sdk.clients.orchestrator import MAX_PAGE, OrchestratorClient
from watchdog_sdk.clients.prometheus import Sample
from watchdog_sdk.constants import STUCK_EXPRESSION
from watchdog_sdk.errors import PrometheusQueryError, PrometheusUnavailable


class PromQuerier(Protocol):
    """The part of `PrometheusClient` the condition needs."""

    async def query(self, promql: str, *, request_timeout: float | None = None) -> list[Sample]: ...


class AlertState(StrEnum):
    """Prometheus' alert states."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


class Source(StrEnum):
    """Where the observation came from (also the incident's `detection_source`)."""

    PROMETHEUS = "prometheus"
    API = "api"


@dataclass(frozen=True)
class Observation:
    """One running execution as a source reported it."""

    execution_id: str
    dag_id: str | None
    over: bool
    duration_seconds: float | None = None
    timeout_seconds: float | None = None
    over_since: datetime | None = None  # when it went over, when the source can tell (the API)


@dataclass(frozen=True)
class ExecutionCondition:
    """The condition of one observed execution after this evaluation."""

    execution_id: str
    dag_id: str | None
    state: AlertState
    over: bool
    active_since: datetime | None
    duration_seconds: float | None
    timeout_seconds: float | None


@dataclass(frozen=True)
class ConditionResult:
    """One evaluation: which source answered, and every observed execution's state."""

    evaluated_at: datetime
    source: Source
    executions: tuple[ExecutionCondition, ...]
    fallback_reason: str | None = None

    @property
    def firing(self) -> list[ExecutionCondition]:
        """Executions whose condition is firing (stuck for at least `for_duration`)."""
        return [e for e in self.executions if e.state is AlertState.FIRING]

    @property
    def pending(self) -> list[ExecutionCondition]:
        """Executions over their timeout, not yet for `for_duration`."""
        return [e for e in self.executions if e.state is AlertState.PENDING]


class ConditionEvaluator:
    """Evaluates the condition with `for` semantics. One instance per watchdog (it holds the state)."""

    def __init__(
        self,
        orchestrator: OrchestratorClient,
        prometheus: PromQuerier | None,
        *,
        for_duration: timedelta,
        clock: Clock,
        prometheus_timeout: float | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.prometheus = prometheus
        self.for_duration = for_duration
        self.clock = clock
        self.prometheus_timeout = prometheus_timeout
        self._active_since: dict[str, datetime] = {}
        self._first = True  # no evaluation yet: no `for`-state to go on (see the module docstring)

    async def evaluate(self) -> ConditionResult:
        """Observe (Prometheus, else the API) and advance the state machine.

        Raises OrchestratorUnavailable/OrchestratorError when the API is needed and fails; a
        Prometheus failure only causes the fallback.
        """
        fallback_reason: str | None = None
        if self.prometheus is not None:
            try:
                observations = await self.observe_prometheus(self.prometheus)
            except (PrometheusUnavailable, PrometheusQueryError) as exc:
                fallback_reason = f"prometheus failed, used the orchestrator API: {exc}"
            else:
                return self.advance(self.clock.now(), Source.PROMETHEUS, observations)
        observations = await self.observe_api(self.orchestrator)
        return self.advance(self.clock.now(), Source.API, observations, fallback_reason)

    async def observe_prometheus(self, prometheus: PromQuerier) -> list[Observation]:
        """The shipped alert expression: each answer is a running execution over its timeout."""
        samples = await prometheus.query(STUCK_EXPRESSION, request_timeout=self.prometheus_timeout)
        seen: dict[str, Observation] = {}
        for sample in samples:
            execution_id = sample.labels.get("execution_id")
            if not execution_id:
                continue
            seen[execution_id] = Observation(
                execution_id=execution_id,
                dag_id=sample.labels.get("dag_id"),
                over=True,
                duration_seconds=sample.value,
            )
        return list(seen.values())

    async def observe_api(self, orchestrator: OrchestratorClient) -> list[Observation]:
        """Running executions over their timeout, from the orchestrator (every page); over when
        `now - started_at > timeout_seconds` by this clock."""
        candidates = await orchestrator.list_executions(
            status="running", over_timeout=True, page_size=MAX_PAGE
        )
        now = self.clock.now()
        observations = []
        for execution in candidates:
            duration = None if execution.started_at is None else (now - execution.started_at).total_seconds()
            timeout = execution.timeout_seconds
            over = duration is not None and timeout is not None and duration > timeout
            over_since = None
            if over and execution.started_at is not None and timeout is not None:
                over_since = execution.started_at + timedelta(seconds=timeout)
            observations.append(
                Observation(
                    execution_id=execution.execution_id,
                    dag_id=execution.dag_id,
                    over=over,
                    duration_seconds=duration,
                    timeout_seconds=timeout,
                    over_since=over_since,
                )
            )
        return observations

    def advance(
        self,
        now: datetime,
        source: Source,
        observations: list[Observation],
        fallback_reason: str | None = None,
    ) -> ConditionResult:
        """Apply one round of observations to the `for` state machine (pure apart from the state)."""
        over_now = {o.execution_id for o in observations if o.over}
        for execution_id in list(self._active_since):
            if execution_id not in over_now:  # a dip (or the run ended): reset
                del self._active_since[execution_id]
        first, self._first = self._first, False
        results = []
        for obs in observations:
            if not obs.over:
                state, since = AlertState.INACTIVE, None
            else:
                start = now
                if first and obs.over_since is not None and now - obs.over_since >= self.for_duration:
                    start = obs.over_since  # over long before this evaluator existed
                since = self._active_since.setdefault(obs.execution_id, start)
                state = AlertState.FIRING if now - since >= self.for_duration else AlertState.PENDING
            results.append(
                ExecutionCondition(
                    execution_id=obs.execution_id,
                    dag_id=obs.dag_id,
                    state=state,
                    over=obs.over,
                    active_since=since,
                    duration_seconds=obs.duration_seconds,
                    timeout_seconds=obs.timeout_seconds,
                )
            )
        return ConditionResult(now, source, tuple(results), fallback_reason)
