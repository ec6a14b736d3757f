"""Agents: the context they receive, the registry instance that runs them, and the built-in agents.

Where it sits: the service (or CLI, or a test) builds one `AgentRegistry` at start-up —
`AgentRegistry.from_entry_points()` loads every entry point of group `gl_orchestrator.agents`, and
`register()` adds more (the service's HTTP agents, a test's callables). `nodes.NodeRunner` runs each node
attempt through `AgentRegistry.invoke`; `POST /admin/agents/{agent_id}/restart` calls `restart`.
There is no module-level registry: two engines in one process never share agents or agent state.

An agent is `async def agent(ctx: AgentContext) -> <JSON-able value>`. A long one may call
`ctx.report_progress(message=..., fraction=...)` now and then: a node that reports progress is slow,
not hung (stall detection, docs/architecture.md "Stuck-run signals"). `ctx.state` is the agent
worker's state, shared by all attempts of that agent on this replica and reset by `restart` (a fresh
worker): this is where a connection pool or cache would live. `restart(agent_id)` cancels that agent's
running attempts; each of them fails with `AgentRestarted` (a `RetryableAgentError`), so the node's
retry policy re-runs it on the fresh worker.

Built-ins (entry points `builtin.*` in pyproject.toml):
`builtin.echo` returns its input; `builtin.sleep` sleeps `params.seconds`; `builtin.hang` never returns
until cancelled; `builtin.fail` raises `params.error` (retryable when `params.retryable`, of class
`params.error_type` when given); `builtin.flaky` fails `params.failures` times then succeeds.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from orchestrator_core.errors import (
    AgentError,
    AgentNotFound,
    AgentRestarted,
    ConfigError,
    RetryableAgentError,
)
from orchestrator_core.events import EngineObserver, LogEvent
from orchestrator_core.signals import NO_SIGNALS, NodeSignals, check_progress

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gl_orchestrator.agents"


@dataclass(slots=True)
class AgentContext:
    """Everything an agent attempt gets. `state` is filled in by the registry (the worker's state)."""

    execution_id: str
    dag_id: str
    node_id: str
    agent_id: str
    attempt: int
    params: dict[str, Any]
    input_data: Any
    upstream: dict[str, Any]
    deadline: datetime | None
    observer: EngineObserver
    now: Callable[[], datetime]
    state: dict[str, Any] = field(default_factory=dict)
    node_output: Any = None  # set for compensation handlers: the output being compensated
    compensating: bool = False
    signals: NodeSignals = NO_SIGNALS  # the run's (`progress.RunSignals`): where progress reports go

    def report_progress(self, message: str | None = None, fraction: float | None = None) -> None:
        """Tell the orchestrator this node is making progress (slow, not hung): what
        `POST /executions/{id}/nodes/{node_id}/progress` does for an HTTP agent, without HTTP.
        `message` at most 500 characters, `fraction` from 0 to 1; ValueError naming the problem else."""
        check_progress(message, fraction)
        self.signals.progress(self.execution_id, self.node_id, message, fraction)

    def log(self, message: str, level: str = "INFO", **extra: Any) -> None:
        """A log line carrying execution_id, node_id and agent_id (reaches the service's logs)."""
        self.observer.log(
            LogEvent(
                level=level,
                message=message,
                at=self.now(),
                execution_id=self.execution_id,
                node_id=self.node_id,
                agent_id=self.agent_id,
                extra={"attempt": self.attempt, **extra},
            )
        )


AgentFn = Callable[[AgentContext], Awaitable[Any]]


@dataclass(eq=False, slots=True)
class _Attempt:
    task: asyncio.Task[Any]
    execution_id: str
    node_id: str
    restarted: bool = False


@dataclass(slots=True)
class _Worker:
    agent_id: str
    fn: AgentFn
    kind: str
    restarts: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    running: set[_Attempt] = field(default_factory=set)


@dataclass(frozen=True)
class RestartResult:
    """What `restart` did: the agent's restart count and the attempts it interrupted."""

    agent_id: str
    restarts: int
    interrupted: list[tuple[str, str]]  # (execution_id, node_id)

    @property
    def interrupted_nodes(self) -> list[str]:
        return sorted({node_id for _, node_id in self.interrupted})

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "restarts": self.restarts,
            "interrupted_nodes": self.interrupted_nodes,
            "interrupted": [{"execution_id": e, "node_id": n} for e, n in self.interrupted],
        }


class AgentRegistry:
    """An explicit registry of agents, built once at start-up and passed to the engine."""

    def __init__(self) -> None:
        self._workers: dict[str, _Worker] = {}

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> AgentRegistry:
        """A registry holding every agent declared under the entry-point group."""
        registry = cls()
        for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
            try:
                fn = ep.load()
            except Exception as exc:  # a broken plugin must name itself, whatever it raised
                raise ConfigError(f"cannot load agent entry point {ep.name} = {ep.value}: {exc}") from exc
            if not callable(fn):
                raise ConfigError(f"agent entry point {ep.name} = {ep.value} is not callable")
            registry.register(ep.name, fn)
        return registry

    def register(self, agent_id: str, fn: AgentFn, *, kind: str = "inprocess", replace: bool = False) -> None:
        """Add an agent. Registering an id twice is an error unless `replace`."""
        if agent_id in self._workers and not replace:
            raise ConfigError(f"agent {agent_id!r} is already registered")
        self._workers[agent_id] = _Worker(agent_id=agent_id, fn=fn, kind=kind)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._workers

    def ids(self) -> list[str]:
        return sorted(self._workers)

    def _worker(self, agent_id: str) -> _Worker:
        try:
            return self._workers[agent_id]
        except KeyError:
            raise AgentNotFound(f"agent {agent_id!r} is not registered") from None

    async def invoke(self, ctx: AgentContext, task: asyncio.Task[Any] | None = None) -> Any:
        """Run one attempt of `ctx.agent_id` in the current task (so cancelling the task cancels it).

        `task` is the current task when the caller already knows it (the executor does; it saves a
        lookup per attempt). It is what `restart` cancels, so it must be the task running this call.
        """
        worker = self._worker(ctx.agent_id)
        ctx.state = worker.state
        if task is None:
            task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under asyncio
            return await worker.fn(ctx)
        attempt = _Attempt(task, ctx.execution_id, ctx.node_id)
        worker.running.add(attempt)
        try:
            return await worker.fn(ctx)
        except asyncio.CancelledError:
            if attempt.restarted and task.uncancel() == 0:
                raise AgentRestarted(
                    f"agent {ctx.agent_id} was restarted while attempt {ctx.attempt} was running"
                ) from None
            raise
        finally:
            worker.running.discard(attempt)

    def restart(self, agent_id: str) -> RestartResult:
        """Restart the in-process agent worker: cancel its running attempts and reset its state."""
        worker = self._worker(agent_id)
        worker.restarts += 1
        worker.state = {}
        interrupted = []
        for attempt in sorted(worker.running, key=lambda a: (a.execution_id, a.node_id)):
            attempt.restarted = True
            attempt.task.cancel(f"agent {agent_id} restarted")
            interrupted.append((attempt.execution_id, attempt.node_id))
        log.info("agent %s restarted (%d running attempts interrupted)", agent_id, len(interrupted))
        return RestartResult(agent_id=agent_id, restarts=worker.restarts, interrupted=interrupted)

    def describe(self) -> list[dict[str, Any]]:
        """`GET /agents` items."""
        return [
            {
                "agent_id": w.agent_id,
                "kind": w.kind,
                "restarts": w.restarts,
                "running_nodes": sorted(a.node_id for a in w.running),
            }
            for w in sorted(self._workers.values(), key=lambda w: w.agent_id)
        ]

    def running_nodes(self, agent_id: str) -> list[tuple[str, str]]:
        """(execution_id, node_id) of the agent's running attempts."""
        return sorted((a.execution_id, a.node_id) for a in self._worker(agent_id).running)


# -- built-in agents -------------------------------------------------------------------------------


async def echo(ctx: AgentContext) -> Any:
    """Return the node's input: params, the run's input data, and its dependencies' outputs."""
    return {"params": ctx.params, "input_data": ctx.input_data, "upstream": ctx.upstream}


async def sleep(ctx: AgentContext) -> Any:
    """Sleep `params.seconds` (default 1), then return how long."""
    seconds = _number(ctx.params.get("seconds", 1.0), "seconds")
    await asyncio.sleep(seconds)
    return {"slept_seconds": seconds}


async def hang(ctx: AgentContext) -> Any:
    """Never return until cancelled (to test stuck-execution alerting end to end)."""
    ctx.log(f"{ctx.agent_id} waiting forever (builtin.hang)", level="WARNING")
    await asyncio.Event().wait()
    raise AssertionError("unreachable")  # pragma: no cover


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise AgentError(f"params.{name} must be a non-negative number, got {value!r}")
    return float(value)


def make_error(params: dict[str, Any], default_message: str) -> Exception:
    """The exception `builtin.fail`/`builtin.flaky` raise, from `error`, `error_type`, `retryable`.

    `error_type` names a builtin exception (`ConnectionError`, `TimeoutError`, ...) or any other name,
    which becomes an `AgentError` subclass of that name; `retryable: true` makes it a
    `RetryableAgentError` as well.
    """
    message = str(params.get("error", default_message))
    type_name = params.get("error_type")
    retryable = bool(params.get("retryable", False))
    bases: list[type[Exception]] = []
    if type_name is not None:
        if not isinstance(type_name, str) or not type_name.isidentifier():
            raise AgentError(f"params.error_type must be an exception class name, got {type_name!r}")
        builtin = getattr(builtins, type_name, None)
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            bases.append(builtin)
        else:
            bases.append(type(type_name, (AgentError,), {}))
    if retryable:
        bases.append(RetryableAgentError)
    if not bases:
        return AgentError(message)
    if len(bases) == 1:
        return bases[0](message)
    combined: type[Exception] = type(bases[0].__name__, tuple(bases), {})
    return combined(message)


async def fail(ctx: AgentContext) -> Any:
    """Raise `params.error` (see `make_error`)."""
    raise make_error(ctx.params, f"{ctx.node_id} failed (builtin.fail)")


async def flaky(ctx: AgentContext) -> Any:
    """Fail on the first `params.failures` attempts (retryable unless `params.retryable` is false)."""
    failures = int(_number(ctx.params.get("failures", 1), "failures"))
    if ctx.attempt <= failures:
        params = {"retryable": True, **ctx.params}
        raise make_error(params, f"{ctx.node_id} attempt {ctx.attempt} of {failures} planned failures")
    return {"attempts": ctx.attempt}


def builtin_agents() -> Iterable[tuple[str, AgentFn]]:
    """The built-in agents by id (what the entry points declare), for registries built by hand."""
    return [
        ("builtin.echo", echo),
        ("builtin.sleep", sleep),
        ("builtin.hang", hang),
        ("builtin.fail", fail),
        ("builtin.flaky", flaky),
    ]
