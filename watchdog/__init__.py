"""gl-watchdog's alert responder.

Takes `OrchestratorExecutionTimeout` alerts (Alertmanager webhooks and scheduled sweeps), opens one
incident per stuck execution, runs the runbook's diagnostic steps 1-8, asks on-call for approval where
policy says so, applies a playbook and verifies the result. It talks to the orchestrator only through
its REST API (`watchdog_sdk.clients.orchestrator`).

Not to be confused with the unrelated PyPI package of the same name, which this project never installs.
"""

__version__ = "0.1.0"
GL_WATCHDOG_PACKAGE = True
