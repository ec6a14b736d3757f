"""HTTP agents: a node whose agent runs in its own Deployment is one POST to that agent's URL.

Where it sits: `service.OrchestratorService` builds one `HttpAgentClient` (one pooled httpx client)
and registers an agent for every id in `settings.http_agents` in the engine's agent registry; the
executor then calls it like any in-process agent, once per attempt. The URL comes from
`settings.agent_url_template` (`http://{agent_id}.{namespace}.svc:8080/run`).

Request body (JSON)::

    {"execution_id", "node_id", "attempt", "params", "input_data", "upstream", "deadline"}

`deadline` is the node attempt's deadline, ISO 8601 UTC; the call's own timeout is the time left
until it (plus a small grace, so that the executor's node timeout, which applies `on_timeout`, fires
first). Response: a JSON body, `{"output": ...}` or any JSON value (used as the output as is).

Errors, converted here (httpx never leaks)::

    5xx, connection errors, timeouts  -> RetryableAgentError   (retried within max_retries)
    4xx                               -> AgentError             (not retried)
    2xx with a body that is not JSON  -> AgentOutputError       (not retried)

Each call is timed into `gl_orchestrator_agent_call_duration_seconds{agent_id,outcome}` (`on_call`)
and, through `run_log`, logged twice with `execution_id`, `node_id` and `agent_id`: "external call ...
started" (URL, timeout) and "external call ... <outcome> in <s>s", so the runbook's step 7 grep (for
the agent id, "external", "http", "timeout") finds a hanging or slow agent call and its timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from gl_common.clock import utc_now
from orchestrator_core.agents import AgentContext, AgentFn, AgentRegistry
from orchestrator_core.errors import AgentError, AgentOutputError, RetryableAgentError
from orchestrator_core.logs import RunLog

DEFAULT_TIMEOUT_SECONDS = 300.0
DEADLINE_GRACE_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_ERROR_BODY = 300


@dataclass(frozen=True)
class AgentCall:
    """One attempt of one node, as sent to the agent."""

    agent_id: str
    execution_id: str
    node_id: str
    attempt: int
    params: Mapping[str, Any]
    input_data: Any
    upstream: Mapping[str, Any]
    deadline: datetime | None

    def body(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "node_id": self.node_id,
            "attempt": self.attempt,
            "params": dict(self.params),
            "input_data": self.input_data,
            "upstream": dict(self.upstream),
            "deadline": None
            if self.deadline is None
            else self.deadline.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }


def agent_url(template: str, agent_id: str, namespace: str) -> str:
    """The agent's URL from the template (`{agent_id}` and `{namespace}` are substituted)."""
    return template.format(agent_id=agent_id, namespace=namespace)


class HttpAgentClient:
    """Calls HTTP agents; one instance (one connection pool) per service."""

    def __init__(
        self,
        url_template: str,
        namespace: str,
        *,
        on_call: Callable[[str, str, float], None] | None = None,
        run_log: RunLog | None = None,
        default_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._template = url_template
        self._namespace = namespace
        self._on_call = on_call
        self._run_log = run_log
        self._default_timeout = default_timeout
        self._now = now
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False)

    def url(self, agent_id: str) -> str:
        return agent_url(self._template, agent_id, self._namespace)

    def _timeout(self, deadline: datetime | None) -> float:
        if deadline is None:
            return self._default_timeout
        remaining = (deadline - self._now()).total_seconds()
        return max(0.001, remaining + DEADLINE_GRACE_SECONDS)

    async def call(self, call: AgentCall) -> Any:
        """POST the attempt to the agent; the agent's output, or a typed error (see module doc)."""
        url = self.url(call.agent_id)
        total = self._timeout(call.deadline)
        timeout = httpx.Timeout(total, connect=min(total, CONNECT_TIMEOUT_SECONDS))
        started = time.monotonic()
        outcome = "cancelled"  # left as is only when the attempt is cancelled (node timeout, cancel)
        error: str | None = None
        self._log(
            call,
            logging.INFO,
            f"external call to agent {call.agent_id} started: POST {url}",
            url=url,
            timeout_seconds=round(total, 3),
        )
        try:
            try:
                response = await self._client.post(url, json=call.body(), timeout=timeout)
            except httpx.TimeoutException as exc:
                outcome = "timeout"
                raise RetryableAgentError(
                    f"agent {call.agent_id} at {url} did not answer within {total:.1f}s"
                ) from exc
            except httpx.HTTPError as exc:
                outcome = "unreachable"
                raise RetryableAgentError(f"agent {call.agent_id} at {url} unreachable: {exc}") from exc
            if response.status_code >= 500:
                outcome = "server_error"
                raise RetryableAgentError(
                    f"agent {call.agent_id} answered {response.status_code}: {_excerpt(response)}"
                )
            if response.status_code >= 400:
                outcome = "client_error"
                raise AgentError(
                    f"agent {call.agent_id} refused the call ({response.status_code}): {_excerpt(response)}"
                )
            if response.status_code != 200 and not response.content:
                outcome = "ok"
                return None
            try:
                payload = response.json()
            except ValueError as exc:
                outcome = "bad_output"
                raise AgentOutputError(
                    f"agent {call.agent_id} answered non-JSON: {_excerpt(response)}"
                ) from exc
            outcome = "ok"
            if isinstance(payload, dict) and set(payload) >= {"output"}:
                return payload["output"]
            return payload
        except AgentError as exc:
            error = str(exc)
            raise
        finally:
            took = time.monotonic() - started
            if self._on_call is not None:
                self._on_call(call.agent_id, outcome, took)
            self._log(
                call,
                logging.INFO if outcome in ("ok", "cancelled") else logging.WARNING,
                f"external call to agent {call.agent_id} {outcome} in {took:.3f}s: POST {url}",
                url=url,
                outcome=outcome,
                duration_seconds=round(took, 6),
                error=error,
            )

    def _log(self, call: AgentCall, level: int, message: str, **fields: Any) -> None:
        if self._run_log is None:
            return
        self._run_log.attempt(level, message, call, **fields)

    def agent(self, agent_id: str) -> AgentFn:
        """An agent function (for `AgentRegistry.register`) that runs each attempt over HTTP."""

        async def run(ctx: AgentContext) -> Any:
            return await self.call(
                AgentCall(
                    agent_id=agent_id,
                    execution_id=ctx.execution_id,
                    node_id=ctx.node_id,
                    attempt=ctx.attempt,
                    params=ctx.params,
                    input_data=ctx.input_data,
                    upstream=ctx.upstream,
                    deadline=ctx.deadline,
                )
            )

        return run

    def register(self, registry: AgentRegistry, agent_ids: list[str]) -> None:
        """Register every id of `agent_ids` as an HTTP agent (replacing an in-process one of that id)."""
        for agent_id in agent_ids:
            registry.register(agent_id, self.agent(agent_id), kind="http", replace=True)

    async def close(self) -> None:
        await self._client.aclose()


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:MAX_ERROR_BODY] or "(empty body)"
