"""Structured JSON logs of the orchestrator and the per-execution ring buffer behind `/executions/{id}/logs`.

Where it sits: `service.OrchestratorService` owns one `RunLog`; engine observer events (run and node
attempt lifecycle, retries, timeouts, checkpoint failures) and HTTP agent calls are written through
it with `execution_id`, `node_id` and `agent_id` as fields, so the runbook's
`kubectl logs ... | grep <agent_id>` finds them. Each line goes to the stdlib logger
`orchestrator_core.run` (formatted as one JSON object per line by `gl_common.logs.JsonFormatter`,
installed by `gl_common.logs.configure_logging` from the CLI) and into an in-memory ring buffer per
execution that `api.py` serves (diagnostic step 7 reads it when there is no Kubernetes).

The buffer is bounded twice: `lines_per_execution` lines per run and `max_executions` runs (the
least recently written run is dropped first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

from gl_common.clock import utc_now
from gl_common.logs import RECORD_ATTRS
from orchestrator_core.events import (
    CheckpointEvent,
    EngineObserver,
    ExecutionEvent,
    LogEvent,
    NodeAttemptEvent,
    NodeTimeoutEvent,
    RetryEvent,
)

RUN_LOGGER = "orchestrator_core.run"

_RECORD_ATTRS = RECORD_ATTRS


def _now_iso() -> str:
    return utc_now().isoformat().replace("+00:00", "Z")


class AttemptOf(Protocol):
    """What names one attempt of a node (engine events, HTTP agent calls)."""

    @property
    def execution_id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...


class RunLog:
    """Writes run log lines to the stdlib logger and keeps the recent ones per execution."""

    def __init__(
        self,
        *,
        lines_per_execution: int = 1000,
        max_executions: int = 500,
        logger: logging.Logger | None = None,
        now: Callable[[], str] = _now_iso,
    ) -> None:
        self._lines_per_execution = lines_per_execution
        self._max_executions = max_executions
        self._logger = logger or logging.getLogger(RUN_LOGGER)
        self._now = now
        self._buffers: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def log(
        self,
        level: int,
        message: str,
        *,
        execution_id: str,
        node_id: str | None = None,
        agent_id: str | None = None,
        **fields: Any,
    ) -> None:
        """One structured line about a run (fields must be JSON-serialisable; no secrets)."""
        extra: dict[str, Any] = {"execution_id": execution_id, "node_id": node_id, "agent_id": agent_id}
        for key, value in fields.items():
            # `extra` may not shadow LogRecord attributes (logging raises KeyError on e.g. "name").
            extra[f"field_{key}" if key in _RECORD_ATTRS else key] = value
        self._logger.log(level, message, extra=extra)
        line: dict[str, Any] = {"ts": self._now(), "level": logging.getLevelName(level), "message": message}
        line.update(extra)
        buffer = self._buffers.get(execution_id)
        if buffer is None:
            buffer = deque(maxlen=self._lines_per_execution)
            self._buffers[execution_id] = buffer
            while len(self._buffers) > self._max_executions:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(execution_id)
        buffer.append(line)

    def attempt(self, level: int, message: str, of: AttemptOf, **fields: Any) -> None:
        """A line about one attempt of a node: its execution, node, agent and attempt, and `fields`."""
        self.log(
            level,
            message,
            execution_id=of.execution_id,
            node_id=of.node_id,
            agent_id=of.agent_id,
            attempt=of.attempt,
            **fields,
        )

    def info(self, message: str, **kwargs: Any) -> None:
        self.log(logging.INFO, message, **kwargs)

    def warning(self, message: str, **kwargs: Any) -> None:
        self.log(logging.WARNING, message, **kwargs)

    def error(self, message: str, **kwargs: Any) -> None:
        self.log(logging.ERROR, message, **kwargs)

    def lines(
        self, execution_id: str, *, node_id: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """The most recent `limit` lines of a run (oldest first), optionally of one node."""
        buffer = self._buffers.get(execution_id)
        if buffer is None or limit <= 0:
            return []
        selected = [line for line in buffer if node_id is None or line.get("node_id") == node_id]
        return selected[-limit:]


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogObserver(EngineObserver):
    """Turns engine events into structured run log lines."""

    def __init__(self, run_log: RunLog) -> None:
        self.run_log = run_log

    def execution_started(self, event: ExecutionEvent) -> None:
        self.run_log.info(
            "execution resumed" if event.resumed else "execution started",
            execution_id=event.execution_id,
            dag_id=event.dag_id,
            dag_version=event.dag_version,
            timeout_seconds=event.timeout_seconds,
        )

    def execution_finished(self, event: ExecutionEvent) -> None:
        level = logging.INFO if event.status in ("completed", "cancelled") else logging.ERROR
        self.run_log.log(
            level,
            f"execution {event.status}",
            execution_id=event.execution_id,
            dag_id=event.dag_id,
            status=event.status,
            error=event.error,
        )

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        self.run_log.attempt(logging.INFO, "node attempt started", event, dag_id=event.dag_id)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        outcome = event.outcome or "finished"
        level = logging.INFO if outcome in ("completed", "cancelled") else logging.ERROR
        self.run_log.attempt(
            level,
            f"node attempt {outcome}",
            event,
            dag_id=event.dag_id,
            outcome=outcome,
            duration_seconds=event.duration_seconds,
            error=event.error,
        )

    def node_retry(self, event: RetryEvent) -> None:
        message = f"node attempt failed, retrying in {event.delay_seconds:.2f}s: {event.error}"
        self.run_log.attempt(
            logging.WARNING, message, event, delay_seconds=event.delay_seconds, error=event.error
        )

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        message = f"node attempt timeout after {event.timeout_seconds:g}s (on_timeout={event.on_timeout})"
        self.run_log.attempt(
            logging.WARNING,
            message,
            event,
            timeout_seconds=event.timeout_seconds,
            on_timeout=event.on_timeout,
        )

    def checkpoint_operation(self, event: CheckpointEvent) -> None:
        level = logging.ERROR if event.status == "error" else logging.DEBUG
        self.run_log.log(
            level,
            f"checkpoint {event.operation} {event.status}",
            execution_id=event.execution_id,
            operation=event.operation,
            status=event.status,
            error=event.error,
        )

    def log(self, event: LogEvent) -> None:
        level = _LEVELS.get(event.level.lower(), logging.INFO)
        if event.execution_id is None:
            extra = {f"field_{k}" if k in _RECORD_ATTRS else k: v for k, v in event.extra.items()}
            logging.getLogger(RUN_LOGGER).log(level, event.message, extra=extra)
            return
        self.run_log.log(
            level,
            event.message,
            execution_id=event.execution_id,
            node_id=event.node_id,
            agent_id=event.agent_id,
            **event.extra,
        )
