"""Exception tree of `orchestrator_core`.

Every module of the package raises these types; outside libraries' exceptions (SQLAlchemy, asyncpg,
aiosqlite, PyYAML, pydantic) are converted at the module that called them (`raise ... from exc`), so
callers — the service, the REST API, the CLI — handle one tree. The API maps them to HTTP statuses
(the `http_status` class attribute is the suggested mapping)::

    OrchestratorError                      base of everything below (500)
    ├── ConfigError                        settings or config file invalid (CLI exit 2)
    ├── DagValidationError                 invalid DAG; `.problems` = [(field path, message)] (400)
    ├── NotFound                           (404)
    │   ├── DagNotFound
    │   ├── ExecutionNotFound
    │   └── AgentNotFound
    ├── BadRequest                         a request the API cannot act on (400; `field` names the part)
    ├── InvalidState                       operation not allowed in the run's current status (409)
    ├── StaleFencingToken                  a write carried a fencing token that is no longer current (409)
    ├── StoreError                         the database failed or refused an operation (503; also a
    │   │                                  `gl_common.errors.StoreError`)
    │   ├── StoreUnavailable               the database cannot be reached or timed out (503)
    │   └── CheckpointError                a checkpoint save failed (retried by the executor)
    ├── LockBackendUnavailable             the lock backend (Redis) failed or timed out (503)
    ├── ServiceUnavailable                 the service is shutting down / not admitting runs (503)
    ├── AgentError                         an agent attempt failed, not retryable unless named (500)
    │   ├── AgentOutputError               the agent returned something that is not JSON
    │   └── RetryableAgentError            always retryable within `max_retries`
    │       └── AgentRestarted             the agent worker was restarted under a running attempt
    └── NodeTimeout                        a node attempt exceeded `timeout_policy.timeout_seconds`
                                           (also a builtin `TimeoutError`, so a retry policy naming
                                           `TimeoutError` retries it)

Agent code may raise any exception; the executor records `type(exc).__name__` and matches retry
policies against the names of the exception's class hierarchy (see `policies.is_retryable`).
"""

from __future__ import annotations

from typing import Any

from gl_common import errors as common


class OrchestratorError(Exception):
    """Base of every error raised by `orchestrator_core`.

    A subclass names its HTTP status and error code in its header (inherited when not given):
    `class InvalidState(OrchestratorError, http_status=409, code="invalid_state")`.
    """

    http_status = 500
    code = "internal_error"

    def __init_subclass__(
        cls, *, http_status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if http_status is not None:
            cls.http_status = http_status
        if code is not None:
            cls.code = code


class ConfigError(OrchestratorError, code="config_error"):
    """Settings or the YAML configuration file are invalid."""


class DagValidationError(OrchestratorError, http_status=400, code="invalid_dag"):
    """A DAG definition is invalid.

    `problems` lists `(field, message)` pairs; `field` is a dotted path into the DAG document, e.g.
    `nodes.scope2.retry_policy.strategy` or `nodes.a.depends_on`.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        if not problems:
            problems = [("", "invalid DAG")]
        self.problems = list(problems)
        text = "; ".join(f"{field}: {message}" if field else message for field, message in problems)
        super().__init__(text)

    @property
    def field(self) -> str:
        """The field path of the first problem."""
        return self.problems[0][0]


class NotFound(OrchestratorError, http_status=404, code="not_found"):
    """Something named by the caller does not exist."""


class DagNotFound(NotFound):
    """No DAG with that id (or version) is registered."""


class ExecutionNotFound(NotFound):
    """No execution with that id exists."""


class AgentNotFound(NotFound):
    """No agent with that id is registered."""


class BadRequest(OrchestratorError, http_status=400, code="bad_request"):
    """A request the service cannot act on (bad parameter, bad limit). `field` names the culprit."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class InvalidState(OrchestratorError, http_status=409, code="invalid_state"):
    """The operation is not allowed in the execution's current status (e.g. resume a running run)."""


class StaleFencingToken(OrchestratorError, http_status=409, code="stale_fencing_token"):
    """A write carried a fencing token older than the execution's current one: another owner took over."""


class StoreError(OrchestratorError, common.StoreError, http_status=503, code="store_unavailable"):
    """The database failed, was unreachable, or did not answer in time."""


class StoreUnavailable(StoreError, common.StoreUnavailable):
    """The database cannot be reached, did not answer in time, or the store is closed."""


class CheckpointError(StoreError, code="checkpoint_error"):
    """Saving a checkpoint failed. The executor retries with backoff and does not advance meanwhile."""


class LockBackendUnavailable(OrchestratorError, http_status=503, code="lock_backend_unavailable"):
    """The ownership-lock backend (Redis) failed, was unreachable, or did not answer in time."""


class ServiceUnavailable(OrchestratorError, http_status=503, code="service_unavailable"):
    """The service does not admit new work right now (graceful shutdown in progress)."""


class AgentError(OrchestratorError, code="agent_error"):
    """An agent attempt failed. Not retried unless the retry policy names the class (or a base)."""


class AgentOutputError(AgentError):
    """An agent returned a value that cannot be stored as JSON."""


class RetryableAgentError(AgentError):
    """An agent failure that the retry policy retries (up to `max_retries`) whatever its names."""


class AgentRestarted(RetryableAgentError):
    """The agent worker was restarted while this attempt was running; the attempt is retried."""


class NodeTimeout(OrchestratorError, TimeoutError, code="node_timeout"):
    """A node attempt exceeded its `timeout_policy.timeout_seconds`."""


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of `exc`'s message, at most `limit` characters: what an HTTP answer may show.

    Database drivers put the SQL statement and its parameters on the lines after the first one; they
    belong in the server's log, not in a response (least of all the unauthenticated `/readyz`).
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 1] + "…"
