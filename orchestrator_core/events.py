"""Engine events and the observer interface through which metrics, tracing and logs see a run.

Where it sits: the executor's parts (`executor`, `nodes`, `checkpoints`) emit events; `engine.Engine`
takes one `EngineObserver` at construction (use `CompositeObserver` to fan out) and passes it down.
The service layer implements observers for Prometheus (`metrics.py`), OpenTelemetry (`tracing.py`) and
structured logs (`logs.py`). Agents write log lines through `AgentContext.log`, which arrive as `log` events.

Observer methods are synchronous, called on the event loop, and must be cheap; an observer that raises
is logged (stdlib `logging`) and otherwise ignored — it can never break a run (`SafeObserver`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionEvent:
    """A run started (or resumed) or finished on this replica."""

    execution_id: str
    dag_id: str
    dag_version: int
    status: str
    at: datetime
    started_at: datetime | None = None
    timeout_seconds: float | None = None
    error: str | None = None
    resumed: bool = False


@dataclass(frozen=True)
class NodeAttemptEvent:
    """One attempt of one node. `outcome` is set on finish: completed|failed|timed_out|cancelled|restarted."""

    execution_id: str
    dag_id: str
    node_id: str
    agent_id: str
    attempt: int
    at: datetime
    outcome: str | None = None
    duration_seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class RetryEvent:
    """A failed attempt will be retried after `delay_seconds`."""

    execution_id: str
    dag_id: str
    node_id: str
    agent_id: str
    attempt: int
    delay_seconds: float
    error: str
    at: datetime


@dataclass(frozen=True)
class NodeTimeoutEvent:
    """A node attempt hit its `timeout_policy.timeout_seconds`."""

    execution_id: str
    dag_id: str
    node_id: str
    agent_id: str
    attempt: int
    timeout_seconds: float
    on_timeout: str
    at: datetime


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint store operation: `operation` save|load|delete, `status` ok|error."""

    execution_id: str
    operation: str
    status: str
    nodes: int
    at: datetime
    error: str | None = None


@dataclass(frozen=True)
class NodeProgressEvent:
    """An agent reported progress of a running node (`AgentContext.report_progress` or the route)."""

    execution_id: str
    dag_id: str
    node_id: str
    at: datetime
    message: str | None = None
    fraction: float | None = None


@dataclass(frozen=True)
class LogEvent:
    """A log line of a run: from the engine or from an agent (`AgentContext.log`)."""

    level: str
    message: str
    at: datetime
    execution_id: str | None = None
    node_id: str | None = None
    agent_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EngineObserver:
    """Receives engine events. Every method is a no-op here; subclasses override what they need."""

    def execution_started(self, event: ExecutionEvent) -> None:
        """A run started running on this replica (also after resume)."""

    def execution_finished(self, event: ExecutionEvent) -> None:
        """A run left `running` on this replica: completed, failed, cancelled or interrupted."""

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        """An agent attempt of a node begins."""

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        """An agent attempt of a node ended (see `outcome`)."""

    def node_retry(self, event: RetryEvent) -> None:
        """A failed attempt is going to be retried."""

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        """An attempt timed out."""

    def checkpoint_operation(self, event: CheckpointEvent) -> None:
        """A checkpoint store operation succeeded or failed."""

    def node_progress(self, event: NodeProgressEvent) -> None:
        """An agent reported progress of a running node."""

    def log(self, event: LogEvent) -> None:
        """A log line with execution_id/node_id/agent_id context."""


class CompositeObserver(EngineObserver):
    """Forwards every event to each observer in turn."""

    def __init__(self, *observers: EngineObserver) -> None:
        self.observers = list(observers)

    def execution_started(self, event: ExecutionEvent) -> None:
        for observer in self.observers:
            observer.execution_started(event)

    def execution_finished(self, event: ExecutionEvent) -> None:
        for observer in self.observers:
            observer.execution_finished(event)

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        for observer in self.observers:
            observer.node_attempt_started(event)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        for observer in self.observers:
            observer.node_attempt_finished(event)

    def node_retry(self, event: RetryEvent) -> None:
        for observer in self.observers:
            observer.node_retry(event)

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        for observer in self.observers:
            observer.node_timeout(event)

    def checkpoint_operation(self, event: CheckpointEvent) -> None:
        for observer in self.observers:
            observer.checkpoint_operation(event)

    def node_progress(self, event: NodeProgressEvent) -> None:
        for observer in self.observers:
            observer.node_progress(event)

    def log(self, event: LogEvent) -> None:
        for observer in self.observers:
            observer.log(event)


class SafeObserver(EngineObserver):
    """Wraps an observer so that an exception in it is logged and never reaches the engine."""

    def __init__(self, inner: EngineObserver) -> None:
        self.inner = inner

    def _call(self, name: str, event: object) -> None:
        try:
            getattr(self.inner, name)(event)
        except Exception:  # an observer bug must not break a run
            log.exception("engine observer %s.%s failed", type(self.inner).__name__, name)

    def execution_started(self, event: ExecutionEvent) -> None:
        self._call("execution_started", event)

    def execution_finished(self, event: ExecutionEvent) -> None:
        self._call("execution_finished", event)

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        self._call("node_attempt_started", event)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        self._call("node_attempt_finished", event)

    def node_retry(self, event: RetryEvent) -> None:
        self._call("node_retry", event)

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        self._call("node_timeout", event)

    def checkpoint_operation(self, event: CheckpointEvent) -> None:
        self._call("checkpoint_operation", event)

    def node_progress(self, event: NodeProgressEvent) -> None:
        self._call("node_progress", event)

    def log(self, event: LogEvent) -> None:
        self._call("log", event)


class RecordingObserver(EngineObserver):
    """Keeps every event in order in `events` (for tests, the CLI's trace printout and the demo)."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def execution_started(self, event: ExecutionEvent) -> None:
        self.events.append(event)

    def execution_finished(self, event: ExecutionEvent) -> None:
        self.events.append(event)

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        self.events.append(event)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        self.events.append(event)

    def node_retry(self, event: RetryEvent) -> None:
        self.events.append(event)

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        self.events.append(event)

    def checkpoint_operation(self, event: CheckpointEvent) -> None:
        self.events.append(event)

    def node_progress(self, event: NodeProgressEvent) -> None:
        self.events.append(event)

    def log(self, event: LogEvent) -> None:
        self.events.append(event)

    def of_type(self, kind: type[object]) -> list[Any]:
        """The recorded events of one type, in order."""
        return [event for event in self.events if isinstance(event, kind)]
