"""The watchdog's exception tree.

Raised by the client modules (`watchdog.clients.*`), which convert every outside library's exception
(httpx, requests/prometheus-api-client, kubernetes/urllib3, redis) at their boundary with
`raise ... from exc`; nothing from those libraries leaks past a client. Caught by the diagnostic steps
(which turn them into `unknown`/`error` findings), the playbooks, the remediation loop, the API (4xx/5xx
JSON) and the CLI (message and non-zero exit).

    WatchdogError
    ├── ConfigError                     bad settings file / value, a backend not configured
    │   └── PolicyError                 the remediation policy file is invalid
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
    ├── StepTimeout                     a diagnostic step ran over its timeout
    ├── PlaybookError                   unknown playbook or invalid playbook params
    ├── NotifierError                   the notifier webhook could not be reached or refused the message
    ├── ApprovalError                   an approval cannot be answered
    │   ├── ApprovalNotFound            no such approval prompt
    │   ├── InvalidToken                the link token is malformed, forged, or for another prompt
    │   └── ApprovalClosed(state)       expired, already decided, or already used
    ├── StoreError                      the watchdog's database refused a statement or the URL is bad
    │   └── StoreUnavailable            the database could not be reached (also a BackendUnavailable)
    └── IncidentError                   an incident operation was refused
        ├── IncidentNotFound            no incident with that id
        └── InvalidTransition           the incident is not in a state that allows the change
"""

from __future__ import annotations


class WatchdogError(Exception):
    """Base of every error the watchdog raises on purpose."""


class ConfigError(WatchdogError):
    """Settings are invalid, or an operation needs a backend that is not configured."""


class PolicyError(ConfigError):
    """The remediation policy file is invalid (bad YAML, unknown playbook, bad rule)."""


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


class StepTimeout(WatchdogError):
    """A diagnostic step ran over its timeout."""


class WaitTimeout(WatchdogError):
    """A bounded wait for an outside state (e.g. a ready replacement pod) ran out."""


class PlaybookError(WatchdogError):
    """An unknown playbook name, or params a playbook refuses."""


class NotifierError(WatchdogError):
    """The notifier webhook could not be reached, timed out, or answered with an error status."""


class ApprovalError(WatchdogError):
    """An approval prompt cannot be answered."""


class ApprovalNotFound(ApprovalError):
    """No approval prompt with that id."""


class InvalidToken(ApprovalError):
    """The approval link token is malformed, forged, or belongs to another prompt."""


class ApprovalClosed(ApprovalError):
    """The prompt is no longer pending: expired, already decided, or already used."""

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(detail)
        self.state = state


class StoreError(WatchdogError):
    """The watchdog's database refused a statement, or its URL/driver is not supported."""


class StoreUnavailable(StoreError, BackendUnavailable):
    """The watchdog's database could not be reached."""

    backend = "database"


class IncidentError(WatchdogError):
    """An incident operation was refused."""


class IncidentNotFound(IncidentError):
    """No incident with that id."""


class InvalidTransition(IncidentError):
    """The incident's current status does not allow the requested change."""

    def __init__(self, incident_id: int, current: str | None, target: str, detail: str | None = None) -> None:
        super().__init__(detail or f"incident {incident_id} is {current}; cannot move it to {target}")
        self.incident_id = incident_id
        self.current = current
        self.target = target
