"""`gl-watchdog`'s exit codes: one table from the kind of failure to the code, for every command.

Where it sits: `watchdog.cli.main` turns whatever a subcommand raises (its own, and those of
`watchdog.remediation_cli`) into one line on stderr and `exit_code(exc)`; the API client
(`watchdog.client`) turns a server's error answer into a `CliError` with `for_status(status)`.
So the same kind of failure gives the same code in every command (docs/architecture.md, "Exit codes"):

    0  done
    1  failed: the command ran and the thing did not succeed, or the state refused it (a 409: already
       decided, not open; a playbook's preconditions refused; verification failed)
    2  bad usage, configuration or input (argparse, a settings or policy error, a malformed id, bad
       playbook params, a 400/422 from a server)
    (a playbook run by hand that the watchdog is already acting on is 1: refused by the state)
    3  not found (an unknown execution, incident, approval prompt, token or context: a 404)
    4  our credential refused or not allowed (a 401 or 403: a wrong or revoked token, a role too low,
       a forged approval link)
    5  a service unreachable or failing (the watchdog's API, the orchestrator, the database; a
       refused connection, a timeout, a TLS failure, a 5xx, a 429)
"""

from __future__ import annotations

from typing import Final

from watchdog.errors import (
    ApprovalNotFound,
    IncidentNotFound,
    InvalidToken,
    StoreError,
)
from watchdog_sdk.errors import (
    BackendUnavailable,
    ConfigError,
    KubernetesError,
    OrchestratorError,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_FORBIDDEN: Final = 4
EXIT_UNAVAILABLE: Final = 5


class CliError(Exception):
    """A failure to report as one line on stderr with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The first matching kind wins; anything else the watchdog raises on purpose is EXIT_FAILED. An
# answer of a server (the orchestrator's, Kubernetes') goes by its status (`for_status`).
_KINDS: Final[tuple[tuple[tuple[type[Exception], ...], int], ...]] = (
    ((ConfigError,), EXIT_USAGE),
    ((IncidentNotFound, ApprovalNotFound), EXIT_NOT_FOUND),
    ((InvalidToken,), EXIT_FORBIDDEN),
    ((BackendUnavailable, StoreError), EXIT_UNAVAILABLE),
)


def exit_code(exc: Exception) -> int:
    """The exit code of a failure (see the module docstring)."""
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, OrchestratorError | KubernetesError):
        return for_status(exc.status)
    for kinds, code in _KINDS:
        if isinstance(exc, kinds):
            return code
    return EXIT_FAILED


def for_status(status: int) -> int:
    """The exit code of a server's error answer (HTTP status >= 400)."""
    if status in (400, 413, 415, 422):
        return EXIT_USAGE
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (401, 403):
        return EXIT_FORBIDDEN
    if status == 429 or status >= 500:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED
