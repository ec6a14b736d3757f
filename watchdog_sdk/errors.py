"""The exception tree shared by the watchdog side: clients, diagnostic steps, playbooks, the watchdog.

Raised by the client modules (`watchdog_sdk.clients.*`), which convert every outside library's exception
(httpx, requests/prometheus-api-client, kubernetes/urllib3, redis) at their boundary with
`raise ... from exc`; nothing from those libraries leaks past a client. Caught by the diagnostic steps
(which turn them into `unknown`/`error` findings), the playbooks (failed steps, `unknown` checks), and
the watchdog's loop, API and CLI. The watchdog's own service errors (store, incidents, approvals,
policy, API) derive from `WatchdogError` in `watchdog.errors`.

    WatchdogError
    ├── ConfigError                     bad settings file / value, a backend not configured
    ├── BackendUnavailable              could not reach a backend (connect error, timeout, 5xx gateway)
    │   ├── OrchestratorUnavailable
    │   ├── PrometheusUnavailable
    │   ├── KubernetesUnavailable
    │   └── RedisUnavailable
    ├── OrchestratorError(status, detail, code)   the orchestrator answered with an error status
    │   ├── BadRequest                  400 / 422
    │   ├── Unauthorized                401 / 403
    │   ├── NotFound                    404
    │   └── Conflict                    409
    ├── PrometheusQueryError            Prometheus answered, but the query failed (bad PromQL, ...)
    ├── KubernetesError(status, reason) the Kubernetes API answered with an error status
    │   └── KubernetesNotFound          404
    ├── LockError                       a Redis lock operation was refused (token mismatch, not held)
    ├── WaitTimeout                     a bounded wait for an outside state ran out
    └── PlaybookError                   unknown playbook or invalid playbook params
"""

from __future__ import annotations


class WatchdogError(Exception):
    """Base of every error the watchdog side raises on purpose."""


class ConfigError(WatchdogError):
    """Settings are invalid, or an operation needs a backend that is not configured."""


class BackendUnavailable(WatchdogError):
    """A backend could not be reached in time (connection refused, timeout, DNS, ...)."""

    backend: str = "backend"


class OrchestratorUnavailable(BackendUnavailable):
    """The orchestrator's REST API could not be reached."""

    backend = "orchestrator"


class PrometheusUnavailable(BackendUnavailable):
    """Prometheus could not be reached."""

    backend = "prometheus"


class KubernetesUnavailable(BackendUnavailable):
    """The Kubernetes API could not be reached."""

    backend = "kubernetes"


class RedisUnavailable(BackendUnavailable):
    """Redis could not be reached."""

    backend = "redis"


class OrchestratorError(WatchdogError):
    """The orchestrator answered with an error status.

    `status` is the HTTP status, `detail` the server's message (its JSON `detail`, or the body text),
    `code` the server's short error code (`error` field) when it sent one.
    """

    def __init__(self, status: int, detail: str, code: str | None = None) -> None:
        super().__init__(f"orchestrator answered {status}: {detail}")
        self.status = status
        self.detail = detail
        self.code = code


class BadRequest(OrchestratorError):
    """400/422: the orchestrator refused the request as invalid."""


class Unauthorized(OrchestratorError):
    """401/403: the watchdog's orchestrator token was refused."""


class NotFound(OrchestratorError):
    """404: no such execution, DAG, agent or checkpoint set."""


class Conflict(OrchestratorError):
    """409: the request conflicts with the current state (e.g. cancel of a finished run)."""


class PrometheusQueryError(WatchdogError):
    """Prometheus answered, but the query failed (bad PromQL, server-side error, bad payload)."""


class KubernetesError(WatchdogError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"kubernetes answered {status}: {reason}")
        self.status = status
        self.reason = reason


class KubernetesNotFound(KubernetesError):
    """404: no such pod or deployment."""


class LockError(WatchdogError):
    """A Redis lock operation was refused (the token does not match, the lock is not held)."""


class WaitTimeout(WatchdogError):
    """A bounded wait for an outside state (e.g. a ready replacement pod) ran out."""


class PlaybookError(WatchdogError):
    """An unknown playbook name, or params a playbook refuses."""
