"""The watchdog service's own errors: policy, notifier, approvals, store and incidents.

They derive from the shared tree in `watchdog_sdk.errors` (drawn there: the clients', the playbooks'
and configuration errors), so a caller catching `WatchdogError` catches both. Raised by the policy
loader, the notifier, the approval service, the store and the incident service; answered by the API
(4xx/5xx JSON, `watchdog.http`) and the CLI (message and non-zero exit).

    WatchdogError (watchdog_sdk.errors)
    ├── ConfigError (watchdog_sdk.errors)
    │   └── PolicyError                 the remediation policy file is invalid
    ├── NotifierError                   the notifier webhook could not be reached or refused the message
    ├── ApprovalError                   an approval cannot be answered
    │   ├── ApprovalNotFound            no such approval prompt
    │   ├── InvalidToken                the link token is malformed, forged, or for another prompt
    │   ├── ApprovalClosed(state)       expired, already decided, or already used
    │   ├── ApproverRefused             the policy's approval rule refuses this decider (role, group,
    │   │                               or no identity where one is required)
    │   └── SameApprover                a two-person approval's second vote by the first approver
    ├── StoreError                      the watchdog's database refused a statement or the URL is bad
    │   │                               (also a gl_common.errors.StoreError, as `gl_common.db` raises it)
    │   └── StoreUnavailable            the database could not be reached (also a BackendUnavailable
    │                                   and a gl_common.errors.StoreUnavailable)
    ├── IncidentError                   an incident operation was refused
    │   ├── IncidentNotFound            no incident with that id
    │   └── InvalidTransition           the incident is not in a state that allows the change
    └── PlaybookRequestError            a playbook asked for by a person cannot be run or proposed
        ├── UnknownPlaybook             no playbook of that name in the registry
        └── RequestRefused(problem)     the incident is settled, the preconditions refuse the plan, or
                                        the plan could not be put to approval
"""

from __future__ import annotations

from gl_common import errors as common
from watchdog_sdk.errors import BackendUnavailable, ConfigError, WatchdogError


class PolicyError(ConfigError):
    """The remediation policy file is invalid (bad YAML, unknown playbook, bad rule)."""


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


class ApproverRefused(ApprovalError):
    """The policy's approval rule refuses this decider: role too low, not in a named group, or an
    approval link alone where the rule needs a signed-in identity."""


class SameApprover(ApprovalError):
    """A two-person approval already has this approver's vote: a second, distinct one is needed."""


class StoreError(WatchdogError, common.StoreError):
    """The watchdog's database refused a statement, or its URL/driver is not supported."""


class StoreUnavailable(StoreError, BackendUnavailable, common.StoreUnavailable):
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


class PlaybookRequestError(WatchdogError):
    """A playbook asked for by a person (`watchdog.playbook_requests`) cannot be run or proposed."""


class UnknownPlaybook(PlaybookRequestError):
    """No playbook of that name in the registry."""


class RequestRefused(PlaybookRequestError):
    """The request cannot go on: `problem` is `settled` (the incident is closed), `preconditions`
    (the playbook's preconditions refuse it; nothing proposed) or `not_proposed` (the incident moved
    while its prompt was made)."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem
