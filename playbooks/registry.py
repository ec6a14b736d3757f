"""The built-in playbooks, as one registry: `default_registry()`.

Called by the watchdog's composition root (`watchdog.assembly`), the policy loader (which checks that
rules name known playbooks with valid params) and the CLI. `Registry` itself is part of the playbook
interface (`watchdog_sdk.registry`), so plugins can be added to the same registry.
"""

from __future__ import annotations

from playbooks.cancel import CancelPlaybook
from playbooks.increase_node_timeout import IncreaseNodeTimeoutPlaybook
from playbooks.release_lock import ReleaseLockPlaybook
from playbooks.restart_agent import RestartAgentPlaybook
from playbooks.resume import ResumePlaybook
from playbooks.throttle_concurrency import ThrottleConcurrencyPlaybook
from watchdog_sdk.registry import Registry


def default_registry() -> Registry:
    """A new registry holding the runbook's six resolution options."""
    return Registry(
        [
            CancelPlaybook(),
            ResumePlaybook(),
            RestartAgentPlaybook(),
            ThrottleConcurrencyPlaybook(),
            ReleaseLockPlaybook(),
            IncreaseNodeTimeoutPlaybook(),
        ]
    )
